"""Empirical NTK: equals J J^T, is symmetric PSD; Eq. (5) by Monte Carlo matches it."""

import pytest
import torch

from finer.analysis import ntk as N
from finer.models import build_model, count_parameters


@pytest.mark.parametrize("name", ["finer", "siren", "gauss", "pemlp"])
def test_empirical_ntk_equals_explicit_jacobian_product(name):
    net = build_model(name, 1, 1, width=12, hidden_layers=1, seed=0).double()
    x = torch.linspace(-1, 1, 9, dtype=torch.float64)[:, None]
    J = N.explicit_jacobian(net, x)
    torch.testing.assert_close(N.empirical_ntk(net, x, chunk=4), J @ J.T, rtol=1e-10, atol=1e-10)


def test_the_kernel_is_computed_in_float64_where_float32_rounding_would_make_eigenvalues():
    """SIREN's small eigenvalues fall far below float32's rounding of the kernel: a float32 kernel shows
    dozens above 1e-5 (and negative ones as large), the float64 one what per-point backward passes in
    float64 give."""
    net = N.shallow_network("siren", None, width=256)
    x = N.ntk_grid(128)
    J = N.explicit_jacobian(net.double(), x.double())
    reference = N.count_large(N.eigenvalues(J @ J.T), 1e-5)
    K = N.empirical_ntk(net, x)
    assert K.dtype == torch.float64 and N.count_large(N.eigenvalues(K), 1e-5) == reference
    rough = N.eigenvalues(N.empirical_ntk(net.float(), x, dtype=None))
    assert N.count_large(rough, 1e-5) > reference + 10 and rough.min() < -1e-5
    resolved = N.resolved(N.eigenvalues(K))
    assert resolved.min() > 0 and len(resolved) >= reference


def test_complex_weights_count_as_two_real_parameters():
    """WIRE's kernel sums over the real and imaginary part of every complex weight: it equals J J^T of the
    Jacobian by backward passes, whose columns for one complex weight match finite differences."""
    net = build_model("wire", 1, 1, width=8, hidden_layers=1, seed=0).double()
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)[:, None]
    K = N.empirical_ntk(net, x)
    J = N.explicit_jacobian(net, x)
    assert J.shape == (6, count_parameters(net)) and K.dtype == torch.float64
    torch.testing.assert_close(K, J @ J.T, rtol=1e-10, atol=1e-10)
    w = net.layers[1].linear.weight
    column = sum(p.numel() * (2 if p.is_complex() else 1) for p in (net.layers[0].linear.weight,
                                                                   net.layers[0].linear.bias))
    eps = 1e-3  # finite differences along the real, then the imaginary part of w[0, 0]
    for part, delta in enumerate((eps, 1j * eps)):
        with torch.no_grad():
            w[0, 0] += delta
            plus = net(x)
            w[0, 0] -= 2 * delta
            minus = net(x)
            w[0, 0] += delta
        torch.testing.assert_close(J[:, column + part], ((plus - minus) / (2 * eps)).reshape(-1), rtol=1e-4, atol=1e-6)


def test_kernel_is_symmetric_positive_semidefinite():
    net = N.shallow_network("finer", 10.0, width=64)
    K = N.empirical_ntk(net, N.ntk_grid(128)).double()
    torch.testing.assert_close(K, K.T)
    assert N.eigenvalues(K).min() > -1e-6 * N.eigenvalues(K).max()


def test_monte_carlo_eq5_matches_the_averaged_empirical_kernel():
    """Both estimate E[(x x' + 1) sigma'(w x + b) sigma'(w x' + b)]: agreement within sampling error."""
    x = torch.linspace(0, 1, 17)[:-1, None]
    for k in (1.0, 10.0):
        emp = torch.stack([N.empirical_ntk(N.first_layer_kernel_net(k, 4096, s), x, params="first")
                           for s in range(2)]).mean(0).double()
        mc, se = N.eq5_monte_carlo(x[:, 0], k=k, samples=60_000, generator=torch.Generator().manual_seed(0))
        rel = float((emp - mc).norm() / mc.norm())
        # sampling error: the empirical side has 8192 neurons, the MC side 60k draws
        expected = float(se.norm() / mc.norm()) * (60_000 / 8192) ** 0.5
        assert rel < 4 * expected + 0.01, (k, rel, expected)


def test_diagonal_dominance_grows_with_bias_range():
    """The supplement's claim, checked on its own setting (smaller grid for speed)."""
    x = N.ntk_grid(256)
    values = [N.diag_dominance(N.empirical_ntk(N.shallow_network("finer", k), x)) for k in (1.0, 5.0, 20.0)]
    assert values[0] < values[1] < values[2]


def test_measures_on_known_matrices():
    assert N.diag_dominance(torch.eye(4) * 3 + 1) == pytest.approx(4.0)
    assert N.count_large(N.eigenvalues(torch.diag(torch.tensor([5.0, 2.0, 0.5]))), 1.0) == 2


def test_the_ntk_of_a_fused_network_is_that_of_the_plain_one():
    import finer
    from finer.nn.fused import fuse

    net = finer.build_model("finer", 1, 1, width=8, hidden_layers=1, seed=0)
    x = N.ntk_grid(16)
    plain = N.empirical_ntk(net, x)
    assert fuse(net, compile=False) > 0
    torch.testing.assert_close(N.empirical_ntk(net, x), plain)
    with pytest.raises(finer.ConfigError, match="chunk must be a positive integer"):
        N.empirical_ntk(net, x, chunk=0)
    with pytest.raises(finer.ConfigError, match=r"x is a tensor of points \(N, in_features\), got shape \(2, 8, 1\)"):
        N.empirical_ntk(net, x.reshape(2, 8, 1))  # (a grid: each row's kernels would be summed as outputs)


def test_the_shallow_networks_start_their_biases_as_the_official_notebook_does():
    """Zero for SIREN, PE-MLP and FINER without a bias range (haiku's default there); U(-k, k) with one; the
    other methods (WIRE's is normal in the notebook) keep their own initialisation."""
    for model in ("siren", "pemlp", "finer"):
        assert not N.shallow_network(model, None, width=16).layers[0].linear.bias.any()
    bias = N.shallow_network("finer", 5.0, width=256).layers[0].linear.bias.detach()
    assert 4.0 < float(bias.abs().max()) <= 5.0
    assert N.shallow_network("wire", None, width=16).layers[0].linear.bias.any()
