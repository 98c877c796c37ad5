"""Read a feed-forward ONNX graph into certtrain layers (an nn.Sequential the verifier encodes).

Mapped: Gemm, MatMul (+ Add of a constant) -> Linear; Conv -> Conv2d; Relu; MaxPool; Flatten
and Reshape to (batch, features) -> Flatten; Sub / Div / Mul / Add by constants (input
normalisation) -> Normalize. Nodes whose inputs are all constants (Constant, Reciprocal,
Reshape of initializers, ... as the TorchScript exporter writes them) are evaluated. Anything
else raises UnsupportedOnnxError naming the node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from certtrain.layers import Normalize

CONSTANT_OPS = {
    "Identity": lambda a: a[0],
    "Reciprocal": lambda a: 1.0 / a[0],
    "Neg": lambda a: -a[0],
    "Sqrt": lambda a: np.sqrt(a[0]),
    "Mul": lambda a: a[0] * a[1],
    "Div": lambda a: a[0] / a[1],
    "Add": lambda a: a[0] + a[1],
    "Sub": lambda a: a[0] - a[1],
    "Reshape": lambda a: a[0].reshape(a[1].astype(np.int64)),
    "Unsqueeze": lambda a: np.expand_dims(a[0], tuple(int(i) for i in a[1])),
    "Cast": lambda a: a[0],
}
ELEMENTWISE = ("Add", "Sub", "Mul", "Div")


class UnsupportedOnnxError(ValueError):
    """The ONNX graph holds a node or a pattern the importer cannot map exactly."""


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _name(node) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _symmetric_pads(node, pads, dims=2):
    pads = list(pads or [0] * (2 * dims))
    if pads[:dims] != pads[dims:]:
        raise UnsupportedOnnxError(f"{_name(node)}: asymmetric pads {pads} are not supported")
    if _attrs(node).get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOnnxError(f"{_name(node)}: auto_pad is not supported; export with explicit pads")
    return tuple(pads[:dims])


class _Builder:
    def __init__(self):
        self.layers: list[nn.Module] = []
        self.scale, self.shift = None, None  # pending elementwise affine (normalisation)
        self.open_bias = None  # the Linear of a MatMul whose bias may follow as an Add

    def flush(self):
        if self.scale is None:
            return
        scale, shift = np.broadcast_arrays(self.scale, self.shift)
        self.layers.append(Normalize(-shift / scale, 1.0 / scale))
        self.scale = self.shift = None

    def add(self, layer):
        self.flush()
        self.layers.append(layer)
        self.open_bias = None

    def elementwise(self, node, op, const, data_first):
        if not data_first and op in ("Sub", "Div"):
            raise UnsupportedOnnxError(f"{_name(node)}: the data must be the first operand of {op}")
        values = np.asarray(const, dtype=np.float64)
        wide = [axis for axis, size in enumerate(values.shape) if size != 1]
        if len(wide) > 1 or (wide and values.ndim >= 3 and wide[0] != values.ndim - 3):
            raise UnsupportedOnnxError(f"{_name(node)}: a constant of shape {values.shape} is not per-channel")
        values = values.reshape(-1)
        if op == "Add" and self.open_bias is not None:
            with torch.no_grad():
                self.open_bias.bias += torch.as_tensor(
                    np.broadcast_to(values, self.open_bias.bias.shape).copy(), dtype=torch.float32
                )
            self.open_bias = None
            return
        scale = np.ones(1) if self.scale is None else self.scale
        shift = np.zeros(1) if self.shift is None else self.shift
        if op == "Add":
            shift = shift + values
        elif op == "Sub":
            shift = shift - values
        elif op == "Mul":
            scale, shift = scale * values, shift * values
        else:
            scale, shift = scale / values, shift / values
        if np.any(np.broadcast_to(scale, np.broadcast(scale, shift).shape) <= 0):
            raise UnsupportedOnnxError(f"{_name(node)}: only normalisation with a positive scale is supported")
        self.scale, self.shift = scale, shift


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        layer.bias.copy_(
            torch.zeros(weight.shape[0]) if bias is None else torch.as_tensor(np.array(bias), dtype=torch.float32)
        )
    return layer


def _data_node(builder: _Builder, node, consts: dict, data: list[str]):
    op, attrs = node.op_type, _attrs(node)
    if op == "Gemm":
        if attrs.get("transA", 0):
            raise UnsupportedOnnxError(f"{_name(node)}: transA=1 is not supported")
        weight = consts[node.input[1]] * attrs.get("alpha", 1.0)
        weight = weight if attrs.get("transB", 0) else weight.T
        bias = consts[node.input[2]] * attrs.get("beta", 1.0) if len(node.input) > 2 and node.input[2] else None
        builder.add(_linear(weight, None if bias is None else np.broadcast_to(bias, weight.shape[:1])))
    elif op == "MatMul":
        builder.add(_linear(consts[node.input[1]].T, None))
        builder.open_bias = builder.layers[-1]
    elif op == "Conv":
        weight = consts[node.input[1]]
        if weight.ndim != 4:
            raise UnsupportedOnnxError(f"{_name(node)}: only 2-d convolutions are supported")
        conv = nn.Conv2d(
            weight.shape[1] * attrs.get("group", 1),
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=tuple(attrs.get("strides", [1, 1])),
            padding=_symmetric_pads(node, attrs.get("pads")),
            dilation=tuple(attrs.get("dilations", [1, 1])),
            groups=attrs.get("group", 1),
        )
        with torch.no_grad():
            conv.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            bias = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(weight.shape[0])
            conv.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        builder.add(conv)
    elif op == "Relu":
        builder.add(nn.ReLU())
    elif op == "MaxPool":
        if attrs.get("ceil_mode", 0) or len(node.output) > 1:
            raise UnsupportedOnnxError(f"{_name(node)}: ceil_mode and index outputs are not supported")
        kernel = tuple(attrs["kernel_shape"])
        builder.add(
            nn.MaxPool2d(
                kernel,
                stride=tuple(attrs.get("strides", kernel)),
                padding=_symmetric_pads(node, attrs.get("pads")),
                dilation=tuple(attrs.get("dilations", [1, 1])),
            )
        )
    elif op == "Flatten":
        if attrs.get("axis", 1) != 1:
            raise UnsupportedOnnxError(f"{_name(node)}: only Flatten(axis=1) is supported")
        builder.add(nn.Flatten())
    elif op == "Reshape":
        shape = [int(s) for s in consts[node.input[1]]]
        if len(shape) != 2 or shape[0] not in (0, 1, -1) and shape[1] != -1:
            raise UnsupportedOnnxError(f"{_name(node)}: only a reshape to (batch, features) is supported, got {shape}")
        builder.add(nn.Flatten())
    elif op in ELEMENTWISE:
        data_first = node.input[0] in data
        const = consts[node.input[1] if data_first else node.input[0]]
        builder.elementwise(node, op, const, data_first)
    elif op in ("Identity", "Dropout"):
        pass
    else:
        raise UnsupportedOnnxError(
            f"{_name(node)} is not supported; supported: Gemm, MatMul+Add, Conv, Relu, MaxPool, Flatten, "
            "Reshape, and Sub/Div/Mul/Add by constants"
        )


def load_onnx(path: str | Path) -> nn.Sequential:
    """An nn.Sequential equal to the ONNX graph in `path` (a chain from its one input to its output)."""
    try:
        graph = onnx.load(str(path)).graph
    except FileNotFoundError:
        raise FileNotFoundError(f"ONNX file {path} not found; pass weights=<file.onnx>") from None
    consts = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedOnnxError(f"{path}: the graph needs exactly one data input and one output")
    data, builder = [inputs[0]], _Builder()
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
            continue
        live = [name for name in node.input if name and name not in consts]
        if not live:
            if node.op_type not in CONSTANT_OPS:
                raise UnsupportedOnnxError(f"{_name(node)} on constants is not supported")
            consts[node.output[0]] = CONSTANT_OPS[node.op_type]([consts[n] for n in node.input if n])
            continue
        if live != [data[-1]]:
            raise UnsupportedOnnxError(f"{_name(node)}: the graph is not a chain (it reads {live}, not {data[-1]!r})")
        _data_node(builder, node, consts, data)
        data.append(node.output[0])
    builder.flush()
    if graph.output[0].name != data[-1]:
        raise UnsupportedOnnxError(f"{path}: the output {graph.output[0].name!r} is not the end of the chain")
    return nn.Sequential(*builder.layers)
