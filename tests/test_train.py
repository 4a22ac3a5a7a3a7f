"""The generic loop: schedule, NaN guard with the last good state kept, resume equivalence."""

import contextlib
import functools
import math
import warnings

import pytest
import torch

from finer.models import build_model
from finer.tasks.image import ImageTask
from finer.errors import ConfigError
from finer.train import FitState, TrainConfig, autocast, exponential_decay, fit, matmul_precision


def test_schedule_reaches_a_tenth_at_the_last_step():
    decay = exponential_decay(1000, 0.1)
    assert decay(0) == 1.0 and decay(1000) == pytest.approx(0.1) and decay(500) == pytest.approx(0.1**0.5)


class PoisonedTask(ImageTask):
    """Targets turn NaN from a given step on."""

    poison_at = 7

    def batch(self, step):
        x, y = super().batch(step)
        return (x, y * math.nan) if step >= self.poison_at else (x, y)


def _fit_saving(task_class, data):
    """A small FINER fitted 20 steps (flushes every 5) on a ``task_class`` task; the net, the state and every
    ``(status, step, snapshot)`` it checkpointed."""
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = task_class(data, (-1.0, 1.0), torch.device("cpu"))
    saved = []
    state = fit(net, task, TrainConfig(steps=20, log_every=5, eval_every=0), progress=False,
                on_checkpoint=lambda st, snap: saved.append((st.status, st.step, snap)))
    return net, task, state, saved


def test_nan_stops_the_run_and_restores_the_last_good_state(astronaut_small):
    net, _, state, saved = _fit_saving(PoisonedTask, astronaut_small)
    assert state.status == "diverged"
    assert "step 8" in state.message and "last good step 5" in state.message
    assert state.step == 5 and [h["step"] for h in state.history] == [1, 2, 3, 4, 5]
    status, step, snap = saved[-1]
    assert status == "diverged" and step == 5
    assert all(torch.isfinite(v).all() for v in snap["model"].values())
    for key, value in net.state_dict().items():  # the model itself was restored too
        assert torch.equal(value, snap["model"][key])


class NanGradientTask(ImageTask):
    """A finite loss whose gradient is NaN at one step (an overflow in backward): the update after it
    leaves NaN weights, and only the next loss shows it."""

    nan_gradient_at = 10  # the 10th step: the last of a flush of log_every 5

    def loss(self, pred, target):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.nan_gradient_at:
            pred.register_hook(lambda grad: grad * math.nan)
        return super().loss(pred, target)


def test_a_network_broken_by_the_step_before_a_flush_is_not_kept_as_good(astronaut_small):
    net, task, state, saved = _fit_saving(NanGradientTask, astronaut_small)
    assert state.status == "diverged" and "step 11" in state.message and "last good step 5" in state.message
    assert state.step == 5 and [h["step"] for h in state.history] == [1, 2, 3, 4, 5]
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())  # step 10's weights were NaN
    assert saved[-1][:2] == ("diverged", 5) and all(torch.isfinite(v).all() for v in saved[-1][2]["model"].values())
    assert math.isfinite(task.evaluate(net)["psnr"])


def test_a_nan_gradient_at_the_last_step_is_caught_without_a_later_loss(astronaut_small):
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = NanGradientTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    task.nan_gradient_at = 20
    state = fit(net, task, TrainConfig(steps=20, log_every=5, eval_every=0), progress=False)
    assert state.status == "diverged" and state.step == 15
    assert "the update of step 20 left non-finite weights; stopped, last good step 15" in state.message
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())


def test_no_checkpoint_holds_the_weights_of_a_bad_update_before_its_loss_is_seen(astronaut_small):
    # the update of step 10 is NaN and a checkpoint is due at step 10, before step 11's loss shows it
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = NanGradientTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    saved = []
    state = fit(net, task, TrainConfig(steps=20, log_every=5, eval_every=0, checkpoint_every=10), progress=False,
                on_checkpoint=lambda st, snap: saved.append((st.status, st.step, snap)))
    assert state.status == "diverged" and state.step == 5
    assert "the update of step 10 left non-finite weights; stopped, last good step 5" in state.message
    assert [(status, step) for status, step, _ in saved] == [("diverged", 5)]
    assert all(torch.isfinite(v).all() for v in saved[0][2]["model"].values())


