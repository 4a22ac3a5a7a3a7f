"""The generic fit loop: Adam, exponential learning-rate decay, NaN guard, progress, history.

It knows a task only through a small interface (:class:`Task`): ``batch(step)`` and ``loss``, and
where the task has them ``step_metrics(loss)`` (figures shown and recorded with the loss) and
``evaluate(model)`` (every ``eval_every`` steps). Everything written to disk is done by the caller
through the ``on_checkpoint`` callback, so the loop stays task- and file-agnostic.

One step (:class:`TrainStep`) runs eagerly, or, on a CUDA device with ``cuda_graph``, is recorded
once as a CUDA graph and replayed: one launch per step instead of one per kernel.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from finer.errors import ConfigError
from finer.launch import interrupt


class Task(Protocol):
    """What the loop needs of a task: ``batch`` and ``loss``. Optional: ``step_metrics(loss: float) ->
    dict[str, float]``, figures beside the loss at each step (none without it), and ``evaluate(model) ->
    dict[str, float]``, needed when ``TrainConfig.eval_every`` is above 0. A task may also set
    ``replayable = True``: ``batch`` returns the same tensors at every step and ``loss`` keeps
    nothing between steps, so a step can be recorded once and replayed (``TrainConfig.cuda_graph``);
    without it a task is not replayable."""

    def batch(self, step: int) -> tuple[Tensor, Tensor]: ...
    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...


@dataclass
class TrainConfig:
    """How long and how to optimise."""

    steps: int = 1000
    """Total number of optimisation steps."""
    lr: float = 5e-4
    """Learning rate at step 0."""
    lr_final_factor: float = 0.1
    """The learning rate decays exponentially to ``lr * lr_final_factor`` at the last step."""
    log_every: int = 10
    """Steps between host synchronisations (progress bar, NaN check, history flush)."""
    eval_every: int = 100
    """Steps between full evaluations (e.g. clipped full-image PSNR); 0 disables them."""
    checkpoint_every: int = 500
    """Steps between checkpoints; 0 writes one only at the end."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value (None: no clipping)."""
    amsgrad: bool = False
    """Use Adam's AMSGrad variant (the official SDF protocol does)."""
    divergence_factor: float = 1e3
    """A loss above this multiple of the first loss counts as divergence."""
    precision: str = "fp32"
    """Arithmetic of the training steps (:data:`PRECISIONS`); evaluation is always float32."""
    cuda_graph: bool = False
    """Record the step once as a CUDA graph after :data:`GRAPH_WARMUP` eager steps and replay it
    (CUDA devices and replayable, i.e. full-batch, tasks only; see :class:`TrainStep`)."""

    def __post_init__(self):
        from finer.models import plain_numbers

        plain_numbers(self)

        def whole(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"TrainConfig.{name} must be an integer >= {low}, got {value!r}")

        whole("steps", 0)  # (0: nothing to do; a benchmark warms up with 0 steps)
        whole("log_every", 1)
        whole("eval_every", 0)
        whole("checkpoint_every", 0)
        for name in ("lr", "lr_final_factor", "divergence_factor") + (("grad_clip",) if self.grad_clip is not None
                                                                      else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"TrainConfig.{name} must be a positive number, got {value!r}")


PRECISIONS = {
    "fp32": "float32 throughout (the paper's setting)",
    "tf32": "matrix products in TensorFloat-32 on CUDA GPUs (10-bit mantissa inputs, float32 sums); "
            "the same as fp32 on a CPU",
    "bf16": "mixed precision: the forward pass under torch.autocast in bfloat16, so the real matrix products "
            "of the hidden and output layers (forward and backward) are bfloat16, while the layers fed with "
            "coordinates, the bias additions, the activations, the weights, the optimiser and the loss stay "
            "float32 and complex (WIRE) products complex64 (finer.nn.layers.affine); fused layers write an "
            "activation that feeds a bfloat16 product in bfloat16, the value that product rounds it to "
            "(finer.nn.layers.handoff_dtype)",
}


