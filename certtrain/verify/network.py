"""A feed-forward network as a list of exact float64 steps that the MILP encoding consumes.

Every tensor is handled flattened in C order, so an affine layer is one sparse matrix
(out_features x in_features) and a bias; a convolution becomes its sparse Toeplitz matrix.
The step list is aligned with `flatten_layers(model)`: step i reads the input of layer i, so the
bounds the engine returns for layer i are the bounds of step i's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from certtrain.bounds import flatten_layers
from certtrain.layer_rules import rule, rule_of
from certtrain.layers import Normalize

RESHAPES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Unflatten)


class UnsupportedNetworkError(ValueError):
    """The network holds a layer the MILP encoding has no exact formulation for."""


@dataclass
class Affine:
    """y = W x + b on flattened tensors."""

    weight: sp.csr_matrix
    bias: np.ndarray


@dataclass
class Relu:
    pass


@dataclass
class MaxPool:
    """windows[o] lists the flat input indices that output o takes the maximum of (-1 = padding)."""

    windows: np.ndarray


@dataclass
class Reshape:
    pass


@dataclass
class Step:
    layer: nn.Module
    op: object
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _unfold_indices(shape, kernel_size, stride, padding, dilation) -> np.ndarray:
    """(channels * kh * kw, positions) flat input indices of each sliding window, -1 for padding."""
    channels, height, width = shape
    index = torch.arange(1, channels * height * width + 1, dtype=torch.float64).reshape(1, channels, height, width)
    cols = F.unfold(index, kernel_size, dilation=dilation, padding=padding, stride=stride)[0]
    return cols.numpy().astype(np.int64) - 1


def _conv_matrix(conv: nn.Conv2d, in_shape) -> Affine:
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise UnsupportedNetworkError(
            f"{conv}: only groups=1, zero padding given as integers is encoded; rebuild the layer that way"
        )
    cols = _unfold_indices(in_shape, conv.kernel_size, conv.stride, conv.padding, conv.dilation)  # (P, L)
    weight = conv.weight.detach().double().reshape(conv.out_channels, -1).numpy()  # (Cout, P)
    positions = cols.shape[1]
    rows = np.arange(conv.out_channels)[:, None, None] * positions + np.arange(positions)[None, None, :]
    rows = np.broadcast_to(rows, (conv.out_channels, cols.shape[0], positions))
    cols_b = np.broadcast_to(cols[None], rows.shape)
    vals = np.broadcast_to(weight[:, :, None], rows.shape)
    keep = (cols_b >= 0) & (vals != 0)
    matrix = sp.csr_matrix(
        (vals[keep], (rows[keep], cols_b[keep])), shape=(conv.out_channels * positions, int(np.prod(in_shape)))
    )
    bias = np.zeros(conv.out_channels) if conv.bias is None else conv.bias.detach().double().numpy()
    return Affine(matrix, np.repeat(bias, positions))


def _pool_windows(layer, in_shape, dilation=1) -> np.ndarray:
    """(C * L, kh * kw) flat input indices of each pooling window, -1 for padding."""
    channels, height, width = in_shape
    stride = layer.stride if layer.stride is not None else layer.kernel_size
    per_channel = _unfold_indices((1, height, width), layer.kernel_size, stride, layer.padding, dilation)
    offsets = np.arange(channels)[:, None, None] * height * width
    windows = np.where(per_channel[None] >= 0, per_channel[None] + offsets, -1)  # (C, K, L)
    return windows.transpose(0, 2, 1).reshape(-1, per_channel.shape[0])


def _avgpool_matrix(layer: nn.AvgPool2d, in_shape) -> Affine:
    if layer.ceil_mode or not layer.count_include_pad or layer.divisor_override:
        raise UnsupportedNetworkError(f"{layer}: only ceil_mode=False, count_include_pad=True is encoded")
    windows = _pool_windows(layer, in_shape)
    rows = np.repeat(np.arange(len(windows)), windows.shape[1]).reshape(windows.shape)
    keep = windows >= 0
    matrix = sp.csr_matrix(
        (np.full(keep.sum(), 1.0 / windows.shape[1]), (rows[keep], windows[keep])),
        shape=(len(windows), int(np.prod(in_shape))),
    )
    return Affine(matrix, np.zeros(len(windows)))


def _diagonal(scale: torch.Tensor, shift: torch.Tensor, in_shape) -> Affine:
    """Per-channel scale and shift broadcast over the (C, ...) input."""
    numel = int(np.prod(in_shape))
    per_channel = numel // in_shape[0]
    scale = scale.detach().double().flatten().numpy()
    shift = shift.detach().double().flatten().numpy()
    if scale.size == 1:
        scale = np.full(in_shape[0], scale[0])
    if shift.size == 1:
        shift = np.full(in_shape[0], shift[0])
    return Affine(sp.diags(np.repeat(scale, per_channel)).tocsr(), np.repeat(shift, per_channel))


@rule("milp", nn.Linear)
def _linear_step(layer: nn.Linear, in_shape) -> Affine:
    bias = np.zeros(layer.out_features) if layer.bias is None else layer.bias.detach().double().numpy()
    return Affine(sp.csr_matrix(layer.weight.detach().double().numpy()), bias)


rule("milp", nn.Conv2d)(_conv_matrix)
rule("milp", nn.AvgPool2d)(_avgpool_matrix)


@rule("milp", nn.ReLU)
def _relu_step(layer, in_shape) -> Relu:
    return Relu()


@rule("milp", Normalize)
def _normalize_step(layer: Normalize, in_shape) -> Affine:
    scale = 1.0 / layer.std
    return _diagonal(scale, -layer.mean * scale, in_shape)


@rule("milp", nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm_step(layer, in_shape) -> Affine:
    if layer.training:
        raise UnsupportedNetworkError(f"{layer}: put the model in eval mode (model.eval()) before verifying")
    scale = (layer.weight if layer.affine else 1.0) / torch.sqrt(layer.running_var + layer.eps)
    bias = layer.bias if layer.affine else torch.zeros_like(scale)
    return _diagonal(scale, bias - layer.running_mean * scale, in_shape)


@rule("milp", nn.MaxPool2d)
def _maxpool_step(layer: nn.MaxPool2d, in_shape) -> MaxPool:
    if layer.ceil_mode or layer.return_indices:
        raise UnsupportedNetworkError(f"{layer}: only ceil_mode=False without return_indices is encoded")
    return MaxPool(_pool_windows(layer, in_shape, layer.dilation))


@rule("milp", *RESHAPES)
def _reshape_step(layer, in_shape) -> Reshape:
    return Reshape()


def _make_op(layer: nn.Module, in_shape):
    """The layer's step, by the rule certtrain.layer_rules holds."""
    make = rule_of("milp", layer)
    if make is None:
        raise UnsupportedNetworkError(
            f"layer {type(layer).__name__} ({layer}) has no MILP encoding; supported: Linear, Conv2d, ReLU, "
            "MaxPool2d, AvgPool2d, BatchNorm (eval), Normalize, Flatten, Unflatten, Identity, Dropout"
        )
    return make(layer, in_shape)


def network_steps(model: nn.Module, input_shape: tuple[int, ...]) -> list[Step]:
    """The model's layers as exact float64 steps; raises UnsupportedNetworkError naming a bad layer."""
    layers = flatten_layers(model)
    steps = []
    value = torch.zeros((1, *input_shape), dtype=model_dtype(model))
    with torch.no_grad():
        for layer in layers:
            out = layer(value)
            in_shape = tuple(value.shape[1:])
            steps.append(Step(layer, _make_op(layer, in_shape), in_shape, tuple(out.shape[1:])))
            value = out
    return steps


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model computes in (float32 when it has no parameters)."""
    return next((p.dtype for p in model.parameters()), torch.float32)
