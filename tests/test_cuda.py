"""The CUDA paths: fused and compiled kernels, stacked fits and mixed precision on a GPU.

Skipped where PyTorch sees no CUDA device (CI and most laptops); run on a GPU machine with
``python -m pytest tests/test_cuda.py``. The CPU suite tests the same functions on the CPU.
"""

import functools
import warnings

import pytest
import torch

import finer
from finer.nn import activations as A
from finer.nn import fused as F
from finer.nn.stacked import StackedMLP
from finer.tasks.image import ImageTask
from finer.train import TrainConfig, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (PyTorch sees none)")
CUDA = torch.device("cuda")


def _value_and_grad(fn, z, g):
    z = z.clone().requires_grad_()
    y = fn(z)
    (gz,) = torch.autograd.grad(y, z, g)
    return y.detach(), gz


@pytest.mark.parametrize("fn,params", [(A.finer, dict(omega=30.0, detach=True)),
                                       (A.finer, dict(omega=30.0, detach=False)), (A.sine, dict(omega=30.0)),
                                       (A.gauss_finer, dict(omega=10.0, scale=3.0, detach=True))],
                         ids=["finer", "finer-true-grad", "sine", "gauss-finer"])
def test_compiled_kernels_on_the_gpu_match_a_float64_reference(fn, params):
    """Triton kernels (float32) against the reference function in float64 on the CPU."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4096, 64, generator=gen, dtype=torch.float64) * 0.3
    g = torch.randn(4096, 64, generator=gen, dtype=torch.float64)
    ref = functools.partial(fn, **params)
    fused = F.fused_version(ref, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would not test the compiled path
        y, gz = _value_and_grad(fused, z.float().to(CUDA), g.float().to(CUDA))
    assert fused.keywords["runner"].is_compiled
    y_ref, gz_ref = _value_and_grad(ref, z, g)
    torch.testing.assert_close(y.cpu().double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gz.cpu().double(), gz_ref, rtol=1e-3, atol=1e-3 * gz_ref.abs().max().item())


@pytest.mark.parametrize("name", ["finer", "siren", "gauss", "wire", "wire-finer", "gauss-finer"])
def test_fused_models_on_the_gpu_keep_outputs_and_gradients(name):
    x = torch.rand(2048, 2, device=CUDA) * 2 - 1
    plain = finer.build_model(name, 2, 3, width=64, hidden_layers=2, seed=0).to(CUDA)
    fast = finer.build_model(name, 2, 3, width=64, hidden_layers=2, seed=0).to(CUDA)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert F.fuse(fast, compile=name in ("finer", "wire")) > 0
        outs = []
        for model in (plain, fast):
            y = model(x)
            (y.real if y.is_complex() else y).square().mean().backward()
            outs.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item() + 1e-7)


def _fit(name, image, device, steps=60, precision="fp32", fused="eager"):
    model = finer.build_model(name, 2, 3, width=64, hidden_layers=2, seed=0).to(device)
    F.apply_fused(model, fused, steps)
    task = ImageTask(image, tuple(model.config.target_range), device, seed=0)
    state = fit(model, task, TrainConfig(steps=steps, lr=model.config.lr, eval_every=0, checkpoint_every=0,
                                         precision=precision), progress=False)
    assert state.status == "complete"
    return state.history[-1]["train_psnr"], model


def test_a_gpu_fit_reaches_the_cpu_fit(astronaut_small):
    """Same seed, same steps: the GPU's float32 result agrees with the CPU's to rounding."""
    gpu, _ = _fit("finer", astronaut_small, CUDA)
    cpu, _ = _fit("finer", astronaut_small, torch.device("cpu"))
    assert gpu == pytest.approx(cpu, abs=0.2)  # float32 sums in another order, amplified by omega = 30


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_on_the_gpu_trains(astronaut_small, precision):
    reduced, model = _fit("finer", astronaut_small, CUDA, precision=precision)
    full, _ = _fit("finer", astronaut_small, CUDA)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert reduced == pytest.approx(full, abs=1.5)  # rounding costs a little, it does not break the fit


def test_stacked_networks_on_the_gpu_match_each_network():
    models = [finer.build_model("finer", 2, 3, width=32, hidden_layers=2, seed=s).to(CUDA) for s in range(4)]
    for m in models:
        F.fuse(m, compile=False)
    x = torch.rand(1000, 2, device=CUDA) * 2 - 1
    out = StackedMLP(models)(x)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,fused", [("finer", "compile"), ("finer", "off"), ("wire", "compile")])
def test_a_recorded_cuda_graph_step_trains_as_the_eager_step(astronaut_small, name, fused):
    """The whole step (forward, backward, Adam) replayed as a CUDA graph: the same losses and
    evaluations as eager steps, the learning rate read from the device every replay.

    WIRE trains at a tenth of its default rate here: at 5e-3 its 30 steps amplify rounding (on the
    CPU, one weight moved by one ulp changes the losses by 5e-4 to 2.7e-3 relative, and the
    compiled against the plain layers by 5.2e-3; measured 2026-11-28), so the recorded step's
    different Adam kernels (capturable, multi-tensor for complex weights) differed by 5.6e-3 on
    the H200. At 5e-4 the same perturbations move the losses by under 1e-6."""
    results = []
    for cuda_graph in (False, True):
        model = finer.build_model(name, 2, 3, width=32, hidden_layers=2, seed=0).to(CUDA)
        F.apply_fused(model, fused, 30)
        task = ImageTask(astronaut_small, tuple(model.config.target_range), CUDA, seed=0)
        lr = model.config.lr * (0.1 if name == "wire" else 1.0)
        state = fit(model, task, TrainConfig(steps=30, lr=lr, log_every=4, eval_every=10,
                                             cuda_graph=cuda_graph), progress=False)
        assert state.status == "complete"
        results.append(([h["loss"] for h in state.history],
                        [h["eval_psnr"] for h in state.history if "eval_psnr" in h]))
    (eager_loss, eager_psnr), (graph_loss, graph_psnr) = results
    assert graph_loss == pytest.approx(eager_loss, rel=1e-4)
    assert graph_psnr == pytest.approx(eager_psnr, abs=0.01)


def test_a_cuda_graph_step_replays_a_stacked_fit():
    from finer.batch_runs import StackedImageTask

    images = torch.rand(4, 16, 16, 3, generator=torch.Generator().manual_seed(0)).numpy()
    losses = []
    for cuda_graph in (False, True):
        models = [finer.build_model("finer", 2, 3, width=32, hidden_layers=2, seed=0).to(CUDA) for _ in images]
        for m in models:
            F.fuse(m, compile=True)
        task = StackedImageTask(images, (-1.0, 1.0), CUDA)
        state = fit(StackedMLP(models), task, TrainConfig(steps=12, eval_every=0, cuda_graph=cuda_graph),
                    progress=False)
        losses.append([h["loss"] for h in state.history])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_stacked_weight_gradients_over_many_points_match_each_network():
    """At PER_NETWORK_WEIGHT_GRAD_POINTS points the stacked layers' weight gradients come from one
    ``mm`` per network: the same gradients as each network's own backward."""
    n = F.PER_NETWORK_WEIGHT_GRAD_POINTS
    assert F.splits_weight_grad(torch.empty(2, n, 64, device=CUDA))  # this test takes the per-network path
    assert not F.splits_weight_grad(torch.empty(2, n - 1, 64, device=CUDA))
    models = [finer.build_model("finer", 2, 3, width=64, hidden_layers=2, seed=s).to(CUDA) for s in range(2)]
    for m in models:
        F.fuse(m, compile=True)
    coords = torch.rand(n, 2, device=CUDA) * 2 - 1
    stacked = StackedMLP(models)
    stacked(coords).square().mean(dim=(1, 2)).sum().backward()
    for k, m in enumerate(models):
        m(coords).square().mean().backward()
        for i, layer in enumerate(m.layers):
            torch.testing.assert_close(stacked.weights[i].grad[k], layer.linear.weight.grad, rtol=1e-3, atol=1e-6)