def autocast(precision: str, device: torch.device, cache: bool = True):
    """The forward pass's context: bfloat16 autocast for ``bf16``, nothing otherwise. ``cache=False``
    for a step recorded as a CUDA graph (PyTorch: autocast's cache of cast weights must be off there)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device):
    """The training step's context: TensorFloat-32 products on a CUDA device for ``tf32``
    (``torch.set_float32_matmul_precision("high")``), the previous setting restored afterwards, so
    evaluation stays float32; nothing otherwise."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


@dataclass
class FitState:
    """Everything needed to continue a fit: the step reached and the per-step history."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    status: str = "running"
    message: str = ""
    train_seconds: float = 0.0
    first_loss: float | None = None


def fit_record(state: FitState) -> dict:
    """What a checkpoint keeps of a fit's state to continue it (:func:`continued_fit` reads it back)."""
    return {"step": state.step, "history": state.history, "train_seconds": state.train_seconds,
            "first_loss": state.first_loss, "status": state.status}


def continued_fit(record: dict) -> FitState:
    """The state a fit saved with :func:`fit_record` continues from (running again, no message)."""
    return FitState(step=record["step"], history=record["history"], train_seconds=record["train_seconds"],
                    first_loss=record["first_loss"])


def make_adam(params, lr: float | Tensor, amsgrad: bool = False, capturable: bool = False) -> torch.optim.Adam:
    """Adam, with PyTorch's fused (single-kernel) update when every parameter is a real float
    tensor (complex WIRE weights keep the multi-tensor update); the same algorithm either way.
    ``capturable`` (with ``lr`` a one-element tensor on the parameters' device) keeps all of the
    update on the device, as a CUDA graph needs."""
    params = list(params)
    if params and all(p.is_floating_point() for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, amsgrad=amsgrad, fused=True, capturable=capturable)
        except (RuntimeError, ValueError):  # a device without the fused kernel
            pass
    return torch.optim.Adam(params, lr=lr, amsgrad=amsgrad, capturable=capturable)


def exponential_decay(steps: int, final_factor: float) -> Callable[[int], float]:
    """The paper's schedule: ``lr(step) = lr * final_factor ** (step / steps)``."""
    return lambda step: final_factor ** (min(step, steps) / steps)


def curve_columns(task: Task) -> list[str]:
    """The columns of a fit's ``history`` (``curve.csv``) before any evaluation: also the header of a
    curve without rows (a run that diverged at once)."""
    return ["step", "loss", *step_metrics(task, 1.0), "lr"]


def step_metrics(task: Task, loss: float) -> dict[str, float]:
    """The task's figures for a step's ``loss`` (none where it has no ``step_metrics``)."""
    own = getattr(task, "step_metrics", None)
    return own(loss) if own is not None else {}


class _StopFlag:
    """Turns Ctrl-C (SIGINT), and SIGTERM within :func:`finer.launch.sigterm_interrupts`, into a request to stop after
    the current step (main thread only); a second signal aborts at once. A signal the process ignores
    stays ignored. The same signal again within :data:`REPEAT_SECONDS` is the same request: ``timeout``
    sends its signal to the command and then to the command's process group, and while the process waits
    on another (the compiler's workers) the two can arrive as two."""

    REPEAT_SECONDS = 0.25

    def __init__(self):
        self.requested = False
        self._first: tuple[int, float] | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            taken = [signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else []
            if signal.getsignal(signal.SIGTERM) is interrupt:
                taken.append(signal.SIGTERM)
            self._previous = {signum: signal.signal(signum, self._handle) for signum in taken}
        return self

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.requested:
            if self._first and self._first[0] == signum and now - self._first[1] < self.REPEAT_SECONDS:
                return
            raise KeyboardInterrupt
        self.requested, self._first = True, (signum, now)

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)


GRAPH_WARMUP = 3
"""Eager steps before a step is recorded as a CUDA graph: compilation, lazy initialisation and the
optimiser's state happen in them, outside the recording, as PyTorch's CUDA-graph notes advise."""


