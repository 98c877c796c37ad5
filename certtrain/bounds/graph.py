"""Turn an nn.Sequential into the list of bound ops the engine propagates through."""

from __future__ import annotations

import torch
from torch import nn

from certtrain.bounds.ops import (
    AvgPoolOp,
    ConvOp,
    FlattenOp,
    GroupSortOp,
    LinearOp,
    MaxPoolOp,
    ReLUOp,
    ScaleShiftOp,
)
from certtrain.layer_rules import rule, rule_of
from certtrain.layers import GroupSort, Normalize

SUPPORTED = (
    "Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d, AvgPool2d, MaxPool2d, Identity, Dropout, Normalize, GroupSort"
)


class UnsupportedLayerError(ValueError):
    """The engine has no sound rule for a layer."""


def flatten_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of an nn.Sequential in order, nested Sequentials flattened."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(
            f"the bound engine takes an nn.Sequential, got {type(model).__name__}; wrap the layers in nn.Sequential"
        )
    layers = []
    for child in model:
        layers.extend(flatten_layers(child) if isinstance(child, nn.Sequential) else [child])
    return layers


def _unsupported(index, layer, why=""):
    raise UnsupportedLayerError(
        f"layer {index} ({type(layer).__name__}) cannot be bounded{': ' + why if why else ''}. Supported: {SUPPORTED}"
    )


@rule("bounds", nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm_op(index, layer, layer_input):
    """BatchNorm as a fixed per-channel affine map.

    Eval mode: running statistics. Training mode: the statistics of the clean batch (Shi et al.
    2021), so every point of the box is normalised like the clean input it perturbs.
    """
    if layer.training or not layer.track_running_stats:
        if layer_input is None:
            raise ValueError(
                f"layer {index} ({type(layer).__name__}) is in training mode: pass the clean batch as x= "
                "so its statistics can be used, or call model.eval()"
            )
        dims = [0] + list(range(2, layer_input.dim()))
        mean = layer_input.mean(dims)
        var = layer_input.var(dims, unbiased=False)
    else:
        mean, var = layer.running_mean, layer.running_var
    scale = torch.rsqrt(var + layer.eps)
    if layer.affine:
        scale = scale * layer.weight
        shift = layer.bias - mean * scale
    else:
        shift = -mean * scale
    return ScaleShiftOp(scale, shift)


@rule("bounds", nn.Linear)
def _linear_op(index, layer, layer_input):
    return LinearOp(layer.weight, layer.bias)


@rule("bounds", nn.Conv2d)
def _conv_op(index, layer, layer_input):
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        _unsupported(index, layer, "only numeric zero padding is supported")
    return ConvOp(layer)


@rule("bounds", nn.ReLU)
def _relu_op(index, layer, layer_input):
    return ReLUOp()


@rule("bounds", nn.Flatten)
def _flatten_op(index, layer, layer_input):
    if layer.start_dim != 1 or layer.end_dim != -1:
        _unsupported(index, layer, "only Flatten(start_dim=1, end_dim=-1) is supported")
    return FlattenOp()


@rule("bounds", Normalize)
def _normalize_op(index, layer, layer_input):
    return ScaleShiftOp(1.0 / layer.std, -layer.mean / layer.std)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


@rule("bounds", nn.AvgPool2d)
def _avgpool_op(index, layer, layer_input):
    if _pair(layer.padding) != (0, 0) or layer.ceil_mode or layer.divisor_override is not None:
        _unsupported(index, layer, "only AvgPool2d without padding, ceil_mode or divisor_override")
    return AvgPoolOp(_pair(layer.kernel_size), _pair(layer.stride))


@rule("bounds", nn.MaxPool2d)
def _maxpool_op(index, layer, layer_input):
    if _pair(layer.dilation) != (1, 1) or layer.ceil_mode or layer.return_indices:
        _unsupported(index, layer, "only MaxPool2d with dilation 1, ceil_mode=False, return_indices=False")
    stride = layer.stride if layer.stride is not None else layer.kernel_size
    return MaxPoolOp(_pair(layer.kernel_size), _pair(stride), _pair(layer.padding))


@rule("bounds", GroupSort)
def _groupsort_op(index, layer, layer_input):
    return GroupSortOp(layer.group_size)


@rule("bounds", nn.Identity, nn.Dropout)
def _identity_op(index, layer, layer_input):
    """No op: the layer passes its input through (Dropout only in eval mode, or with p = 0)."""
    if isinstance(layer, nn.Dropout) and layer.training and layer.p > 0:
        raise UnsupportedLayerError(
            f"layer {index} (Dropout) is in training mode, where the network is random: "
            "call model.eval() before bounding, or drop the Dropout layer"
        )
    return None


def _make_op(index, layer, layer_input):
    """The layer's op (None for a pass-through layer), by the rule certtrain.layer_rules holds."""
    make = rule_of("bounds", layer)
    if make is None:
        _unsupported(index, layer)
    return make(index, layer, layer_input)


def build_ops(model: nn.Module, x: torch.Tensor | None, sample: torch.Tensor):
    """Ops for `model`, with each op's `in_shape` set.

    x: the clean batch (needed for BatchNorm in training mode), or None.
    sample: any input of the right shape, used only to infer shapes.
    Returns (ops, layer_index, out_shape): layer_index[k] is the position in
    flatten_layers(model) of the layer behind ops[k]; out_shape is the output shape (no batch).
    """
    layers = list(enumerate(flatten_layers(model)))
    ops, op_layers = [], []
    clean = x
    probe = sample[:1]
    for index, layer in layers:
        op = _make_op(index, layer, clean)
        if op is None:
            continue
        op.in_shape = tuple(probe.shape[1:])
        with torch.no_grad():
            probe = op.forward(probe)
        if clean is not None and _needs_clean_input(layers, index):
            clean = op.forward(clean)
        ops.append(op)
        op_layers.append(index)
    if not ops:
        raise UnsupportedLayerError("the model has no layer the bound engine can propagate through")
    return ops, op_layers, tuple(probe.shape[1:])


def _needs_clean_input(layers, index) -> bool:
    """Whether a later layer is a BatchNorm in training mode (then the clean pass must go on)."""
    return any(
        isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and (layer.training or not layer.track_running_stats)
        for i, layer in layers
        if i > index
    )
