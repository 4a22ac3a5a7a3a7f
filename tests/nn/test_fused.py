"""Fused activations give the values and first derivatives of the reference functions."""

import functools
import warnings

import pytest
import torch

import finer
from finer.errors import FinerError
from finer.nn import activations as A
from finer.nn import fused as F

CASES = [
    (A.finer, dict(omega=30.0, detach=True)),
    (A.finer, dict(omega=30.0, detach=False)),
    (A.sine, dict(omega=30.0)),
    (A.gauss, dict(scale=30.0)),
    (A.gauss_finer, dict(omega=10.0, scale=3.0, detach=True)),
    (A.gauss_finer, dict(omega=10.0, scale=3.0, detach=False)),
]


def _value_and_grad(fn, z, g):
    z = z.clone().requires_grad_()
    y = fn(z)
    (gz,) = torch.autograd.grad(y, z, g)
    return y.detach(), gz


@pytest.mark.parametrize("fn,params", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_kernels_match_the_reference_functions(fn, params):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(500, 32, generator=gen, dtype=torch.float64) * 0.2
    g = torch.randn(500, 32, generator=gen, dtype=torch.float64)
    y_ref, gz_ref = _value_and_grad(functools.partial(fn, **params), z, g)
    y, gz = _value_and_grad(F.fused_version(functools.partial(fn, **params), compile=False), z, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gz, gz_ref, rtol=1e-10, atol=1e-10)


COMPLEX_CASES = [
    (A.gabor, dict(omega=20.0, scale=10.0)),
    (A.gabor_finer, dict(omega=5.0, omega_w=4.0, scale=2.0, detach=True)),
    (A.gabor_finer, dict(omega=5.0, omega_w=4.0, scale=2.0, detach=False)),
]


@pytest.mark.parametrize("real_input", [False, True], ids=["complex-input", "real-input"])
@pytest.mark.parametrize("fn,params", COMPLEX_CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_complex_kernels_match_autograd_of_the_reference(fn, params, real_input):
    """The hand-derived Jacobians against PyTorch's complex autograd (its dL/da + i dL/db convention)."""
    gen = torch.Generator().manual_seed(3)
    shape = (400, 16)
    z = torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.15
    if not real_input:
        z = torch.complex(z, torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.15)
    g = torch.complex(torch.randn(*shape, generator=gen, dtype=torch.float64),
                      torch.randn(*shape, generator=gen, dtype=torch.float64))
    y_ref, gz_ref = _value_and_grad(functools.partial(fn, **params), z, g)
    y, gz = _value_and_grad(F.fused_version(functools.partial(fn, **params), compile=False), z, g)
    assert y.dtype == y_ref.dtype and gz.dtype == gz_ref.dtype
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gz, gz_ref, rtol=1e-9, atol=1e-9 * gz_ref.abs().max().item())


def test_compiled_kernel_matches_the_reference():
    z = torch.randn(257, 64, generator=torch.Generator().manual_seed(1)) * 0.3
    g = torch.randn(257, 64, generator=torch.Generator().manual_seed(2))
    ref = functools.partial(A.finer, omega=30.0, detach=True)
    fused = F.fused_version(ref, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would not test the compiled path
        y, gz = _value_and_grad(fused, z, g)
    assert fused.keywords["runner"].is_compiled
    y_ref, gz_ref = _value_and_grad(ref, z, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gz, gz_ref, rtol=1e-4, atol=1e-3 * gz_ref.abs().max().item())


def test_failed_compilation_falls_back_to_eager(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    runner = F._Compiled(F.sine_kernel, compile=True)
    z = torch.linspace(-1, 1, 11)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        y, _ = runner(z, omega=30.0)
    torch.testing.assert_close(y, torch.sin(30.0 * z))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = runner(z, omega=30.0)  # no second warning: the runner stays eager
    assert not runner.is_compiled


def test_passes_on_cpu_tensors_use_the_cpu_options(monkeypatch):
    """The fused layers' passes have a version compiled with PASS_CPU_OPTIONS for CPU tensors;
    other activations (and other devices) get the compiler's defaults."""
    made = []

    def recording(fn, **kwargs):
        options = kwargs.get("options")
        made.append(options)

        def run(*args, **kw):
            return "cpu-options" if options else "defaults"
        return run

    monkeypatch.setattr(torch, "compile", recording)
    value, grad = F._linear_runners.__wrapped__(F.sine_kernel, True)
    assert made == [None, F.PASS_CPU_OPTIONS] * 2
    assert value(torch.zeros(2, 3), torch.zeros(3)) == "cpu-options"
    assert value(torch.zeros(2, 3, device="meta"), torch.zeros(3)) == "defaults"  # any other device
    plain = F._Compiled(F.sine_kernel, compile=True)
    assert plain(torch.zeros(3)) == "defaults"


def test_device_dynamic_applies_to_other_devices_only(monkeypatch):
    """DEVICE_DYNAMIC sets ``dynamic`` of the version for other devices; CPU tensors keep the
    symbolic-size version, also for a pass without CPU options."""
    made = []

    def recording(fn, dynamic=None, options=None):
        made.append((dynamic, options))
        return lambda *args, **kw: dynamic

    monkeypatch.setattr(torch, "compile", recording)
    monkeypatch.setattr(F, "DEVICE_DYNAMIC", None)
    value, _ = F._linear_runners.__wrapped__(F.sine_kernel, True)
    assert made[:2] == [(None, None), (True, F.PASS_CPU_OPTIONS)]
    assert value(torch.zeros(2, 3), torch.zeros(3)) is True
    assert value(torch.zeros(2, 3, device="meta"), torch.zeros(3)) is None
    plain = F._Compiled(F.sine_kernel, compile=True)
    assert made[-2:] == [(None, None), (True, None)]
    assert plain(torch.zeros(3)) is True and plain(torch.zeros(3, device="meta")) is None


def test_passes_compiled_for_fixed_sizes_compute_the_same_values(monkeypatch):
    """The version DEVICE_DYNAMIC = None builds (sizes fixed until they change, then symbolic), run
    here on CPU tensors, against the eager pass, for two widths and two point counts."""
    monkeypatch.setattr(F, "DEVICE_DYNAMIC", None)
    value, grad = F._linear_runners.__wrapped__(F.finer_kernel, True)
    eager_value, eager_grad = F._layer_kernels(F.finer_kernel)
    g = torch.Generator().manual_seed(0)
    for n, width in ((64, 16), (64, 24), (40, 24)):
        z, bias = torch.randn(n, width, generator=g), torch.randn(width, generator=g)
        grad_y = torch.randn(n, width, generator=g)
        torch.testing.assert_close(value.compiled(z, bias, omega=30.0), eager_value(z, bias, omega=30.0))
        for got, want in zip(grad.compiled(grad_y, z, bias, omega=30.0), eager_grad(grad_y, z, bias, omega=30.0)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)  # the bias gradient: sums of 64 terms


def test_exp_compiled_for_the_cpu_is_exp_to_float32_rounding():
    """``_exp`` is ``exp2(x log2 e)`` only when compiled for a CPU (a way round a compiler heuristic);
    its error is within the rounding of ``x`` itself, ``2^-24 |x|``, and eagerly it is ``torch.exp``."""
    x = torch.linspace(-87.0, 20.0, 20001)  # exp(-87) is still a normal float32
    assert torch.equal(F._exp(x), torch.exp(x))
    y = torch.compile(F._exp, dynamic=True)(x)
    ref = torch.exp(x.double())
    rel = ((y.double() - ref).abs() / ref).max().item()
    assert rel < 2.0 ** -24 * 87 * 2, rel
    assert not torch.equal(y, torch.compile(lambda t: torch.exp(t), dynamic=True)(x))  # it did take exp2


def test_first_layer_passes_take_the_weight_transposed():
    """The first layer's passes read ``W^T`` (rows along the outputs, see ``_stem_product``): flat and stacked."""
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    w, b = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(F._stem_product(x, w.t().contiguous(), b), x @ w.t() + b)
    xs, ws = torch.rand(3, 50, 2, dtype=torch.float64), torch.randn(3, 7, 2, dtype=torch.float64)
    bs = torch.randn(3, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(F._stem_product(xs, ws.transpose(1, 2).contiguous(), bs), xs @ ws.transpose(1, 2) + bs)


@pytest.mark.parametrize("name,expected", [("finer", 3), ("siren", 3), ("gauss-finer", 3), ("wire", 3),
                                           ("wire-finer", 3), ("pemlp", 0), ("metasin", 0)])
def test_fuse_a_model_keeps_outputs_and_parameter_gradients(name, expected):
    x = torch.rand(300, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1  # not whatever ran before
    plain = finer.build_model(name, 2, 3, width=16, hidden_layers=2, seed=0)
    fast = finer.build_model(name, 2, 3, width=16, hidden_layers=2, seed=0)
    assert F.fuse(fast, compile=False) == expected
    outs = []
    for model in (plain, fast):
        model.zero_grad()
        y = model(x)
        (y.real if y.is_complex() else y).square().mean().backward()
        outs.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    for a, b in zip(outs[1][1], outs[0][1]):  # float32 sums in another order: relative to the largest entry
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item() + 1e-7)
    if expected:
        assert "activation=fused " in repr(fast)
    assert F.unfuse(fast) == expected and "fused" not in repr(fast)


def test_apply_fused_modes():
    model = finer.build_model("finer", 2, 1, width=8, hidden_layers=1)
    assert F.apply_fused(model, "auto", steps=10) == {"fused": "off", "fused_layers": 0}
    assert F.apply_fused(model, "eager", steps=10) == {"fused": "eager", "fused_layers": 2}
    assert F.apply_fused(finer.build_model("finer", 2, 1), "auto", steps=5000)["fused"] == "compile"
    with pytest.raises(FinerError, match="unknown fused mode"):
        F.apply_fused(model, "fast", steps=10)


def test_a_model_without_kernels_reports_off():
    assert F.apply_fused(finer.build_model("pemlp", 2, 1, width=8), "compile", steps=10) == {"fused": "off",
                                                                                             "fused_layers": 0}


@pytest.mark.parametrize("name", ["metasin", "sc-mlp"])
def test_compiled_learnable_activations_keep_outputs_and_gradients(name):
    """MetaSin and SC-MLP are fused only by compiling their function; parameter gradients included."""
    x = torch.rand(300, 2) * 2 - 1
    plain = finer.build_model(name, 2, 3, width=16, hidden_layers=1, seed=0)
    fast = finer.build_model(name, 2, 3, width=16, hidden_layers=1, seed=0)
    layers = sum(isinstance(m, finer.nn.layers.Layer) and isinstance(m.activation, torch.nn.Module)
                 for m in fast.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
        assert F.fuse(fast, compile=True) == layers > 0
        outs = []
        for model in (plain, fast):
            y = model(x)
            y.square().mean().backward()
            outs.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item() + 1e-7)
    assert F.unfuse(fast) == layers
    assert F.fuse(fast, compile=True) == layers and F.fuse(fast, compile=True) == layers  # anew, not twice:
    wrapped = [layer.activation.fn for layer in fast.layers if hasattr(layer.activation, "fn")]
    assert wrapped and all(not isinstance(fn.kernel, F._Compiled) for fn in wrapped)  # one compiled wrapper each


def test_compiled_fused_layers_match_plain_layers_on_batched_input():
    """The fused layer path (product, then bias + kernel in one pass; bias gradient in backward's pass).
    Float64: in float32 the sums in another order differ by more than any fixed tolerance now and then."""
    x = torch.rand(4, 75, 2, dtype=torch.float64) * 2 - 1  # leading dimensions, as NeRF's rays x samples
    plain = finer.build_model("finer", 2, 3, width=16, hidden_layers=2, seed=0, first_bias_scale=5.0).double()
    fast = finer.build_model("finer", 2, 3, width=16, hidden_layers=2, seed=0, first_bias_scale=5.0).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert F.fuse(fast, compile=True) == 3
        assert all(m.fused_forward is not None for m in fast.layers[:-1])
        outs = []
        for model in (plain, fast):
            y = model(x)
            y.square().mean().backward()
            outs.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    assert outs[1][0].shape == (4, 75, 3)
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * b.abs().max().item())
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-10, atol=1e-12)
    F.unfuse(fast)
    assert all(m.fused_forward is None for m in fast.layers)


@pytest.mark.parametrize("input_grad", [False, True])
def test_fused_first_layer_with_few_inputs(input_grad):
    """A first layer fed with coordinates computes its product inside the pass (no input gradient),
    or falls back to the product path when the coordinates need a gradient (as an SDF's normals do)."""
    x = (torch.rand(300, 3, dtype=torch.float64) * 2 - 1).requires_grad_(input_grad)  # float64: sums in another order
    outs = []
    for fused in (False, True):
        model = finer.build_model("finer", 3, 1, width=16, hidden_layers=1, seed=0, first_bias_scale=5.0).double()
        if fused:
            F.fuse(model, compile=True)
            assert model.layers[0].fused_forward.keywords["stem"] is not None
            assert model.layers[1].fused_forward.keywords["stem"] is None  # 16 inputs: the product path
        x.grad = None
        y = model(x)
        y.square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters()] + ([x.grad.clone()] if input_grad else [])
        outs.append((y.detach(), grads))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * b.abs().max().item())


