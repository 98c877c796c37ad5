"""ONNX import: a network exported by torch.onnx reads back into equal certtrain layers."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from certtrain.layers import Normalize
from certtrain.verify import VerifyOptions, verify
from certtrain.verify_app.loading import load_network
from certtrain.verify_app.onnx_import import UnsupportedOnnxError, load_onnx


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize((0.3,), (0.4,)),
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_exported_network_reads_back_equal(tmp_path, dynamo):
    net = small_cnn()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 1, 6, 6),), str(path), dynamo=dynamo)
    back = load_network("onnx", str(path))
    kinds = [type(m).__name__ for m in back]
    assert kinds == ["Normalize", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(back(x), net(x), rtol=1e-5, atol=1e-6)
    sample = x[:1]
    label = int(net(sample).argmax())
    for eps in (0.05, 0.1):
        ours = verify(net, sample, label, VerifyOptions(eps=eps, pgd_steps=0, time_limit=60))
        theirs = verify(back, sample, label, VerifyOptions(eps=eps, pgd_steps=0, time_limit=60))
        assert ours.status == theirs.status
        assert ours.stats["unstable_ibp"] == theirs.stats["unstable_ibp"]


def _graph_with(node, extra_inits=()):
    inits = [numpy_helper.from_array(np.ones((3, 4), np.float32), "w"), *extra_inits]
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1), node]
    return helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [1, 3])],
            inits,
        )
    )


def test_unsupported_node_is_named(tmp_path):
    path = tmp_path / "sigmoid.onnx"
    onnx.save(_graph_with(helper.make_node("Sigmoid", ["h"], ["y"], name="squash")), str(path))
    with pytest.raises(UnsupportedOnnxError, match="Sigmoid node 'squash'"):
        load_onnx(path)


def test_matmul_plus_add_becomes_one_linear(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    b = np.array([1.0, -2.0, 0.5], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
        )
    )
    path = tmp_path / "mm.onnx"
    onnx.save(model, str(path))
    net = load_onnx(path)
    assert [type(m).__name__ for m in net] == ["Linear"]
    x = torch.rand(2, 4)
    torch.testing.assert_close(net(x), torch.from_numpy(x.numpy() @ w + b))


def test_negative_scale_normalisation_is_refused(tmp_path):
    path = tmp_path / "neg.onnx"
    neg = numpy_helper.from_array(np.array([-2.0], np.float32), "c")
    onnx.save(_graph_with(helper.make_node("Mul", ["h", "c"], ["y"]), [neg]), str(path))
    with pytest.raises(UnsupportedOnnxError, match="positive scale"):
        load_onnx(path)