def test_an_interrupted_fit_does_not_save_the_weights_of_a_bad_last_update(astronaut_small):
    import os
    import signal

    class InterruptedAtTheBadStep(NanGradientTask):
        def loss(self, pred, target):
            out = super().loss(pred, target)
            if self.calls == self.nan_gradient_at:  # Ctrl-C during the step whose update breaks the weights
                os.kill(os.getpid(), signal.SIGINT)
            return out

    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = InterruptedAtTheBadStep(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    saved = []
    state = fit(net, task, TrainConfig(steps=20, log_every=5, eval_every=0, checkpoint_every=0), progress=False,
                on_checkpoint=lambda st, snap: saved.append((st.status, st.step, snap)))
    # still interrupted (a loop of fits stops too), kept at the last good step
    assert state.status == "interrupted" and state.step == 5 and [h["step"] for h in state.history] == [1, 2, 3, 4, 5]
    assert "interrupted at step 10 of 20; the update of that step left non-finite weights" in state.message
    assert [(status, step) for status, step, _ in saved] == [("interrupted", 5)]
    assert all(torch.isfinite(v).all() for v in saved[0][2]["model"].values())
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())


@pytest.mark.parametrize("pause", [0.0, 0.4], ids=["one-stop-sent-twice", "a-second-stop"])
def test_a_signal_repeated_at_once_is_one_stop_and_a_later_one_aborts(astronaut_small, pause):
    """`timeout` sends its signal to the command and then to its process group: two at once are one request
    to stop after the step; a second signal later (the user insisting) aborts at once."""
    import os
    import signal
    import time

    class TwoSignals(ImageTask):
        calls = 0

        def loss(self, pred, target):
            self.calls += 1
            if self.calls == 3:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(pause)
                os.kill(os.getpid(), signal.SIGINT)
            return super().loss(pred, target)

    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = TwoSignals(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    run = functools.partial(fit, net, task, TrainConfig(steps=10, eval_every=0), progress=False)
    if pause:
        with pytest.raises(KeyboardInterrupt):
            run()
    else:
        state = run()
        assert state.status == "interrupted" and state.step == 3


def test_a_fit_continued_from_a_stopped_state_says_how_it_ended_itself(astronaut_small):
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    state = FitState(step=4, status="interrupted", message="interrupted at step 4 of 10")
    state = fit(net, task, TrainConfig(steps=10, eval_every=0), state=state, progress=False)
    assert (state.status, state.message, state.step) == ("complete", "", 10)


def test_a_float64_model_is_trained_on_a_float64_loss():
    """Only half-precision predictions are raised to float32 for the loss: a float64 fit near convergence must
    not see its residual rounded to float32."""
    from finer.train import TrainStep

    net = build_model("siren", 2, 1, width=8, hidden_layers=1, seed=0).double()
    with torch.no_grad():  # outputs about 1, where float32's spacing (1e-7) is far above the residual
        net.layers[-1].linear.bias.fill_(1.0)

    class Exact:
        def batch(self, step):
            x = torch.rand(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                return x, net(x) + 1e-9

        def loss(self, pred, target):
            return torch.mean((pred - target) ** 2)

    loss = TrainStep(net, Exact(), TrainConfig(steps=1, eval_every=0))(0, 1e-12)
    assert loss.dtype == torch.float64 and float(loss) == pytest.approx(1e-18, rel=1e-6, abs=0)


class BlowUpTask(ImageTask):
    """Targets 100 times larger from step 7 on: a finite loss about 10^4 times the first one."""

    def batch(self, step):
        x, y = super().batch(step)
        return (x, y * 100.0) if step >= 7 else (x, y)


def test_a_loss_growing_past_the_divergence_factor_stops_the_run_like_nan(astronaut_small):
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = BlowUpTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    state = fit(net, task, TrainConfig(steps=20, log_every=5, eval_every=0), progress=False)
    assert state.status == "diverged" and "step 8" in state.message and "last good step 5" in state.message
    calm = fit(build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0), task,
               TrainConfig(steps=20, log_every=5, eval_every=0, divergence_factor=1e6), progress=False)
    assert calm.status == "complete"  # the same growth under a looser factor is allowed


def test_resumed_fit_equals_an_uninterrupted_one(astronaut_small):
    cfg = TrainConfig(steps=12, log_every=3, eval_every=0)

    def fresh():
        net = build_model("siren", 2, 3, width=16, hidden_layers=1, seed=0)
        return net, ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"), batch_size=100, seed=0)

    net, task = fresh()
    straight = fit(net, task, cfg, progress=False)

    net2, task2 = fresh()
    snaps = []
    half = fit(net2, task2, TrainConfig(steps=12, log_every=3, eval_every=0, checkpoint_every=6), progress=False,
               on_checkpoint=lambda st, snap: snaps.append((st.step, snap, task2.state_dict())))
    step, snap, rng = snaps[0]
    assert step == 6 and half.status == "complete"
    net3, task3 = fresh()
    net3.load_state_dict(snap["model"])
    task3.load_state_dict(rng)
    resumed = fit(net3, task3, cfg, state=FitState(step=6, history=[h for h in straight.history if h["step"] <= 6]),
                  optimizer_state=snap["optimizer"], progress=False)
    a = [h["loss"] for h in straight.history]
    b = [h["loss"] for h in resumed.history]
    assert a == pytest.approx(b, rel=1e-5)


def test_evaluation_is_recorded(astronaut_small):
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    state = fit(net, task, TrainConfig(steps=10, log_every=4, eval_every=5), progress=False)
    evals = [h["step"] for h in state.history if "eval_psnr" in h]
    assert evals == [5, 10]
    assert state.history[-1]["eval_psnr"] > 5


def test_the_progress_bar_does_not_flood_a_log_file(astronaut_small, capsys, monkeypatch):
    import finer.train

    def run():
        net = build_model("finer", 2, 3, width=8, hidden_layers=1, seed=0)
        task = ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
        fit(net, task, TrainConfig(steps=300, log_every=1, eval_every=50), progress=True, desc="bar")
        return [line for line in capsys.readouterr().err.split("\r") if "bar" in line]

    made = []
    real_tqdm = finer.train.tqdm

    class Recording(real_tqdm):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(finer.train, "tqdm", Recording)
    assert 1 <= len(run()) <= 3  # stderr is not a terminal here: one line per 30 s, not per update
    # nor one per 10 s: tqdm's monitor thread redraws a bar left alone for maxinterval (10 s by default)
    assert made[0]["mininterval"] == 30.0 and made[0]["maxinterval"] >= 30.0
    monkeypatch.setattr(finer.train, "tqdm", real_tqdm)
    monkeypatch.setattr(finer.train, "_bar_interval", lambda: 0.0)
    lines = run()
    assert len(lines) > 10
    evaluated = [line for line in lines if "eval_psnr=" in line]  # from step 50 on: both PSNRs, every time
    assert evaluated and all("train_psnr=" in line for line in evaluated)
    assert lines.index(evaluated[0]) + len(evaluated) == len(lines)


def _losses(model_name, data, precision, fused="off", steps=6):
    from finer.nn.fused import apply_fused

    net = build_model(model_name, 2, 3, width=16, hidden_layers=1, seed=0)
    apply_fused(net, fused, steps)
    task = ImageTask(data, tuple(net.config.target_range), torch.device("cpu"))
    state = fit(net, task, TrainConfig(steps=steps, log_every=2, eval_every=0, precision=precision), progress=False)
    assert all(p.dtype in (torch.float32, torch.complex64) for p in net.parameters())  # master weights stay fp32
    return state, [h["loss"] for h in state.history]


@pytest.mark.parametrize("model_name,fused", [("finer", "off"), ("finer", "eager"), ("pemlp", "off")])
def test_bf16_mixed_precision_trains_close_to_float32_but_not_equal(astronaut_small, model_name, fused):
    state, bf16 = _losses(model_name, astronaut_small, "bf16", fused)
    _, fp32 = _losses(model_name, astronaut_small, "fp32", fused)
    assert state.status == "complete"
    assert bf16 != fp32  # autocast really changed the arithmetic
    assert bf16 == pytest.approx(fp32, rel=0.05)  # ... by rounding, not by breaking the fit


def test_bf16_leaves_wire_as_it_is(astronaut_small):
    """WIRE's products are complex (autocast leaves them complex64) or fed with coordinates (float32)."""
    assert _losses("wire", astronaut_small, "bf16", "eager")[1] == _losses("wire", astronaut_small, "fp32", "eager")[1]


def test_tf32_is_float32_on_a_cpu(astronaut_small):
    assert _losses("finer", astronaut_small, "tf32")[1] == _losses("finer", astronaut_small, "fp32")[1]


def test_tf32_switches_the_matmul_precision_inside_a_cuda_step_only():
    before = torch.get_float32_matmul_precision()
    with matmul_precision("tf32", torch.device("cuda")):  # the switch itself needs no GPU
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(KeyError):
        with matmul_precision("tf32", torch.device("cuda")):
            raise KeyError("a failing step")
    assert torch.get_float32_matmul_precision() == before
    with matmul_precision("tf32", torch.device("cpu")), matmul_precision("bf16", torch.device("cuda")):
        assert torch.get_float32_matmul_precision() == before


def test_unknown_precision_is_a_clear_error(astronaut_small):
    net = build_model("finer", 2, 3, width=8, hidden_layers=1, seed=0)
    task = ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    with pytest.raises(ConfigError, match="fp32, tf32, bf16"):
        fit(net, task, TrainConfig(steps=2, precision="fp8"), progress=False)


def test_bf16_means_the_same_arithmetic_in_every_fused_mode(astronaut_small):
    """Plain, fused and compiled layers all run bf16 products with float32 bias, activation and
    coordinate layer, so mixed precision gives one result up to rounding whatever --fused says
    (before, plain layers took sin of a bfloat16 pre-activation: several dB lower)."""
    from finer.nn.fused import apply_fused

    psnr = {}
    for fused in ("off", "eager", "compile"):
        net = build_model("finer", 2, 3, width=32, hidden_layers=2, seed=0)
        apply_fused(net, fused, 150)
        task = ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
        state = fit(net, task, TrainConfig(steps=150, eval_every=0, precision="bf16"), progress=False)
        psnr[fused] = state.history[-1]["train_psnr"]
    assert max(psnr.values()) - min(psnr.values()) < 0.3, psnr


def test_layers_with_few_inputs_stay_float32_under_autocast():
    from finer.nn.layers import affine

    x, w, b = torch.rand(10, 2), torch.rand(8, 2), torch.rand(8)
    with autocast("bf16", torch.device("cpu")):
        coords = affine(x, w, b)
        hidden = affine(torch.rand(10, 8), torch.rand(8, 8), b)
    assert coords.dtype == hidden.dtype == torch.float32  # the bias and what follows are float32
    torch.testing.assert_close(coords, torch.nn.functional.linear(x, w, b))  # the coordinates' product too


def _fit_losses(data, cuda_graph, steps=10, **task_options):
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = ImageTask(data, (-1.0, 1.0), torch.device("cpu"), **task_options)
    cfg = TrainConfig(steps=steps, log_every=3, eval_every=4, cuda_graph=cuda_graph)
    state = fit(net, task, cfg, progress=False)
    return [h["loss"] for h in state.history], state


def test_a_recorded_step_trains_as_the_eager_step(astronaut_small, cpu_recorder):
    eager, _ = _fit_losses(astronaut_small, cuda_graph=False)
    recorded, state = _fit_losses(astronaut_small, cuda_graph=True)
    assert cpu_recorder.records == 1 and state.status == "complete"
    # the learning rate falls 21 % per step here, so a replay that kept the first one would differ
    assert recorded == pytest.approx(eager, rel=1e-6)
    assert [h["step"] for h in state.history if "eval_psnr" in h] == [4, 8, 10]


def test_a_step_kept_across_fits_is_recorded_once(astronaut_small, cpu_recorder):
    from finer.train import GRAPH_WARMUP, TrainStep

    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    cfg = TrainConfig(steps=GRAPH_WARMUP + 2, eval_every=0, cuda_graph=True)
    trainer = TrainStep(net, task, cfg)
    for _ in range(3):
        fit(net, task, cfg, progress=False, trainer=trainer)
    assert cpu_recorder.records == 1 and trainer.warmups == GRAPH_WARMUP


def test_a_cuda_graph_needs_a_cuda_device(astronaut_small):
    with pytest.raises(ConfigError, match="CUDA graph needs a CUDA device, and the model is on the cpu"):
        _fit_losses(astronaut_small, cuda_graph=True)


def test_a_cuda_graph_needs_a_full_batch(astronaut_small, cpu_recorder):
    with pytest.raises(ConfigError, match="new batch every step"):
        _fit_losses(astronaut_small, cuda_graph=True, batch_size=100)


class NewTensorsTask(ImageTask):
    """Claims to be replayable but hands out fresh tensors."""

    replayable = True

    def batch(self, step):
        return self.coords.clone(), self.targets.clone()


def test_a_task_that_breaks_its_replayable_promise_is_caught(astronaut_small, cpu_recorder):
    net = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = NewTensorsTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="returned a new batch"):
        fit(net, task, TrainConfig(steps=8, eval_every=0, cuda_graph=True), progress=False)


