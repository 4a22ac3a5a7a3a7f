"""Each activation against an independent NumPy reference; FINER's gradient in both modes."""

import numpy as np
import pytest
import torch

from finer.nn import activations as A

Z = np.linspace(-2.5, 2.5, 101)


def _t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


@pytest.mark.parametrize(
    "fn, ref",
    [
        (lambda z: A.sine(z, omega=30.0), lambda z: np.sin(30 * z)),
        (lambda z: A.finer(z, omega=30.0), lambda z: np.sin(30 * (np.abs(z) + 1) * z)),
        (lambda z: A.finer(z, omega=1.0, detach=False), lambda z: np.sin((np.abs(z) + 1) * z)),
        (lambda z: A.gauss(z, scale=3.0), lambda z: np.exp(-((3 * z) ** 2))),
        (lambda z: A.relu(z), lambda z: np.maximum(z, 0)),
        (lambda z: A.gauss_finer(z, omega=10.0, scale=3.0),
         lambda z: np.exp(-(3 * np.sin(10 * (np.abs(z) + 1) * z)) ** 2)),
    ],
)
def test_real_activations_match_numpy(fn, ref):
    np.testing.assert_allclose(fn(_t(Z)).numpy(), ref(Z), rtol=1e-10, atol=1e-12)


def test_gabor_matches_numpy_on_real_and_complex_input():
    ref = lambda z: np.exp(1j * 20 * z - np.abs(10 * z) ** 2)  # noqa: E731
    np.testing.assert_allclose(A.gabor(_t(Z), omega=20.0, scale=10.0).numpy(), ref(Z), rtol=1e-10, atol=1e-12)
    zc = Z * 0.1 + 1j * Z[::-1] * 0.05
    out = A.gabor(torch.tensor(zc, dtype=torch.complex128), omega=20.0, scale=10.0).numpy()
    np.testing.assert_allclose(out, ref(zc), rtol=1e-10, atol=1e-12)


def test_wire_finer_complex_matches_numpy():
    zc = Z * 0.3 - 1j * Z * 0.2
    warped = zc.real * (np.abs(zc.real) + 1) + 1j * zc.imag * (np.abs(zc.imag) + 1)
    u = np.sin(5 * warped)
    ref = np.exp(1j * 4 * u - np.abs(2 * u) ** 2)
    out = A.gabor_finer(torch.tensor(zc, dtype=torch.complex128), omega=5.0, omega_w=4.0, scale=2.0).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("omega", [1.0, 30.0])
def test_finer_gradient_detached_and_true(omega):
    """detach=True gives omega(|z|+1)cos(.) (official code); detach=False the true Eq. (2) derivative."""
    phase = omega * (np.abs(Z) + 1) * Z
    expected = {
        True: omega * (np.abs(Z) + 1) * np.cos(phase),
        False: omega * (2 * np.abs(Z) + 1) * np.cos(phase),
    }
    for detach, grad_ref in expected.items():
        z = _t(Z).requires_grad_(True)
        A.finer(z, omega=omega, detach=detach).sum().backward()
        np.testing.assert_allclose(z.grad.numpy(), grad_ref, rtol=1e-9, atol=1e-9)


def test_true_gradient_agrees_with_finite_differences():
    z = _t(np.array([-1.3, -0.2, 0.4, 2.1])).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: A.finer(x, omega=3.0, detach=False), (z,))


def test_activation_table_pairs_each_function_with_a_known_init():
    from finer.nn.init import WEIGHT_INITS

    assert {"sine", "finer", "gauss", "gabor", "relu", "gauss_finer", "gabor_finer"} <= set(A.ACTIVATIONS)
    for name, entry in A.ACTIVATIONS.items():
        assert entry.init in WEIGHT_INITS, name
        out = entry.fn(torch.zeros(3, dtype=torch.float32))
        assert out.is_complex() == entry.complex_output, name


def test_learnable_activation_functions_match_numpy():
    a, f, p = np.array([0.5, -0.2]), np.array([3.0, 11.0]), np.array([0.1, -1.0])
    ref = np.maximum(Z, 0) + np.sin(Z[:, None] * f + p) @ a
    out = A.metasin(_t(Z), _t(a), _t(f), _t(p)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    z2 = np.stack([Z, Z * 0.5], axis=1)
    omega = np.array([10.0, 100.0])
    np.testing.assert_allclose(A.sine_composition(_t(z2), _t(omega)).numpy(), z2 + np.sin(omega * z2), atol=1e-12)
    amp = np.array([0.3, 2.0])
    np.testing.assert_allclose(A.modulated_sine(_t(z2), _t(amp), 30.0).numpy(), amp * np.sin(30 * z2), atol=1e-12)


def test_sine_composition_frequencies_are_log_spaced():
    from finer.nn.learnable import SineComposition

    omega = SineComposition(5, 10.0, 100.0).omega
    np.testing.assert_allclose(omega.numpy(), np.logspace(1, 2, 5), rtol=1e-6)


def test_mpa_amplitudes_come_from_one_shared_modulator():
    from finer.models import build_model

    net = build_model("mpa", 2, 1, width=8, hidden_layers=2, seed=0)
    mods = {id(layer.activation.modulator) for layer in net.layers[:-1]}
    assert len(mods) == 1
    net(torch.rand(5, 2)).sum().backward()
    assert net.layers[0].activation.modulator.latent.grad.abs().sum() > 0  # the latent is learned
