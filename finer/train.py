"""The generic fit loop: Adam, exponential learning-rate decay, NaN guard, progress, history.

It knows a task only through a small interface (:class:`Task`): ``batch(step)``, ``loss``,
``step_metrics(loss)`` and ``evaluate(model)``. Everything written to disk is done by the caller
through the ``on_checkpoint`` callback, so the loop stays task- and file-agnostic.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from finer.errors import ConfigError


class Task(Protocol):
    def batch(self, step: int) -> tuple[Tensor, Tensor]: ...
    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...
    def step_metrics(self, loss: float) -> dict[str, float]: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


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


PRECISIONS = {
    "fp32": "float32 throughout (the paper's setting)",
    "tf32": "matrix products in TensorFloat-32 on CUDA GPUs (10-bit mantissa inputs, float32 sums); "
            "the same as fp32 on a CPU",
    "bf16": "mixed precision: the forward pass under torch.autocast in bfloat16, so the real matrix products "
            "of the hidden and output layers (forward and backward) are bfloat16, while the layers fed with "
            "coordinates, the bias additions, the activations, the weights, the optimiser and the loss stay "
            "float32 and complex (WIRE) products complex64 (finer.nn.layers.affine)",
}


def autocast(precision: str, device: torch.device):
    """The forward pass's context: bfloat16 autocast for ``bf16``, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
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


def make_adam(params, lr: float, amsgrad: bool = False) -> torch.optim.Adam:
    """Adam, with PyTorch's fused (single-kernel) update when every parameter is a real float
    tensor (complex WIRE weights keep the multi-tensor update); the same algorithm either way."""
    params = list(params)
    if params and all(p.is_floating_point() for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, amsgrad=amsgrad, fused=True)
        except (RuntimeError, ValueError):  # a device without the fused kernel
            pass
    return torch.optim.Adam(params, lr=lr, amsgrad=amsgrad)


def exponential_decay(steps: int, final_factor: float) -> Callable[[int], float]:
    """The paper's schedule: ``lr(step) = lr * final_factor ** (step / steps)``."""
    return lambda step: final_factor ** (min(step, steps) / steps)


class _StopFlag:
    """Turns Ctrl-C into a request to stop after the current step (main thread only)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
) -> FitState:
    """Optimise ``model`` on ``task`` from ``state.step`` to ``cfg.steps``.

    ``on_checkpoint(state, snapshot)`` is called every ``cfg.checkpoint_every`` steps and at the
    end, with ``snapshot = {"model": state_dict, "optimizer": state_dict}`` of a consistent,
    finite state. On a non-finite or diverging loss the model is restored to the last good
    snapshot and ``state.status`` becomes ``"diverged"``; on Ctrl-C it becomes ``"interrupted"``.
    """
    state = state or FitState()
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {cfg.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    device = next(iter(model.parameters())).device
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision bf16 needs a GPU with bfloat16 support (compute capability 8.0 or later); "
                          "use fp32 or tf32")
    optimizer = make_adam(model.parameters(), lr=cfg.lr, amsgrad=cfg.amsgrad)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    schedule = exponential_decay(cfg.steps, cfg.lr_final_factor)
    good, good_step = _snapshot(model, optimizer), state.step
    pending: list[tuple[int, Tensor, float]] = []
    bar = tqdm(total=cfg.steps, initial=state.step, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    overhead = 0.0  # seconds spent on evaluation and checkpoints, not training
    start = time.perf_counter()

    def flush() -> bool:
        """Move pending losses to the history; False if one of them is bad."""
        nonlocal good, good_step
        losses = torch.stack([p[1] for p in pending]).cpu().tolist() if pending else []
        for (step, _, lr), loss in zip(pending, losses):
            if state.first_loss is None:
                state.first_loss = loss
            if not math.isfinite(loss) or loss > cfg.divergence_factor * max(state.first_loss, 1e-12):
                state.status = "diverged"
                state.message = (
                    f"loss became {loss:.4g} at step {step + 1}; stopped, last good step {good_step} "
                    f"(try a lower --lr, or check the input)"
                )
                return False
            state.history.append({"step": step + 1, "loss": loss, **task.step_metrics(loss), "lr": lr})
        pending.clear()
        good, good_step = _snapshot(model, optimizer), state.step
        if state.history:
            last = state.history[-1]
            bar.set_postfix(loss=f"{last['loss']:.3e}", **{k: f"{v:.2f}" for k, v in task.step_metrics(last["loss"]).items()})
        return True

    with _StopFlag() as stop:
        while state.step < cfg.steps:
            lr = cfg.lr * schedule(state.step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = task.batch(state.step)
            optimizer.zero_grad(set_to_none=True)
            with matmul_precision(cfg.precision, device):
                with autocast(cfg.precision, device):  # the forward pass only, as PyTorch advises
                    pred = model(x)
                loss = task.loss(pred.float(), y)
                loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            pending.append((state.step, loss.detach(), lr))
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
                bar.set_postfix(loss=f"{state.history[-1]['loss']:.3e}", **{k: f"{v:.4g}" for k, v in metrics.items()})
            if stop.requested:
                state.status = "interrupted"
                state.message = f"interrupted at step {state.step} of {cfg.steps}"
                break
            if on_checkpoint and ckpt_due:
                on_checkpoint(state, good)
            overhead += time.perf_counter() - t0
    bar.close()
    state.train_seconds += time.perf_counter() - start - overhead
    if state.status == "diverged":
        model.load_state_dict(good["model"])
        state.step = good_step
        state.history = [h for h in state.history if h["step"] <= good_step]
    elif state.status == "running":
        state.status = "complete"
    if on_checkpoint:
        on_checkpoint(state, good if state.status == "diverged" else _snapshot(model, optimizer))
    return state


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}
