"""Activation statistics at initialisation (supplement Fig. 5) and local frequencies.

For a FINER layer ``y = sin(omega (|z|+1) z)`` the phase ``omega (|z|+1) z`` changes with ``z``
at rate ``omega (2|z|+1)`` (the local frequency in z). With respect to the input coordinates
the rate is ``omega (2|z|+1) * |grad_x z|``, which compounds across layers; both are reported.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import jvp

from finer.errors import ConfigError
from finer.nn import activations as A


def layer_statistics(model: nn.Module, coords: Tensor, layers: int = 2) -> list[dict[str, Tensor]]:
    """Per activated layer (the first ``layers``, which must be FINER layers; the ones after them may be
    anything) of a coordinate MLP: pre-activations ``z``, activations ``y``, the local frequency in z
    ``omega (2|z|+1)`` and the frequency w.r.t. the input ``omega (2|z|+1) |grad_x z|`` (flattened over
    points and units). Fused layers are measured on an unfused copy."""
    from finer.analysis.ntk import plain_copy
    from finer.nn.fused import kernel_call

    model = plain_copy(model)
    activated = list(model.layers)[:-1]  # (the last layer is linear)
    if not isinstance(layers, int) or not 1 <= layers <= len(activated):
        raise ConfigError(f"layers must be 1 to {len(activated)} (the network's activated layers), got {layers!r}")
    omegas = []
    for i, layer in enumerate(activated[:layers]):
        call = kernel_call(layer.activation)
        if call is None or call[0] is not A.finer:
            raise ConfigError(f"layer_statistics measures FINER's local frequency omega(2|z|+1); layer {i + 1} of this "
                              f"{getattr(model, 'method', type(model).__name__)!r} network has another activation "
                              f"(measure fewer layers, up to the last FINER one from the first)")
        omegas.append(call[1]["omega"])
    stats = []
    h = model.encoding(coords)
    dh = [torch.zeros_like(h).index_fill_(-1, torch.tensor([d]), 1.0) for d in range(h.shape[-1])]
    for layer, omega in zip(activated[:layers], omegas):
        # z and its directional derivatives along each input axis (forward mode)
        pairs = [jvp(layer.linear, (h,), (t,)) for t in dh]
        z = pairs[0][0]
        grad_norm = torch.sqrt(sum(dz**2 for _, dz in pairs))
        rate = omega * (2 * z.abs() + 1)
        y = layer.activation(z)
        stats.append({"z": z.detach().flatten(), "y": y.detach().flatten(), "freq_z": rate.detach().flatten(),
                      "freq_x": (rate * grad_norm).detach().flatten()})
        # the function's own derivative, carried to the next layer: not a jvp through the activation,
        # which (scale_grad off, as in the official code) detaches |z|+1 and gives omega(|z|+1) cos(...)
        slope = torch.cos(omega * (z.abs() + 1) * z) * rate
        h, dh = y, [slope * dz for _, dz in pairs]
    return stats
