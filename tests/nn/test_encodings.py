import numpy as np
import torch

from finer.nn.encodings import IdentityEncoding, PositionalEncoding


def test_positional_encoding_matches_numpy_layout():
    x = np.random.default_rng(0).uniform(-1, 1, (7, 2))
    pe = PositionalEncoding(2, n_freqs=4)
    parts = [x]
    for j in range(4):
        parts += [np.sin(2.0**j * x), np.cos(2.0**j * x)]
    ref = np.concatenate(parts, axis=-1)
    out = pe(torch.tensor(x, dtype=torch.float32)).numpy()
    assert pe.out_features == ref.shape[1] == 2 * (1 + 2 * 4)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_identity_reports_size():
    enc = IdentityEncoding(3)
    assert enc.out_features == 3
    x = torch.randn(4, 3)
    assert enc(x) is x