def test_a_recorded_fit_resumes_from_an_eager_checkpoint(astronaut_small, cpu_recorder):
    """An optimiser state saved by eager steps (learning rate a number, not capturable) is made fit
    for recording, and the resumed recorded fit continues the eager one exactly."""
    from finer.train import TrainStep

    def fresh():
        return build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0), \
            ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))

    net, task = fresh()
    straight = fit(net, task, TrainConfig(steps=12, log_every=3, eval_every=0), progress=False)
    net2, task2 = fresh()
    snaps = []
    fit(net2, task2, TrainConfig(steps=12, log_every=3, eval_every=0, checkpoint_every=6), progress=False,
        on_checkpoint=lambda st, snap: snaps.append((st.step, snap)))
    step, snap = snaps[0]
    net3, task3 = fresh()
    net3.load_state_dict(snap["model"])
    cfg = TrainConfig(steps=12, log_every=3, eval_every=0, cuda_graph=True)
    trainer = TrainStep(net3, task3, cfg, snap["optimizer"])
    group = trainer.optimizer.param_groups[0]
    assert group["capturable"] and group["lr"] is trainer.lr
    resumed = fit(net3, task3, cfg, state=FitState(step=step, history=straight.history[:step]), progress=False,
                  trainer=trainer)
    assert cpu_recorder.records == 1
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-6)


