"""Initialisers: bounds and the variance of a uniform draw, b^2 / 3."""

import math

import pytest
import torch

from finer.nn import init


def _check_uniform(t, bound):
    values = torch.view_as_real(t).flatten() if t.is_complex() else t.flatten()
    assert values.abs().max() <= bound + 1e-7
    assert values.abs().max() > 0.95 * bound  # the range is used, not a narrower one
    assert values.var().item() == pytest.approx(bound**2 / 3, rel=0.05)
    assert abs(values.mean().item()) < 0.02 * bound


def test_siren_first_and_hidden_bounds():
    g = torch.Generator().manual_seed(0)
    w = torch.empty(20000, 2)
    _check_uniform(init.siren_weight(w, omega=30.0, is_first=True, generator=g), 1 / 2)
    w = torch.empty(400, 256)
    _check_uniform(init.siren_weight(w, omega=30.0, is_first=False, generator=g), math.sqrt(6 / 256) / 30)


def test_torch_default_and_bias_range():
    g = torch.Generator().manual_seed(1)
    _check_uniform(init.torch_weight(torch.empty(300, 128), generator=g), 1 / math.sqrt(128))
    _check_uniform(init.torch_bias(torch.empty(50000), 2, generator=g), 1 / math.sqrt(2))
    _check_uniform(init.range_bias(torch.empty(50000), 20.0, generator=g), 20.0)


def test_complex_weights_draw_both_parts():
    g = torch.Generator().manual_seed(2)
    w = init.torch_weight(torch.empty(300, 181, dtype=torch.complex64), generator=g)
    _check_uniform(w, 1 / math.sqrt(181))
    assert torch.corrcoef(torch.stack([w.real.flatten(), w.imag.flatten()]))[0, 1].abs() < 0.02


def test_same_seed_same_draw():
    a = init.uniform_(torch.empty(10), 1.0, torch.Generator().manual_seed(5))
    b = init.uniform_(torch.empty(10), 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