class CudaGraphRecorder:
    """Warm-up steps on a side stream, then the step recorded as a CUDA graph on that same stream
    (PyTorch's whole-network capture: the gradients, set to None before recording, are allocated
    from the graph's own memory and rewritten by every replay). The stream is the recorder's own,
    not PyTorch's shared capture stream, so cuBLAS's per-stream workspace is set up by the warm-up
    and no other graph's lifetime touches it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def warmup(self, fn: Callable[[], Tensor]) -> Tensor:
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            out = fn()
        main.wait_stream(self.stream)
        out.record_stream(main)  # used on the main stream from here on
        return out

    def record(self, fn: Callable[[], Tensor]) -> tuple[Callable[[], None], Tensor]:
        """``(replay, output)``: recording runs nothing; each ``replay()`` runs ``fn``'s kernels
        and rewrites ``output``."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            out = fn()
        return graph.replay, out


GRAPH_RECORDERS: dict[str, Callable[[torch.device], CudaGraphRecorder]] = {"cuda": CudaGraphRecorder}
"""Device type -> how a step is recorded there (only CUDA graphs exist)."""


def graph_problem(device: torch.device, task: Task | None = None) -> str | None:
    """Why a step of ``task`` on ``device`` cannot be recorded as a CUDA graph (``None`` if it can;
    ``task=None``: the device alone, for a task known to be replayable)."""
    if device.type not in GRAPH_RECORDERS:
        return f"a CUDA graph needs a CUDA device, and the model is on the {device.type} (leave --cuda-graph out)"
    if task is not None and not getattr(task, "replayable", False):
        return (f"a CUDA graph replays one fixed batch, and this {type(task).__name__} draws a new batch every step "
                "(train on the full batch, or leave --cuda-graph out)")
    return None