def test_a_checkpoint_carries_the_training_time_so_far(astronaut_small):
    """A run resumed from a mid-run checkpoint adds its time to the time saved there, so the saved
    time must be the time trained up to that step (it was 0 until the end of the fit call)."""
    model = build_model("finer", 2, 3, width=16, hidden_layers=1, seed=0)
    task = ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    saved = []
    state = fit(model, task, TrainConfig(steps=30, checkpoint_every=10, eval_every=0), progress=False,
                on_checkpoint=lambda st, snap: saved.append((st.step, st.train_seconds)))
    steps, seconds = zip(*saved)
    assert steps == (10, 20, 30)
    assert 0 < seconds[0] < seconds[1] < seconds[2] == state.train_seconds


@pytest.mark.parametrize("steps, options",
                         [(6, {}), (60, {"lr_final_factor": 1.0, "grad_clip": 0.05, "amsgrad": True})])
def test_fit_is_adam_on_the_decayed_learning_rate(astronaut_small, steps, options):
    """fit() against a plain loop written out here: torch.optim.Adam, lr * f^(t/T) at step t (f = 0.1 by
    default; the SDF protocol's constant rate, gradient clipping and AMSGrad as the second case)."""
    lr = 1e-3
    trained = build_model("siren", 2, 3, width=16, hidden_layers=1, seed=0)
    task = ImageTask(astronaut_small, (-1.0, 1.0), torch.device("cpu"))
    state = fit(trained, task, TrainConfig(steps=steps, lr=lr, log_every=1, eval_every=0, **options), progress=False)
    factor = options.get("lr_final_factor", 0.1)
    expected_lrs = [lr * factor ** (t / steps) for t in range(steps)]
    assert [h["lr"] for h in state.history] == pytest.approx(expected_lrs, rel=1e-12)

    by_hand = build_model("siren", 2, 3, width=16, hidden_layers=1, seed=0)
    opt = torch.optim.Adam(by_hand.parameters(), lr=lr, amsgrad=options.get("amsgrad", False))
    x, y = task.batch(0)
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = expected_lrs[t]
        opt.zero_grad()
        task.loss(by_hand(x), y).backward()
        if "grad_clip" in options:
            torch.nn.utils.clip_grad_norm_(by_hand.parameters(), options["grad_clip"])
        opt.step()
    for a, b in zip(trained.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class HandlersSeen(ImageTask):
    """Records the SIGINT and SIGTERM handlers in force while a step runs."""

    seen: list = []

    def batch(self, step):
        import signal

        self.seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
        return super().batch(step)


def test_sigterm_stops_a_fit_only_where_the_program_asked_for_it(astronaut_small):
    """A library user's SIGTERM handler (or a worker pool's) stays in force during fit(); within
    sigterm_interrupts (every CLI command) it stops the fit after its step, as Ctrl-C does; an ignored
    SIGINT stays ignored."""
    import os
    import signal

    from finer.launch import sigterm_interrupts

    def theirs(signum, frame):
        raise AssertionError("not called")

    def run():
        HandlersSeen.seen = []
        net = build_model("siren", 2, 3, width=8, hidden_layers=1, seed=0)
        task = HandlersSeen(astronaut_small[:8, :8], (-1.0, 1.0), torch.device("cpu"))
        return fit(net, task, TrainConfig(steps=2, eval_every=0), progress=False)

    before = signal.signal(signal.SIGTERM, theirs)
    try:
        run()
        (sigint, sigterm), = set(HandlersSeen.seen)
        assert sigterm is theirs and sigint is not signal.default_int_handler  # Ctrl-C: the fit's own
        with sigterm_interrupts():
            run()
            (_, sigterm), = set(HandlersSeen.seen)
            assert sigterm is not theirs and sigterm is not signal.getsignal(signal.SIGTERM)  # the fit's own

            class Stopped(HandlersSeen):
                def batch(self, step):
                    if step == 1:
                        os.kill(os.getpid(), signal.SIGTERM)
                    return super().batch(step)

            net = build_model("siren", 2, 3, width=8, hidden_layers=1, seed=0)
            state = fit(net, Stopped(astronaut_small[:8, :8], (-1.0, 1.0), torch.device("cpu")),
                        TrainConfig(steps=50, eval_every=0), progress=False)
            assert state.status == "interrupted" and state.step == 2
        assert signal.getsignal(signal.SIGTERM) is theirs  # put back
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            run()
            assert {s for s, _ in HandlersSeen.seen} == {signal.SIG_IGN}
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def ctrl_c_at_step(at: int):
    """Ctrl-C (SIGINT to this process) while the image task draws the batch of step ``at`` (0-based)."""
    import os
    import signal

    real_batch = ImageTask.batch

    def batch(self, step):
        if step == at:
            os.kill(os.getpid(), signal.SIGINT)
        return real_batch(self, step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageTask, "batch", batch)
        yield


def test_a_fit_stopped_by_ctrl_c_raises_to_its_caller(tmp_path, png_path):
    """From Python, Ctrl-C stops a loop of fits, not only the one running: fit_image saves, records
    'interrupted', then raises InterruptedRun (the CLI prints it and exits 130)."""
    import json

    import finer

    cfg = finer.ImageRunConfig(image=str(png_path), steps=50, eval_every=0, model_options={"width": 8})
    with ctrl_c_at_step(3), pytest.raises(finer.InterruptedRun,
                                          match="interrupted at step 4 of 50; continue with `finer resume"):
        finer.fit_image(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["status"], metrics["steps"]) == ("interrupted", 4) and (tmp_path / "run" / "checkpoint.pt").exists()


def test_fits_without_an_out_folder_each_get_their_own(tmp_path, png_path, monkeypatch):
    import finer

    import time

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20260101-000000")  # all in the same second
    outs = [finer.fit_image(finer.ImageRunConfig(image=png_path, steps=1, seed=seed, model_options={"width": 8}),
                            progress=False)["out"] for seed in range(3)]  # (a Path is a valid image too)
    stem = f"runs/image-{png_path.stem}-finer-20260101-000000"
    assert outs == [stem, stem + "-2", stem + "-3"]
    (tmp_path / f"{stem}-4").mkdir()  # claimed by another process a moment ago, nothing in it yet
    assert finer.fit_image(finer.ImageRunConfig(image=png_path, steps=1, model_options={"width": 8}),
                           progress=False)["out"] == stem + "-5"
    with pytest.raises(finer.FinerError, match="image file not found"):  # the folder it claimed goes again
        finer.fit_image(finer.ImageRunConfig(image=str(png_path.with_name("none.png"))), progress=False)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir())[-1].endswith("-5")
    from finer.runs import default_out_dir

    long = default_out_dir(finer.ImageRunConfig(image="/x/" + "猫" * 80 + ".png"))  # 240 bytes of name
    assert long.is_dir() and len(long.name.encode()) < 255


