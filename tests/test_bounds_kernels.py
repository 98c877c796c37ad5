"""The fast kernels equal the plain formulas they replace, in values and in gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from certtrain.bounds import kernels
from certtrain.bounds.kernels import fused_relu_rule, relu_rule, transpose_to_one_channel
from certtrain.bounds.ops import ReLUOp


@pytest.fixture(autouse=True)
def fresh_compile_mode():
    """Each test's CERTTRAIN_COMPILE (set by monkeypatch) is read afresh, and the next test's too."""
    kernels.set_compile_mode(None)
    yield
    kernels.set_compile_mode(None)


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize(
    "stride, padding, dilation, kernel, size",
    [
        (2, 1, 1, 4, 28),
        (1, 0, 1, 3, 9),
        (2, 0, 1, 3, 10),
        (3, 2, 2, 3, 13),
        (2, 1, 1, 5, 11),
        (3, 0, 1, 2, 10),  # the strided convolution never reads the last input row and column
        ((2, 1), (0, 3), 1, (4, 3), (12, 7)),  # rectangular, padding wider than the kernel reaches
    ],
)
def test_transpose_to_one_channel_is_the_adjoint_of_the_convolution(stride, padding, dilation, kernel, size):
    stride, padding, dilation, kernel, size = map(_pair, (stride, padding, dilation, kernel, size))
    torch.manual_seed(0)
    weight = torch.randn(5, 1, *kernel, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 1, *size, dtype=torch.float64)
    out_shape = F.conv2d(x, weight, None, stride, padding, dilation).shape[1:]
    A = torch.randn(6, *out_shape, dtype=torch.float64, requires_grad=True)
    transposed = transpose_to_one_channel(A, weight, stride, padding, dilation, size)
    # <A, conv(x)> = <A^T, x> for every x: the defining property of the transpose.
    probe = torch.randn(6, 1, *size, dtype=torch.float64)
    lhs = (A * F.conv2d(probe, weight, None, stride, padding, dilation)).sum()
    torch.testing.assert_close(lhs, (transposed * probe).sum())
    assert torch.autograd.gradcheck(
        lambda A, w: transpose_to_one_channel(A, w, stride, padding, dilation, size), (A, weight)
    )


def test_transpose_to_one_channel_rejects_more_channels():
    with pytest.raises(ValueError, match="input channels"):
        transpose_to_one_channel(torch.zeros(1, 2, 3, 3), torch.zeros(2, 3, 2, 2), (1, 1), (0, 0), (1, 1), (4, 4))


def _relu_inputs(dtype=torch.float32, shared_rows=False):
    torch.manual_seed(1)
    batch, rows, neurons = 4, 3, 50
    lower = (torch.randn(batch, neurons, dtype=dtype) - 0.3).requires_grad_()
    upper = (lower.detach() + torch.rand(batch, neurons, dtype=dtype)).requires_grad_()
    A = torch.randn(1 if shared_rows else batch, rows, neurons, dtype=dtype, requires_grad=True)
    return A, lower, upper


def _values_and_grads(fn, A, lower, upper):
    out, bias = fn(A, lower, upper)
    torch.manual_seed(2)
    loss = (out * torch.randn_like(out)).sum() + (bias * torch.randn_like(bias)).sum()
    grads = torch.autograd.grad(loss, (A, lower, upper))
    return (out, bias, *grads)


def test_relu_rule_bounds_relu_from_below():
    A, lower, upper = (t.detach() for t in _relu_inputs(torch.float64))
    A_in, bias = relu_rule(A, lower, upper)
    for _ in range(20):
        x = lower + torch.rand_like(lower) * (upper - lower)
        exact = (A * x.clamp(min=0).unsqueeze(1)).sum(-1)
        linear = (A_in * x.unsqueeze(1)).sum(-1) + bias
        assert (linear <= exact + 1e-12).all()


@pytest.mark.parametrize("shared_rows", [False, True])
def test_compiled_relu_rule_equals_the_eager_one(monkeypatch, shared_rows):
    if not kernels._compiler_present("cpu"):
        pytest.skip("no C++ compiler on this machine: torch.compile cannot build CPU kernels")
    monkeypatch.setenv(kernels.COMPILE_ENV, "1")
    inputs = _relu_inputs(shared_rows=shared_rows)
    compiled = _values_and_grads(fused_relu_rule, *inputs)
    eager = _values_and_grads(relu_rule, *inputs)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compile_setting_is_validated(monkeypatch):
    monkeypatch.setenv(kernels.COMPILE_ENV, "yes")
    with pytest.raises(ValueError, match="CERTTRAIN_COMPILE"):
        fused_relu_rule(*_relu_inputs())
    with pytest.raises(ValueError, match="CERTTRAIN_COMPILE"):
        kernels.set_compile_mode("always")


def test_the_environment_is_read_once(monkeypatch):
    monkeypatch.setenv(kernels.COMPILE_ENV, "0")
    assert kernels._mode() == "0"
    monkeypatch.setenv(kernels.COMPILE_ENV, "1")
    assert kernels._mode() == "0"  # kept: not read again on every kernel call
    kernels.set_compile_mode(None)
    assert kernels._mode() == "1"


def test_auto_mode_keeps_small_tensors_eager(monkeypatch):
    kernels.set_compile_mode("auto")
    assert not kernels.use_compiled(torch.zeros(2, 3, 4))
    kernels.set_compile_mode("0")
    assert not kernels.use_compiled(torch.zeros(kernels.MIN_COMPILED_ELEMENTS))


def test_a_failing_compiler_names_the_way_out(monkeypatch):
    def broken(*args):
        raise OSError("no compiler")

    monkeypatch.setenv(kernels.COMPILE_ENV, "1")
    monkeypatch.setattr(kernels, "_compiled_relu_rule", lambda: broken)
    with pytest.raises(RuntimeError, match="CERTTRAIN_COMPILE=0"):
        fused_relu_rule(*_relu_inputs())


def _channels_last_rows(batch, rows, *shape, dtype=torch.float64):
    """A (batch, rows, C, H, W) laid out as conv_transpose2d leaves it: (batch * rows) channels_last."""
    A = torch.randn(batch * rows, *shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return A.view(batch, rows, *shape)


def test_relu_rule_on_channels_last_rows_equals_the_contiguous_one():
    torch.manual_seed(3)
    lower = (torch.randn(2, 3, 4, 5, dtype=torch.float64) - 0.3).requires_grad_()
    upper = (lower.detach() + torch.rand_like(lower)).requires_grad_()
    A_last = _channels_last_rows(2, 4, 3, 4, 5).requires_grad_()
    A_plain = A_last.detach().contiguous().requires_grad_()
    results = []
    for A in (A_last, A_plain):
        out, bias = ReLUOp().backward(A, (lower, upper))
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + bias.sum()
        results.append((out, bias, *torch.autograd.grad(loss, (A, lower, upper))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
    out_last, grad_A_last = results[0][0], results[0][2]
    for t in (out_last, grad_A_last):  # no copy into another layout on the way, either way
        assert t.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_transpose_to_one_channel_takes_channels_last_A():
    torch.manual_seed(4)
    weight = torch.randn(5, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    A_last = _channels_last_rows(1, 6, 5, 14, 14).flatten(0, 1).requires_grad_()
    A_plain = A_last.detach().contiguous().requires_grad_()
    results = []
    for A in (A_last, A_plain):
        out = transpose_to_one_channel(A, weight, (2, 2), (1, 1), (1, 1), (28, 28))
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        results.append((out, *torch.autograd.grad(loss, (A, weight))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
    assert results[0][1].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "in_channels,out_channels,kernel,stride,padding,dilation,groups,size,bias",
    [
        (1, 4, 4, 2, 1, 1, 1, 12, True),  # the first layer of a grey-scale net (the one-channel kernel)
        (1, 3, 3, 1, 0, 2, 1, 9, True),  # one channel, dilated (matmul + fold)
        (4, 6, 4, 2, 1, 1, 1, 11, True),  # conv_transpose2d with an output padding (odd size)
        (4, 6, 3, 1, 2, 2, 2, 8, False),  # dilation, groups, no bias
    ],
)
def test_the_fused_conv_step_equals_transpose_plus_bias_term_in_value_and_gradients(
    in_channels, out_channels, kernel, stride, padding, dilation, groups, size, bias
):
    """kernels.conv_backward_step against autograd through its definition (A W by conv2d's
    adjoint, A b by a sum): the same values and gradients in A, W and b."""
    gen = torch.Generator().manual_seed(in_channels * 7 + kernel)
    conv = torch.nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, groups, bias=bias).double()
    out_h = conv(torch.zeros(1, in_channels, size, size, dtype=torch.float64)).shape[2]
    A = torch.randn(5, out_channels, out_h, out_h, generator=gen, dtype=torch.float64, requires_grad=True)
    grads = (
        torch.randn(5, in_channels, size, size, generator=gen, dtype=torch.float64),
        torch.randn(5, generator=gen, dtype=torch.float64),
    )
    leaves = [A, conv.weight] + ([conv.bias] if bias else [])

    def reference():
        x = torch.zeros(5, in_channels, size, size, dtype=torch.float64, requires_grad=True)
        out = torch.nn.functional.conv2d(x, conv.weight, None, stride, padding, dilation, groups)
        (A_in,) = torch.autograd.grad(out, x, A, create_graph=True)  # x -> A . conv(x) is A W
        term = A.sum((2, 3)).matmul(conv.bias) if bias else None
        return A_in, term

    for fn in (
        reference,
        lambda: kernels.conv_backward_step(
            A, conv.weight, conv.bias, (stride,) * 2, (padding,) * 2, (dilation,) * 2, groups, (size, size)
        ),
    ):
        A_in, term = fn()
        loss = (A_in * grads[0]).sum() + ((term * grads[1]).sum() if bias else 0)
        got = (A_in.detach(), None if term is None else term.detach(), *torch.autograd.grad(loss, leaves))
        if fn is reference:
            expected = got
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