class TrainStep:
    """One optimisation step of ``model`` on ``task`` with its own Adam: zero the gradients, the
    forward pass (under the precision's autocast), the loss, backward, optional clipping, Adam.

    With ``cfg.cuda_graph`` the first :data:`GRAPH_WARMUP` calls run eagerly, the next one records
    the step as a CUDA graph, and every call from then on replays it: one launch per step instead of
    one per kernel, and no Python between the kernels. The learning rate is then a tensor on the
    device, written before each replay, and the task must be replayable (see :class:`Task`). A
    step kept across :func:`fit` calls (the speed bench's timed blocks) is recorded once.
    """

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, optimizer_state: dict | None = None):
        self.model, self.task, self.cfg = model, task, cfg
        self.device = next(iter(model.parameters())).device
        self.recorder = None
        self.lr = None
        if cfg.cuda_graph:
            problem = graph_problem(self.device, task)
            if problem:
                raise ConfigError(problem)
            self.recorder = GRAPH_RECORDERS[self.device.type](self.device)
            self.lr = torch.tensor(cfg.lr, dtype=torch.float32, device=self.device)
        self.optimizer = make_adam(model.parameters(), lr=cfg.lr if self.lr is None else self.lr,
                                   amsgrad=cfg.amsgrad, capturable=self.lr is not None)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
            if self.lr is not None:
                self._make_capturable()
        self.warmups = 0
        self._replay: Callable[[], None] | None = None
        self._loss: Tensor | None = None
        self._batch: tuple[Tensor, Tensor] | None = None

    def _make_capturable(self) -> None:
        """A loaded state replaces the parameter groups with the saved ones (a number for the learning
        rate, ``capturable`` as saved) and keeps the step counts where they were saved: make them
        what a recorded step needs, the learning-rate tensor and the counts on the device."""
        for group in self.optimizer.param_groups:
            group["lr"], group["capturable"] = self.lr, True
            for p in group["params"]:
                state = self.optimizer.state.get(p)
                if state and "step" in state:
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)

    def _step(self, x: Tensor, y: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with matmul_precision(self.cfg.precision, self.device):
            with autocast(self.cfg.precision, self.device, cache=self.recorder is None):  # the forward pass only
                pred = self.model(x)
            loss = self.task.loss(pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred, y)
            loss.backward()
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def __call__(self, step: int, lr: float) -> Tensor:
        """Run step ``step`` at learning rate ``lr``; returns its loss (a tensor of its own, on the device)."""
        x, y = self.task.batch(step)
        if self.recorder is None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            return self._step(x, y)
        self.lr.fill_(lr)
        if self._replay is None:
            with warnings.catch_warnings():  # PyTorch warns that a capturable Adam runs unrecorded here
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                if self.warmups < GRAPH_WARMUP:
                    self.warmups += 1
                    return self.recorder.warmup(lambda: self._step(x, y))
                self._replay, self._loss = self.recorder.record(lambda: self._step(x, y))
            self._batch = (x, y)
        elif x is not self._batch[0] or y is not self._batch[1]:
            raise RuntimeError(f"{type(self.task).__name__} is marked replayable but returned a new batch at step "
                               f"{step}; a recorded step would train on the old one")
        self._replay()
        return self._loss.clone()


def fit(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    *,
    state: FitState | None = None,
    optimizer_state: dict | None = None,
    on_checkpoint: Callable[[FitState, dict], None] | None = None,
    progress: bool = True,
    desc: str = "fit",
    trainer: TrainStep | None = None,
) -> FitState:
    """Optimise ``model`` on ``task`` from ``state.step`` to ``cfg.steps``.

    ``on_checkpoint(state, snapshot)`` is called every ``cfg.checkpoint_every`` steps and at the
    end, with ``snapshot = {"model": state_dict, "optimizer": state_dict}`` of a consistent,
    finite state. On a non-finite or diverging loss the model is restored to the last good
    snapshot and ``state.status`` becomes ``"diverged"``; on Ctrl-C it becomes ``"interrupted"``.
    ``trainer``: a :class:`TrainStep` of this model and task to use (and keep across calls) instead
    of a new one; ``optimizer_state`` then does not apply.

    A later call continues from ``state`` with a fresh Adam unless given the optimiser's state: the
    ``snapshot["optimizer"]`` of ``on_checkpoint`` as ``optimizer_state``, or the same ``trainer``.
    ``cfg.lr`` is not the model's own: give ``TrainConfig(lr=model.config.lr, ...)`` for a registry model.
    """
    state = state or FitState()
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {cfg.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    device = next(iter(model.parameters())).device
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision bf16 needs a GPU with bfloat16 support (compute capability 8.0 or later); "
                          "use fp32 or tf32")
    if trainer is not None and optimizer_state is not None:
        raise ValueError("give the optimiser state to the TrainStep, not to fit() beside it")
    if cfg.eval_every and not hasattr(task, "evaluate"):
        raise ConfigError(f"eval_every {cfg.eval_every}: this {type(task).__name__} has no evaluate(model); "
                          "give it one, or set eval_every=0")
    trainer = trainer or TrainStep(model, task, cfg, optimizer_state)
    state.status, state.message = "running", ""  # (a state continued after an interrupt or a divergence)
    optimizer = trainer.optimizer
    schedule = exponential_decay(cfg.steps, cfg.lr_final_factor)
    # the latest snapshot, whose own loss (the next step's) is not seen yet, and the one before it, whose loss is
    good, good_step = _snapshot(model, optimizer), state.step
    before: tuple[dict, int] | None = None
    reverted = False  # the model goes back to ``good`` at the end (diverged, or interrupted after a bad update)
    pending: list[tuple[int, Tensor, float]] = []
    bar = tqdm(total=cfg.steps, initial=state.step, desc=desc, disable=not progress, dynamic_ncols=True, leave=False,
               mininterval=_bar_interval(), maxinterval=max(10.0, _bar_interval()))  # (tqdm's monitor: 10 s)
    shown: dict[str, str] = {}  # the bar's figures: the latest loss and training PSNR, and the latest evaluation
    overhead = 0.0  # seconds spent on evaluation and checkpoints, not training
    start = time.perf_counter()

    def flush() -> bool:
        """Move pending losses to the history; False if one of them is bad (the last good snapshot is then
        the latest one whose own loss was seen good: the loss of step ``k + 1`` is the network of step ``k``'s)."""
        nonlocal good, good_step, before
        losses = torch.stack([p[1] for p in pending]).cpu().tolist() if pending else []
        for (step, _, lr), loss in zip(pending, losses):
            if state.first_loss is None:
                state.first_loss = loss
            if not math.isfinite(loss) or loss > cfg.divergence_factor * max(state.first_loss, 1e-12):
                if step == good_step and before is not None:  # the latest snapshot is the network that failed
                    good, good_step = before
                state.status = "diverged"
                at_start = step == 0 and not math.isfinite(loss)  # before any update: the network as built
                state.message = (
                    f"loss became {loss:.4g} at step {step + 1}; stopped, last good step {good_step} "
                    + ("(the untrained network's output is not finite: check the model options, such as a very "
                       "large first-bias-scale, and the input)" if at_start
                       else "(try a lower learning rate, or check the input)")
                )
                return False
            state.history.append({"step": step + 1, "loss": loss, **step_metrics(task, loss), "lr": lr})
        pending.clear()
        before = good, good_step  # (its loss, the first pending one, was good)
        good, good_step = _snapshot(model, optimizer), state.step
        if state.history:
            last = state.history[-1]
            figures = step_metrics(task, last["loss"])
            shown.update(loss=f"{last['loss']:.3e}", **{k: f"{v:.2f}" for k, v in figures.items()})
            bar.set_postfix(shown, refresh=False)
        return True

    def weights_finite() -> bool:
        """Whether the latest update left finite weights; if not, the fit goes back to ``before``: diverged, or,
        when it was stopping for Ctrl-C, still interrupted (a caller's loop of fits must stop too)."""
        nonlocal good, good_step, reverted
        if before is None or _all_finite(model):
            return True
        good, good_step = before
        reverted = True
        if state.status == "interrupted":
            state.message += (f"; the update of that step left non-finite weights, so the run is kept at step "
                              f"{good_step}, and a resume will meet them again (try a lower learning rate)")
            return False
        state.status = "diverged"
        state.message = (f"the update of step {state.step} left non-finite weights; stopped, last good step "
                         f"{good_step} (try a lower learning rate, or check the input)")
        return False

    with _StopFlag() as stop:
        while state.step < cfg.steps:
            lr = cfg.lr * schedule(state.step)
            pending.append((state.step, trainer(state.step, lr), lr))
            state.step += 1
            bar.update(1)
            last = state.step == cfg.steps
            eval_due = bool(cfg.eval_every) and (state.step % cfg.eval_every == 0 or last)
            ckpt_due = bool(cfg.checkpoint_every) and state.step % cfg.checkpoint_every == 0 and not last
            if len(pending) >= cfg.log_every or last or stop.requested or eval_due or ckpt_due:
                if not flush():
                    break
            t0 = time.perf_counter()
            if eval_due:
                metrics = task.evaluate(model)
                state.history[-1].update({f"eval_{k}": v for k, v in metrics.items()})
                shown.update({f"eval_{k}": f"{v:.4g}" for k, v in metrics.items()})
                bar.set_postfix(shown, refresh=False)
            if stop.requested:  # (also at the last step: a caller's loop of fits stops too; resume completes it)
                state.status = "interrupted"
                state.message = f"interrupted at step {state.step} of {cfg.steps}"
                break
            if on_checkpoint and ckpt_due:  # with the training time so far, for a resume to carry on from
                if not weights_finite():  # (the snapshot's own loss is not seen yet: a file must not keep NaN)
                    break
                on_checkpoint(replace(state, train_seconds=state.train_seconds + t0 - start - overhead),
                              good)
            overhead += time.perf_counter() - t0
    bar.close()
    state.train_seconds += time.perf_counter() - start - overhead
    if state.status in ("running", "interrupted"):  # no later loss shows a bad last update (nor a Ctrl-C's)
        weights_finite()
    if state.status == "diverged" or reverted:
        model.load_state_dict(good["model"])
        state.step = good_step
        state.history = [h for h in state.history if h["step"] <= good_step]
    elif state.status == "running":
        state.status = "complete"
    if on_checkpoint:
        on_checkpoint(state, good if state.status == "diverged" or reverted else _snapshot(model, optimizer))
    return state


def _bar_interval() -> float:
    """Seconds between progress-bar refreshes: tqdm's 0.1 on a terminal or in a notebook, 30 when stderr
    is a log file or a pipe, where every refresh is another line."""
    notebook = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)  # what tqdm.auto chose
    interactive = notebook or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return 0.1 if interactive else 30.0


def _all_finite(model: nn.Module) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}