@pytest.mark.parametrize("method", ["finer", "wire"])
@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen"])
def test_fused_paths_refuse_a_second_derivative_naming_unfuse(method, frozen):
    """The kernels give first derivatives only; differentiating twice must fail, naming the way out, not be
    quietly wrong: also with frozen parameters, where no incoming gradient carries a graph (PyTorch's
    once_differentiable then returned a gradient with none, and a sum with another loss dropped its term)."""
    from finer.errors import FinerError

    x = (torch.rand(20, 2) * 2 - 1).requires_grad_()
    model = finer.build_model(method, 2, 1, width=8, hidden_layers=1, seed=0).requires_grad_(not frozen)
    F.fuse(model, compile=False)
    y = model(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    assert g.requires_grad
    with pytest.raises(FinerError, match=r"first derivatives only.*unfuse\(model\)"):
        (g.square().sum() + x.sum()).backward()
    F.unfuse(model)  # the way out the message names gives the plain second derivative
    (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    g.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", [A.finer, A.gabor], ids=["real", "complex"])
def test_a_fused_activation_refuses_a_second_derivative_too(fn):
    """The activation-level fused path (fused_version) saves no tensor with a graph: under create_graph it
    refuses at once rather than return a first derivative without one."""
    from finer.errors import FinerError

    act = F.fused_version(fn, compile=False)
    x = torch.randn(16, 4, requires_grad=True)
    with pytest.raises(FinerError, match="first derivatives only"):
        (g,) = torch.autograd.grad(act(x).real.sum(), x, create_graph=True)
        (g.square().sum() + x.sum()).backward()
    (g,) = torch.autograd.grad(act(x).real.sum(), x)  # a first derivative alone is fine
    assert torch.isfinite(g).all()


def test_a_first_derivative_with_create_graph_keeps_its_values():
    """Under create_graph the refusing node is the identity: the first derivative is the plain one."""
    x = (torch.rand(20, 2) * 2 - 1).double().requires_grad_()
    plain = finer.build_model("finer", 2, 1, width=8, hidden_layers=1, seed=0).double()
    fused = finer.build_model("finer", 2, 1, width=8, hidden_layers=1, seed=0).double()
    F.fuse(fused, compile=False)
    (want,) = torch.autograd.grad(plain(x).sum(), x)
    (got,) = torch.autograd.grad(fused(x).sum(), x, create_graph=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_products_run_in_the_forward_precision_forward_and_backward(fused):
    """Under bf16 autocast every matrix product, forward and backward, is bf16 except those of the layer
    fed with the 2 coordinates (float32; a custom autograd function's backward runs outside autocast
    unless it restores it); without autocast all stay float32 and gradients keep the parameters' dtype."""
    from torch.profiler import profile

    def products(autocast: bool):
        model = finer.build_model("finer", 2, 3, width=32, hidden_layers=2, seed=0)
        if fused:
            assert F.fuse(model, compile=False) == 3
        with profile(record_shapes=True) as prof:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = model(torch.rand(200, 2))
            y.float().square().mean().backward()
        assert y.dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        return [(2 in e.input_shapes[0] + e.input_shapes[1], e.input_dtypes[0], e.input_dtypes[1])
                for e in prof.events() if e.name in ("aten::mm", "aten::addmm") and len(e.input_shapes[0]) == 2]

    mixed, full = products(True), products(False)
    assert len(mixed) >= 3 * 2 and len(full) >= 3 * 2  # three layers' forward and weight-gradient products at least
    assert {(a, b) for coords, a, b in mixed if coords} == {("float", "float")}
    assert {(a, b) for coords, a, b in mixed if not coords} == {("c10::BFloat16", "c10::BFloat16")}
    assert {(a, b) for _, a, b in full} == {("float", "float")}


def test_complex_weight_as_a_real_matrix_on_the_complex_memory():
    """``view_as_real(x).flatten(-2) M^T`` is ``[Re(x W^T) | Im(x W^T)]`` (``nn.Linear``'s product, no conjugate)."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(3, 7, 5, generator=gen, dtype=torch.complex128)  # stacked: (K, out, in)
    x = torch.randn(3, 11, 5, generator=gen, dtype=torch.complex128)
    z = torch.view_as_real(x).flatten(-2) @ F.complex_as_real_weight(w).transpose(-1, -2)
    ref = x @ w.transpose(-1, -2)
    torch.testing.assert_close(z, torch.cat([ref.real, ref.imag], -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name,kwargs", [("wire", {}), ("wire-finer", {}), ("wire-finer", {"scale_grad": True})],
                         ids=["wire", "wire-finer", "wire-finer-true-derivative"])
def test_fused_complex_layers_match_plain_layers(name, kwargs, compile):
    """WIRE's layers fused (a real product on the complex memory, then one pass; backward one pass and
    real products): the plain model's outputs and gradients, parameters and input, in float64."""
    x = (torch.rand(4, 75, 2, dtype=torch.float64) * 2 - 1).requires_grad_()  # rays x samples, say
    outs = []
    for fused in (False, True):
        model = finer.build_model(name, 2, 3, width=16, hidden_layers=2, seed=0, **kwargs)
        for p in model.parameters():
            p.data = p.data.to(torch.complex128 if p.is_complex() else torch.float64)
        if fused:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
                assert F.fuse(model, compile=compile) == 3
            assert all(layer.fused_forward is not None for layer in model.layers[:-1])
        x.grad = None
        y = model(x)
        y.square().mean().backward()
        with torch.no_grad():
            y_eval = model(x)
        outs.append((y.detach(), y_eval, [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]))
    assert outs[1][0].shape == (4, 75, 3) and not outs[1][0].is_complex()
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-10, atol=1e-12)
    for a, b in zip(outs[1][2], outs[0][2]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * b.abs().max().item())


def test_fused_complex_layers_keep_float32_products_under_mixed_precision():
    """Complex products are not autocast (there is no bfloat16 complex type); fused, they are real
    products, and must stay float32 too: bf16 autocast changes nothing."""
    x = torch.rand(200, 2) * 2 - 1
    model = finer.build_model("wire", 2, 3, width=16, hidden_layers=2, seed=0)
    F.fuse(model, compile=False)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert torch.equal(mixed, full)


def test_every_pass_has_its_own_code_for_the_compiler():
    """torch.compile keeps at most 8 compiled versions per code object and then runs eagerly, saying
    so only in a log line: the passes of different kernels must not share one (they are closures of
    one factory), or a process training a few methods quietly loses its compiled kernels."""
    passes = []
    for kernel in F.KERNELS.values():
        passes += [*F._layer_kernels(kernel), *F._stem_kernels(kernel)]
    for kernel in F.COMPLEX_KERNELS.values():
        passes += [*F._complex_layer_kernels(kernel, True), *F._complex_layer_kernels(kernel, False)]
    assert len({p.__code__ for p in passes}) == len(passes)
    assert len({p.__name__ for p in passes}) == len(passes)


def test_fused_complex_layer_takes_a_conjugated_input():
    layer = finer.nn.layers.Layer(6, 5, functools.partial(A.gabor), complex_weights=True)
    x = torch.randn(8, 6, dtype=torch.complex64).conj()
    with torch.no_grad():
        plain = layer(x)
        F.fuse(layer, compile=False)
        torch.testing.assert_close(layer(x), plain)


def test_fused_wire_first_layer_follows_the_mixed_precision_rule():
    """WIRE's first layer has real weights: with more than 4 inputs its product is bfloat16 under
    autocast, fused or not; complex layers stay float32 either way, also when backward runs under
    autocast."""
    x = torch.rand(100, 6) * 2 - 1
    outs = []
    for fused in (False, True):
        model = finer.build_model("wire", 6, 3, width=16, hidden_layers=1, seed=0)
        if fused:
            F.fuse(model, compile=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
            y.square().mean().backward()  # backward inside autocast, too
        outs.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("name", ["wire", "wire-finer"])
def test_fused_wire_cast_to_bfloat16_computes_its_activation_in_float32(name):
    """A model cast to bfloat16 (no autocast) runs fused: its first layer (real weights, a complex output) adds
    its bfloat16 product and bias and computes the Gabor in float32, as the plain layer's complex64 one does
    (it had failed in view_as_complex, which takes no bfloat16); backward gives bfloat16 weight gradients."""
    model = finer.build_model(name, 2, 3, width=16, hidden_layers=1, seed=0)
    F.fuse(model, compile=False)
    model = model.to(torch.bfloat16)
    x = (torch.rand(50, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1).bfloat16()
    first = model.layers[0]
    w, b = first.linear.weight, first.linear.bias
    z = (x @ w.T + b).float()  # the product and the bias in bfloat16, the Gabor in float32
    expected = first.activation.keywords["reference"](z, **{k: v for k, v in first.activation.keywords.items()
                                                            if k not in ("reference", "runner")})
    got = first(x)
    assert got.dtype == torch.complex64
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    y = model(x)
    assert y.dtype == torch.float32
    y.square().mean().backward()
    assert w.grad.dtype == torch.bfloat16 and all(p.grad.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("stacked", [False, True], ids=["flat", "stacked"])
def test_mixed_precision_handoff_changes_types_not_values(compile, stacked):
    """Under bf16 autocast a fused layer writes its output (and backward its ``grad_z``) in bfloat16,
    the type the next product rounds them to anyway: outputs and gradients are those of the same
    layers writing float32 and leaving the cast to the next product, and only the casts go."""
    from torch.profiler import profile

    from finer.nn.stacked import StackedMLP

    x = torch.rand(300, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    results = {}
    for handoff in (False, True):
        models = [finer.build_model("finer", 2, 3, width=32, hidden_layers=2, seed=s)
                  for s in range(2 if stacked else 1)]
        for m in models:
            F.fuse(m, compile=compile)
            for layer in m.layers:
                if isinstance(layer.fused_forward, functools.partial):
                    layer.fused_forward = functools.partial(layer.fused_forward, handoff=handoff)
        model = StackedMLP(models) if stacked else models[0]

        def step():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            out.float().square().mean().backward()
            return out

        step()  # compilation happens here, outside the count
        with profile() as prof:
            y = step()
        casts = sum(1 for e in prof.events() if e.name == "aten::_to_copy")
        results[handoff] = (y.detach().float(), [p.grad.clone() for p in model.parameters()], casts)
    (y0, g0, casts0), (y1, g1, casts1) = results[False], results[True]
    tol = {} if compile else {"rtol": 0, "atol": 0}  # eager: the very same operations, bit for bit
    torch.testing.assert_close(y1, y0, **tol)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, **tol)
    assert casts1 < casts0, (casts1, casts0)


def test_one_compiled_version_serves_every_width():
    """The passes are compiled with dynamic shapes and get the weights and biases detached: were they
    parameters, the compiler would keep their shapes static and compile every pass again for each
    width, and past 8 versions per pass run it eagerly (a width sweep in one process)."""
    from torch._dynamo.utils import counters

    x = torch.rand(300, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def train_step(width):
        model = finer.build_model("finer", 2, 3, width=width, hidden_layers=2, seed=0)
        assert F.fuse(model, compile=True) == 3
        model(x).square().mean().backward()
        with torch.no_grad():
            model(x)

    train_step(20)
    graphs = counters["stats"]["unique_graphs"]
    for width in (28, 44, 76):
        train_step(width)
    assert counters["stats"]["unique_graphs"] == graphs


def test_per_network_weight_gradients_equal_the_batched_product(monkeypatch):
    """Stacked layers' weight gradients one ``mm`` per network (the CUDA path for long reductions)
    give the batched product's values, through the fused layer's backward too."""
    from finer.nn.stacked import StackedMLP

    gen = torch.Generator().manual_seed(0)
    gz = torch.randn(3, 200, 7, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 200, 5, generator=gen, dtype=torch.float64)
    assert not F.splits_weight_grad(torch.empty(2, F.PER_NETWORK_WEIGHT_GRAD_POINTS, 4))  # the CPU keeps bmm
    batched = F.weight_grad(gz, x, per_network=False)
    assert batched.shape == (3, 7, 5)
    torch.testing.assert_close(F.weight_grad(gz, x, per_network=True), batched, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(F.weight_grad(gz[0], x[0]), batched[0], rtol=1e-12, atol=1e-12)

    original = F.weight_grad

    def grads(per_network):
        models = [finer.build_model("finer", 2, 3, width=16, hidden_layers=2, seed=s) for s in range(3)]
        for m in models:
            F.fuse(m, compile=False)
        stacked = StackedMLP(models)
        monkeypatch.setattr(F, "weight_grad", functools.partial(original, per_network=per_network))
        coords = torch.rand(300, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
        stacked(coords).square().mean().backward()
        return [w.grad.clone() for w in stacked.weights]

    for split, whole in zip(grads(True), grads(False)):
        torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-7)


def test_fusing_again_fuses_anew():
    """A second fuse() (e.g. with compile after an eager one) rebuilds the fused layers, not nothing."""
    import finer
    from finer.nn.fused import fuse, unfuse

    net = finer.build_model("finer", 2, 3, width=8, hidden_layers=1, seed=0)
    x = torch.rand(16, 2) * 2 - 1
    plain = net(x)
    assert fuse(net, compile=False) == 2 and fuse(net, compile=False) == 2
    torch.testing.assert_close(net(x), plain)
    assert unfuse(net) == 2 and unfuse(net) == 0


@pytest.mark.parametrize("name", ["finer", "wire", "gauss-finer"])
def test_a_fused_network_pickles_as_the_plain_one(name):
    """torch.save(model) and worker processes pickle it: fused kernels stay in the process that built them."""
    import io

    import finer
    from finer.nn.fused import _Compiled, fuse

    net = finer.build_model(name, 2, 3, width=16, hidden_layers=1, seed=0)
    x = torch.rand(8, 2) * 2 - 1
    assert fuse(net, compile=False) == 2
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    back = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(back(x), net(x), rtol=1e-5, atol=1e-6)
    assert all(layer.fused_forward is None for layer in back.layers)
    assert net.layers[0].fused_forward is not None  # the original stays fused
    kernel = finer.nn.activations.finer
    assert pickle_round_trip(_Compiled(kernel, False)) is kernel  # (a learnable activation's compiled function)


@pytest.mark.parametrize("name", ["finer", "wire", "gauss-finer", "metasin"])
def test_a_deep_copy_stays_fused_and_owns_its_weights(name):
    """copy.deepcopy (a snapshot of the best model, an EMA twin) copies the model as it is: fused layers stay
    fused, with the same values and gradients, and the weights are the copy's own; a stack likewise."""
    import copy

    import finer
    from finer.nn.fused import _Compiled, fuse
    from finer.nn.stacked import StackedMLP

    x = torch.rand(32, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    nets = [finer.build_model(name, 2, 3, width=16, hidden_layers=1, seed=s) for s in range(2)]
    for net in nets:
        fuse(net, compile=False)
    for model in (nets[0], StackedMLP(nets)) if name != "metasin" else nets[:1]:  # (learnable: no stack)
        twin = copy.deepcopy(model)
        forwards = (lambda m: [layer.fused_forward for layer in m.layers]) if model is nets[0] else (
            lambda m: m.fused_forwards)
        assert forwards(twin) == forwards(model)
        model(x).square().mean().backward()
        twin(x).square().mean().backward()
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert p is not q and p.data_ptr() != q.data_ptr()
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0)
        with torch.no_grad():
            next(twin.parameters()).add_(1.0)
        assert not torch.equal(twin(x), model(x))
    if name == "finer":
        assert sum(f is not None for f in forwards(twin)) == 2  # the two sine layers (the last is linear)
        assert twin.fused_forwards is not model.fused_forwards  # (the stack's list is its own)
        from finer.nn.fused import unfuse

        fused_out = twin(x)
        assert unfuse(twin) == 2 and twin.fused_forwards == [None] * 3  # a stack unfuses too
        assert all("reference" not in getattr(a, "keywords", {}) for a in twin.activations)
        assert model.fused_forwards[0] is not None  # (not the original)
        torch.testing.assert_close(twin(x), fused_out, rtol=1e-5, atol=1e-6)
        compiled = _Compiled(finer.nn.activations.finer, False)
        assert copy.deepcopy(compiled) is compiled  # (a learnable activation's compiled function is shared)


def pickle_round_trip(value):
    import pickle

    return pickle.loads(pickle.dumps(value))


def test_hand_built_layers_fuse_however_their_activation_is_written():
    """``fn`` itself, ``partial(fn, omega=...)``: fused, same outputs and gradients; ``partial(fn, 30.0)``
    (30 in the place of the pre-activation): left alone, with a warning."""
    from finer.errors import FinerWarning
    from finer.nn.encodings import IdentityEncoding
    from finer.nn.layers import Layer
    from finer.nn.mlp import CoordinateMLP

    def net(first):
        torch.manual_seed(0)
        return CoordinateMLP(IdentityEncoding(2), [Layer(2, 16, first, weight_init="siren", init_omega=30.0,
                                                         is_first=True),
                                                   Layer(16, 16, functools.partial(A.finer, omega=30.0),
                                                         weight_init="siren", init_omega=30.0),
                                                   Layer(16, 1)])

    x = torch.rand(9, 2) * 2 - 1
    for first in (A.sine, functools.partial(A.finer, omega=20.0)):
        plain, fused = net(first), net(first)
        assert F.fuse(fused, compile=False) == 2
        torch.testing.assert_close(fused(x), plain(x))
        plain(x).square().sum().backward()
        fused(x).square().sum().backward()
        for a, b in zip(plain.parameters(), fused.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    with pytest.warns(FinerWarning, match="positional arguments"):
        assert F.fuse(net(functools.partial(A.sine, 30.0)), compile=False) == 1

    class Unhashable:  # any callable will do as an activation; one that cannot be a dict key is left alone
        __hash__ = None

        def __call__(self, z):
            return torch.sin(z)

    assert F.fuse(net(Unhashable()), compile=False) == 1