@pytest.mark.parametrize("options, message", [
    ({"steps": 5.5}, "steps must be an integer >= 0"), ({"steps": -1}, "steps must be an integer >= 0"),
    ({"eval_every": -1}, "eval_every must be an integer >= 0"), ({"lr": -1.0}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number"), ({"log_every": 0}, "log_every must be an integer >= 1"),
    ({"grad_clip": 0.0}, "grad_clip must be a positive number")])
def test_train_config_refuses_what_would_train_wrongly(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_library_fits_print_nothing_and_warn_what_they_did_otherwise(tmp_path, png_path, capsys):
    import trimesh

    import finer
    from finer.sdf_run import SDFRunConfig, fit_sdf

    cfg = finer.ImageRunConfig(image=str(png_path), steps=2, precision="tf32", device="cpu",
                               model_options={"width": 8})
    with pytest.warns(finer.FinerWarning, match="tf32 changes only CUDA matrix products"):
        finer.fit_image(cfg, tmp_path / "image", progress=False)
    trimesh.creation.icosphere(subdivisions=1).export(tmp_path / "ball.off")
    with warnings.catch_warnings(record=True) as seen:  # (2 steps: maybe no surface yet, which it warns of)
        warnings.simplefilter("always")
        fit_sdf(SDFRunConfig(mesh=str(tmp_path / "ball.off"), steps=2, batch_size=100, pool_size=1000,
                             surface_samples=1000, resolution=12, iou_resolution=12, chamfer_samples=200,
                             model_options={"width": 8}), tmp_path / "sdf", progress=False)
    assert all(issubclass(w.category, finer.FinerWarning) for w in seen)
    assert capsys.readouterr().out == ""  # a caller's stdout is its own (the command prints these lines)


def test_a_fit_stopped_during_its_last_step_stops_the_callers_loop_and_resume_completes_it(tmp_path, png_path):
    """Ctrl-C during the last step still stops the caller's loop of fits (InterruptedRun); the run, which
    has all its steps, is completed by `finer resume` without training (it was refused as finished)."""
    import json

    import finer

    cfg = finer.ImageRunConfig(image=str(png_path), steps=5, eval_every=0, model_options={"width": 8})
    with ctrl_c_at_step(4), pytest.raises(finer.InterruptedRun, match="interrupted at step 5 of 5"):
        finer.fit_image(cfg, tmp_path / "run", progress=False)
    weights = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    metrics = finer.resume_image(tmp_path / "run", progress=False)
    assert (metrics["status"], metrics["steps"]) == ("complete", 5)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "complete"
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # no step was trained
    with pytest.raises(finer.FinerError, match="already reached step 5 of 5"):
        finer.resume_image(tmp_path / "run", progress=False)  # now finished: refused as before


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError], ids=["ctrl-c", "error"])
def test_a_fit_stopped_while_scoring_says_so_and_resume_scores_it(tmp_path, png_path, monkeypatch, stop):
    """After the last step the checkpoint says complete; a stop while the final scores and pictures are written
    left metrics.json at step 0, and resume refused the run as finished."""
    import json

    import finer
    import finer.runs

    cfg = finer.ImageRunConfig(image=str(png_path), steps=5, eval_every=0, model_options={"width": 8})

    def stopped(*args, **kwargs):
        raise stop("stopped")

    original = finer.runs.psnr_curve
    monkeypatch.setattr(finer.runs, "psnr_curve", stopped)
    with pytest.raises(stop):
        finer.fit_image(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["status"], metrics["steps"]) == ("interrupted" if stop is KeyboardInterrupt else "failed", 5)
    assert "(while scoring after step 5)" in metrics["message"] and "stage" not in metrics
    weights = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    monkeypatch.setattr(finer.runs, "psnr_curve", original)
    metrics = finer.resume_image(tmp_path / "run", progress=False)
    assert (metrics["status"], metrics["steps"]) == ("complete", 5) and metrics["psnr"] > 0
    assert (tmp_path / "run" / "psnr_curve.png").is_file()
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # no step was trained


