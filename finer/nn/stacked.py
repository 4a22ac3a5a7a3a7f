"""K coordinate MLPs of one architecture trained as one: batched matrix multiplications.

:class:`StackedMLP` stacks the weights of ``K`` :class:`~finer.nn.mlp.CoordinateMLP` of the same
method and shape into ``(K, out, in)`` parameters and evaluates them with batched products; the
activations are elementwise, so each layer's own activation applies unchanged (a layer fused by
:func:`finer.nn.fused.fuse` keeps its fused pass: batched product, then bias and activation in one
pass, the bias gradient summed in backward's pass; otherwise ``baddbmm`` then the activation).
Optimising the sum of the K per-signal losses with Adam is optimising each network on its own
signal: Adam's update is elementwise, and the gradient of the sum with respect to network k's
weights is the gradient of loss k. :meth:`StackedMLP.unstack` writes the trained weights back
into the K original models.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor, nn

from finer.errors import FinerError
from finer.nn.layers import affine, deepcopy_sharing, keeping_complex, plain_activation
from finer.nn.mlp import CoordinateMLP, check_coordinates


def stack_problem(model) -> str | None:
    """Why ``model`` cannot be stacked (``None`` if it can): only coordinate MLPs whose parameters
    are all in their linear layers."""
    if not isinstance(model, CoordinateMLP):
        return f"only coordinate MLPs can be stacked, got {type(model).__name__}"
    own = sum(p.numel() for layer in model.layers for p in layer.linear.parameters())
    if own != sum(p.numel() for p in model.parameters()):
        return (f"method {getattr(model, 'method', '?')!r} has learnable activations or encodings; "
                "only methods whose parameters are all in linear layers can be fitted in batches")
    return None


def same_activation(a, b) -> bool:
    """Whether two layers' activations compute the same function: the same function with the same
    options (fused or not), or modules of one type with equal buffers."""
    a, b = plain_activation(a), plain_activation(b)
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return a.func is b.func and a.args == b.args and a.keywords == b.keywords
    if isinstance(a, nn.Module) and isinstance(b, nn.Module):
        mine, theirs = dict(a.named_buffers()), dict(b.named_buffers())
        return (type(a) is type(b) and mine.keys() == theirs.keys()
                and all(mine[k].shape == theirs[k].shape and torch.equal(mine[k].cpu(), theirs[k].cpu())
                        for k in mine))
    return a is b


def _described(activation) -> str:
    activation = plain_activation(activation)
    if isinstance(activation, functools.partial):
        options = ", ".join(f"{k}={v}" for k, v in activation.keywords.items())
        return f"{activation.func.__name__}({options})"
    return getattr(activation, "__name__", type(activation).__name__)


class StackedMLP(nn.Module):
    """``coords (N, in)`` or ``(K, N, in)`` -> ``(K, N, out)``: K networks, one call."""

    def __init__(self, models: Sequence[CoordinateMLP]):
        super().__init__()
        if not models:
            raise FinerError("no models to stack")
        first = models[0]
        for m in models:
            problem = stack_problem(m)
            if problem:
                raise FinerError(problem)
            shapes = [tuple(layer.linear.weight.shape) for layer in m.layers]
            if shapes != [tuple(layer.linear.weight.shape) for layer in first.layers]:
                raise FinerError("the models to stack differ in shape")
            for i, (mine, theirs) in enumerate(zip(m.layers, first.layers)):  # the stack runs the first's
                if not same_activation(mine.activation, theirs.activation):
                    raise FinerError(f"the models to stack differ in the activation of layer {i + 1} "
                                     f"({_described(theirs.activation)} and {_described(mine.activation)}): "
                                     "only networks of one method and the same options can be stacked")
        self.models = list(models)
        self.count = len(models)
        self.in_features, self.out_features = first.in_features, first.out_features
        self.encoding = first.encoding
        self.activations = [layer.activation for layer in first.layers]
        # activations that are modules (SC-MLP's, with its frequencies as a buffer) move with the stack
        self.activation_modules = nn.ModuleList(a for a in self.activations if isinstance(a, nn.Module))
        self.fused_forwards = [layer.fused_forward for layer in first.layers]  # set by finer.nn.fused.fuse
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([m.layers[i].linear.weight.detach() for m in models]))
             for i in range(len(first.layers))])
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([m.layers[i].linear.bias.detach() for m in models])[:, None, :])
             for i in range(len(first.layers))])

    def __getstate__(self):
        """Pickled as the plain stack, as :class:`~finer.nn.layers.Layer` is."""
        state = self.__dict__.copy()
        state["activations"] = [plain_activation(a) for a in state["activations"]]
        state["fused_forwards"] = [None] * len(state["fused_forwards"])
        return state

    def __deepcopy__(self, memo):
        """``copy.deepcopy``: a copy as it is, fused or not, as Layer's."""
        twin = deepcopy_sharing(self, memo, ("fused_forwards",))
        twin.fused_forwards = list(self.fused_forwards)  # its own list (of the same shared forwards)
        return twin

    def _apply(self, fn, recurse=True):
        return super()._apply(keeping_complex(fn), recurse)  # as Layer's

    def forward(self, coords: Tensor) -> Tensor:
        check_coordinates(coords, self.in_features)
        h = self.encoding(coords)
        if h.dim() == 2:
            h = h.expand(self.count, *h.shape)
        elif h.dim() != 3 or h.shape[0] != self.count:
            raise FinerError(f"a stack of {self.count} networks takes coordinates (N, in) shared by all, or "
                             f"(K={self.count}, N, in) one set a network; got {tuple(coords.shape)}")
        for weight, bias, activation, fused in zip(self.weights, self.biases, self.activations, self.fused_forwards):
            if fused is not None:  # batched products; bias and activation in one pass (and in backward)
                h = fused(h, weight, bias)
                continue
            if weight.is_complex() and not h.is_complex():
                h = h.to(weight.dtype)
            h = activation(affine(h, weight, bias))
        return h.real if h.is_complex() else h

    @torch.no_grad()
    def unstack(self) -> list[CoordinateMLP]:
        """Copy the trained weights back into the K models and return them."""
        for k, model in enumerate(self.models):
            for i, layer in enumerate(model.layers):
                layer.linear.weight.copy_(self.weights[i][k])
                layer.linear.bias.copy_(self.biases[i][k, 0])
        return self.models
