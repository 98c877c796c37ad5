"""Fast kernels for the hot spots of the backward relaxation: the ReLU rule and the transpose
of a convolution back to a single channel.

The rule touches every entry of A (batch x spec rows x neurons) several times. Eager PyTorch
runs each elementwise op, and each op of its autograd backward, as its own pass over memory;
torch.compile fuses them into a few passes. Measured on 2 CPU cores (torch 2.13) for A of shape
(256, 9, 3136), forward + backward: eager 70-105 ms, compiled 16-17 ms
(`python scripts/bench_kernels.py`); a hand-fused autograd.Function took 75 ms and was dropped.

When the compiled kernel is used (CERTTRAIN_COMPILE):
  "auto" (default)  when a compiler for the tensor's device is present (a C++ compiler on the
                    CPU, Triton on CUDA) and A is large enough to pay for it;
  "1"               always, and a failing compiler is an error;
  "0"               never.
The compiled and the eager kernels evaluate the same formula; they differ by float rounding only
(fused multiply-adds, summation order), which FLOAT32_SLACK covers.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

COMPILE_ENV = "CERTTRAIN_COMPILE"
# Below this many entries of A the compiled kernel gains little and compiling costs seconds.
# 2^18 admits the one-row A of loss fusion ((256, 1, 3136) in dm_small): measured on 2 CPU cores,
# fused CROWN-IBP step 150 ms eager vs 98 ms compiled (IBP step of the same run: 73 ms).
MIN_COMPILED_ELEMENTS = 1 << 18


def relu_relaxation(lower, upper):
    """Linear bounds a x <= relu(x) <= d x + c on [lower, upper], elementwise.

    Unstable neurons (l < 0 < u): upper line through (l, 0) and (u, u); lower slope 1 when
    u > -l, else 0 (the adaptive choice of CROWN-IBP / auto_LiRPA). Stable neurons are exact.
    Returns (a, d, c).
    """
    lower_neg = lower.clamp(max=0)
    upper_pos = upper.clamp(min=0)
    # The 1e-12 floor only matters where both are 0 (then d = 0); it never loosens a bound.
    d = upper_pos / (upper_pos - lower_neg).clamp(min=1e-12)
    c = -lower_neg * d
    a = (d > 0.5).to(d.dtype)
    return a, d, c


def relu_rule(A, lower, upper):
    """Backward ReLU rule on flat tensors: A (Ba, S, n), lower/upper (B, n).

    Returns (A', bias) with A' (B, S, n) and bias (B, S): A y >= A' x + bias for y = relu(x),
    x in [lower, upper]. Positive entries of A take the lower line, negative ones the upper line.
    """
    a, d, c = (t.unsqueeze(1) for t in relu_relaxation(lower, upper))
    # A a + min(A, 0) (d - a): measured 35% faster in eager mode than two clamps.
    A_neg = A.clamp(max=0)
    return A * a + A_neg * (d - a), (A_neg * c).sum(-1)


_compile_mode: str | None = None  # CERTTRAIN_COMPILE, read once on first use (set_compile_mode changes it)


def set_compile_mode(mode: str | None) -> None:
    """auto | 1 (always compile) | 0 (never); None: read CERTTRAIN_COMPILE again on next use."""
    global _compile_mode
    if mode is not None:
        mode = str(mode).strip().lower()
        if mode not in ("auto", "0", "1"):
            raise ValueError(f"{COMPILE_ENV}={mode!r}: use auto, 1 (always compile) or 0 (never)")
    _compile_mode = mode


def _mode() -> str:
    if _compile_mode is None:
        set_compile_mode(os.environ.get(COMPILE_ENV, "auto"))
    return _compile_mode


@functools.lru_cache(maxsize=None)
def _compiler_present(device_type: str) -> bool:
    if device_type == "cpu":
        return any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def use_compiled(A: torch.Tensor) -> bool:
    mode = _mode()
    if mode == "0":
        return False
    if mode == "1":
        return True
    return A.numel() >= MIN_COMPILED_ELEMENTS and _compiler_present(A.device.type)


@functools.lru_cache(maxsize=None)
def _compiled_relu_rule():
    log.info("compiling the fused ReLU rule (once per process; cached on disk by torch.compile)")
    return torch.compile(relu_rule, dynamic=True)


def fused_relu_rule(A, lower, upper):
    """relu_rule, compiled where that pays (see the module docstring)."""
    if not use_compiled(A):
        return relu_rule(A, lower, upper)
    try:
        return _compiled_relu_rule()(A, lower, upper)
    except Exception as error:
        raise RuntimeError(
            f"the compiled ReLU rule failed ({type(error).__name__}); "
            f"set {COMPILE_ENV}=0 to use the eager kernels instead"
        ) from error


def _shuffle_transpose(A, weight, stride, padding, in_size):
    """Transpose of a dilation-1 convolution to one channel, by tap images and phase planes."""
    batch, out_channels, height, width = A.shape
    (s_h, s_w), (k_h, k_w) = stride, weight.shape[2:]
    blocks_h, blocks_w = -(-k_h // s_h), -(-k_w // s_w)
    # Kernel row kh = a s_h + r: block a, phase r (zero taps pad the kernel to whole blocks).
    taps = F.pad(weight[:, 0], (0, blocks_w * s_w - k_w, 0, blocks_h * s_h - k_h))
    taps = taps.reshape(out_channels, blocks_h, s_h, blocks_w, s_w).permute(1, 3, 2, 4, 0)
    # A matmul, not a 1x1 conv2d: measured 4.5 ms vs 10 ms for (2304, 16, 14, 14) on 2 CPU cores.
    images = taps.reshape(-1, out_channels).matmul(A.reshape(batch, out_channels, height * width))
    images = images.view(batch, blocks_h, blocks_w, s_h, s_w, height, width)
    # planes[n, r, q, i, j] is pixel (s_h i + r, s_w j + q) before cropping the padding. Adding
    # whole phase planes, then interleaving once, is 2x faster than adding into strided pixels.
    planes = A.new_zeros(batch, s_h, s_w, height + blocks_h - 1, width + blocks_w - 1)
    for a in range(blocks_h):
        for b in range(blocks_w):
            planes[:, :, :, a : a + height, b : b + width] += images[:, a, b]
    out = planes.permute(0, 3, 1, 4, 2).reshape(batch, s_h * planes.shape[3], s_w * planes.shape[4])
    missing_h = max(0, padding[0] + in_size[0] - out.shape[1])
    missing_w = max(0, padding[1] + in_size[1] - out.shape[2])
    if missing_h or missing_w:  # input rows/columns the strided convolution never reads
        out = F.pad(out, (0, missing_w, 0, missing_h))
    out = out[:, padding[0] : padding[0] + in_size[0], padding[1] : padding[1] + in_size[1]]
    return out.unsqueeze(1)


class _ConvBackwardStep(torch.autograd.Function):
    """(A W, A b) of a Conv2d in one step: the transpose and the bias term of the backward rule.

    Autograd would sum A's two gradients, a (rows, C, H, W) tensor from the transpose and the
    bias term's broadcast, into a third tensor (measured 30 ms of a 420 ms CROWN-IBP step of
    dm_small); here the bias part is added in place into the convolution that is the transpose's
    gradient. The gradients in W and b are conv2d's weight gradient and a small matmul.

    One input channel (the first layer of a grey-scale net): conv_transpose2d is slow when it
    produces one channel (measured on 2 CPU cores for (2304, 16, 14, 14) -> (2304, 1, 28, 28),
    forward + backward: conv_transpose2d 88 ms, matmul + fold 83 ms, phase planes 33 ms,
    `python scripts/bench_kernels.py`), so the transpose is _shuffle_transpose (dilation 1) or
    matmul + fold; channels_last strides are free for one channel and oneDNN keeps them.
    """

    @staticmethod
    def forward(ctx, A, weight, bias, stride, padding, dilation, groups, in_size):
        one_channel = weight.shape[1] == 1 and groups == 1
        if one_channel:
            if not A.is_contiguous(memory_format=torch.channels_last):
                A = A.contiguous()  # the matmul reads a channels_last A as transposed matrices
            A_in = _one_channel_transpose(A, weight, stride, padding, dilation, in_size)
        else:
            A = A.contiguous(memory_format=torch.channels_last)  # 0.5x the time of NCHW (2 CPU cores)
            A_in = F.conv_transpose2d(
                A,
                weight,
                None,
                stride,
                padding,
                _output_padding(A, weight, stride, padding, dilation, in_size),
                groups,
                dilation,
            )
        A_sum = A.sum((2, 3))  # (N, C_out)
        ctx.save_for_backward(A, weight, bias, A_sum)
        ctx.conv = (stride, padding, dilation, groups, one_channel)
        return A_in, (None if bias is None else A_sum.matmul(bias))

    @staticmethod
    def backward(ctx, grad, grad_bias_term):
        A, weight, bias, A_sum = ctx.saved_tensors
        stride, padding, dilation, groups, one_channel = ctx.conv
        if one_channel:  # channels_last strides are free for one channel (oneDNN keeps them)
            height, width = grad.shape[2:]
            grad = grad.contiguous().as_strided(grad.shape, (height * width, 1, width, 1))
        else:
            grad = grad.contiguous(memory_format=torch.channels_last)  # conv2d's fast layout
        grad_A = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_A = F.conv2d(grad, weight, None, stride, padding, dilation, groups)
            if bias is not None and grad_bias_term is not None:
                grad_A.add_((grad_bias_term[:, None] * bias)[:, :, None, None])
        if ctx.needs_input_grad[1]:
            grad_weight = torch.nn.grad.conv2d_weight(grad, weight.shape, A, stride, padding, dilation, groups)
        if bias is not None and ctx.needs_input_grad[2] and grad_bias_term is not None:
            grad_bias = grad_bias_term.matmul(A_sum)
        return grad_A, grad_weight, grad_bias, None, None, None, None, None


def _output_padding(A, weight, stride, padding, dilation, in_size):
    """conv_transpose2d cannot tell which input size a strided conv came from: pad the rest."""
    return tuple(
        size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
        for size, out, s, p, d, k in zip(in_size, A.shape[2:], stride, padding, dilation, weight.shape[2:])
    )


def conv_backward_step(A, weight, bias, stride, padding, dilation, groups, in_size):
    """(N, O, H, W) -> ((N, C, *in_size) the transpose A W, (N,) the bias term A b or None)."""
    return _ConvBackwardStep.apply(
        A, weight, bias, tuple(stride), tuple(padding), tuple(dilation), int(groups), tuple(in_size)
    )


def _one_channel_transpose(A, weight, stride, padding, dilation, in_size):
    if dilation != (1, 1):
        out_channels = weight.shape[0]
        columns = weight.reshape(out_channels, -1).t().matmul(A.reshape(A.shape[0], out_channels, -1))
        return F.fold(columns, in_size, weight.shape[2:], dilation, padding, stride)
    return _shuffle_transpose(A, weight, stride, padding, in_size)


def transpose_to_one_channel(A, weight, stride, padding, dilation, in_size):
    """(N, O, H, W) -> (N, 1, *in_size): the transpose of Conv2d(weight), weight (O, 1, kh, kw)."""
    if weight.shape[1] != 1:
        raise ValueError(f"weight {tuple(weight.shape)} has {weight.shape[1]} input channels, expected 1")
    return conv_backward_step(A, weight, None, stride, padding, dilation, 1, in_size)[0]