def test_a_fit_killed_while_scoring_is_scored_by_resume(tmp_path, png_path):
    """Killed outright while scoring (SIGKILL, out of memory), metrics.json still says running at its last step."""
    import json

    import finer

    cfg = finer.ImageRunConfig(image=str(png_path), steps=3, eval_every=0, model_options={"width": 8})
    finer.fit_image(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({**metrics, "status": "running", "stage": "scoring",
                                                               "psnr": None}))
    resumed = finer.resume_image(tmp_path / "run", progress=False)
    assert (resumed["status"], resumed["steps"], resumed["psnr"]) == ("complete", 3, metrics["psnr"])


def test_a_task_needs_only_batch_and_loss():
    """The smallest task a user writes: a 1-D function, no step_metrics, no evaluate (eval_every 0)."""
    class Line:
        def __init__(self):
            self.x = torch.linspace(-1, 1, 64)[:, None]
            self.y = torch.sin(3 * self.x)

        def batch(self, step):
            return self.x, self.y

        def loss(self, pred, target):
            return ((pred - target) ** 2).mean()

    net = build_model("finer", 1, 1, width=16, hidden_layers=1, seed=0)
    cfg = TrainConfig(steps=200, lr=net.config.lr, eval_every=0)
    state = fit(net, Line(), cfg, progress=False)
    assert state.status == "complete" and set(state.history[0]) == {"step", "loss", "lr"}
    assert state.history[-1]["loss"] < state.history[0]["loss"] / 10  # it learns
    with pytest.raises(ConfigError, match="eval_every 5: this Line has no evaluate"):
        fit(net, Line(), TrainConfig(steps=1, eval_every=5), progress=False)
