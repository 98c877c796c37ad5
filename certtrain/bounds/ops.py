"""Per-layer bound rules.

Every op acts on tensors with a leading batch dimension. Two kinds:

* affine ops (y = W x + b): `forward`, `interval` (centre/radius form, exact for one affine
  map over a box) and `backward` (A -> A W plus the bias term A b);
* activation ops: `forward`, `interval` on (lower, upper), and `backward`, which replaces the
  activation by sound linear bounds given the bounds of its input.

Backward rules always produce a LOWER bound of A y; an upper bound is minus the lower bound of
-A y. A has shape (Ba, S, *shape), where S counts specification rows and Ba is either the batch
size or 1 (rows shared by every sample until a per-sample relaxation multiplies them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from certtrain.bounds.kernels import conv_backward_step, fused_relu_rule, relu_relaxation


def _sum_rows(t: torch.Tensor) -> torch.Tensor:
    """Sum all dims after (Ba, S)."""
    return t.flatten(2).sum(-1)


class AffineOp(ABC):
    """y = W x + b, with W given implicitly by the subclass."""

    in_shape: tuple[int, ...] = ()

    @abstractmethod
    def forward(self, x):
        """W x + b."""

    @abstractmethod
    def abs_apply(self, radius):
        """|W| radius: how far the image of a box reaches around the image of its centre."""

    @abstractmethod
    def transpose(self, A):
        """A W (no bias)."""

    def bias_term(self, A):
        """A b summed over the layer's outputs, shape (Ba, S); None when there is no bias."""
        return None

    def interval(self, lower, upper):
        center, radius = (upper + lower) / 2, (upper - lower) / 2
        center, radius = self.forward(center), self.abs_apply(radius)
        return center - radius, center + radius

    def backward(self, A, in_bounds=None):
        return self.transpose(A), self.bias_term(A)


class LinearOp(AffineOp):
    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def abs_apply(self, radius):
        return F.linear(radius, self.weight.to(radius.dtype).abs())

    def transpose(self, A):
        return A.matmul(self.weight.to(A.dtype))

    def bias_term(self, A):
        return None if self.bias is None else A.matmul(self.bias.to(A.dtype))


class ConvOp(AffineOp):
    """Conv2d with zero padding; its transpose and bias term take all spec rows in one call
    (kernels.conv_backward_step: conv_transpose2d, or phase planes back to a single channel)."""

    def __init__(self, module):
        self.weight, self.bias = module.weight, module.bias
        self.stride, self.padding = module.stride, module.padding
        self.dilation, self.groups = module.dilation, module.groups

    def _conv(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv(x, self.weight.to(x.dtype), bias)

    def abs_apply(self, radius):
        return self._conv(radius, self.weight.to(radius.dtype).abs(), None)

    def transpose(self, A):
        return self.backward(A, with_bias=False)[0]

    def bias_term(self, A):
        return None if self.bias is None else A.sum((-1, -2)).matmul(self.bias.to(A.dtype))

    def backward(self, A, in_bounds=None, with_bias=True):
        """transpose and bias_term in one step (kernels.conv_backward_step: one gradient pass)."""
        rows, out_shape = A.shape[:2], A.shape[2:]
        A_in, term = conv_backward_step(
            A.reshape(-1, *out_shape),
            self.weight.to(A.dtype),
            None if self.bias is None or not with_bias else self.bias.to(A.dtype),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.in_shape[1:],
        )
        return A_in.reshape(*rows, *A_in.shape[1:]), None if term is None else term.reshape(rows)


class ScaleShiftOp(AffineOp):
    """y = x * scale + shift per channel: Normalize, and BatchNorm once its statistics are fixed."""

    def __init__(self, scale, shift):
        # scale, shift: (C,); broadcast over the spatial dims of the input.
        self.scale, self.shift = scale, shift

    def _view(self, t, ndim):
        return t.view(-1, *([1] * (ndim - 2)))

    def forward(self, x):
        return x * self._view(self.scale, x.dim()).to(x.dtype) + self._view(self.shift, x.dim()).to(x.dtype)

    def abs_apply(self, radius):
        return radius * self._view(self.scale, radius.dim()).to(radius.dtype).abs()

    def transpose(self, A):
        return A * self._view(self.scale, A.dim() - 1).to(A.dtype)

    def bias_term(self, A):
        return _sum_rows(A * self._view(self.shift, A.dim() - 1).to(A.dtype))


class AvgPoolOp(AffineOp):
    """AvgPool2d without padding: a depthwise convolution with constant weights 1/k^2."""

    def __init__(self, kernel_size, stride):
        self.kernel, self.stride = kernel_size, stride

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel, self.stride)

    def abs_apply(self, radius):
        return F.avg_pool2d(radius, self.kernel, self.stride)

    def transpose(self, A):
        rows, out_shape = A.shape[:2], A.shape[2:]
        channels, in_h, in_w = self.in_shape
        kh, kw = self.kernel
        weight = A.new_full((channels, 1, kh, kw), 1.0 / (kh * kw))
        extra = tuple(
            size - ((out - 1) * s + k) for size, out, s, k in zip((in_h, in_w), out_shape[1:], self.stride, (kh, kw))
        )
        A_in = F.conv_transpose2d(A.reshape(-1, *out_shape), weight, None, self.stride, 0, extra, channels)
        return A_in.reshape(*rows, *A_in.shape[1:])


class FlattenOp(AffineOp):
    def forward(self, x):
        return x.flatten(1)

    def abs_apply(self, radius):
        return radius.flatten(1)

    def transpose(self, A):
        return A.reshape(*A.shape[:2], *self.in_shape)


class ReLUOp:
    def forward(self, x):
        return x.clamp(min=0)

    def interval(self, lower, upper):
        return lower.clamp(min=0), upper.clamp(min=0)

    def backward(self, A, in_bounds):
        lower, upper = in_bounds
        batch, rows = max(A.shape[0], lower.shape[0]), A.shape[1]
        # The rule is elementwise, so the neurons are flattened in the order A lies in memory:
        # any other order copies A here and its gradient on the way back (for a channels_last A
        # from conv_transpose2d, 29 MB each way in a dm_small step).
        dims = _neuron_dims_in_memory_order(A)
        bound_dims = [d - 1 for d in dims]
        A_in, bias = fused_relu_rule(
            A.permute(0, 1, *dims).flatten(2),
            lower.permute(0, *bound_dims).flatten(1),
            upper.permute(0, *bound_dims).flatten(1),
        )
        A_in = A_in.reshape(batch, rows, *(A.shape[d] for d in dims))
        return A_in.permute(0, 1, *(2 + dims.index(d) for d in range(2, A.dim()))), bias


def _neuron_dims_in_memory_order(A):
    """The dims after (Ba, S) of A, outermost in memory first: (H, W, C) for a channels_last
    A (Ba, S, C, H, W), as conv_transpose2d leaves it; otherwise as indexed."""
    if A.dim() == 5 and not A.is_contiguous() and A.movedim(2, -1).is_contiguous():
        return [3, 4, 2]
    return list(range(2, A.dim()))


class GroupSortOp:
    """Sorting inside groups of `group_size` features along dim 1.

    Interval: exact, by sorting the lower and the upper bounds separately (the k-th smallest of
    the inputs lies between the k-th smallest lower bound and the k-th smallest upper bound).
    Backward relaxation: for MaxMin (group_size 2) the pair (a, b) maps to
    (min, max) = (b - relu(b - a), a + relu(b - a)), and relu(b - a) gets the ReLU relaxation with
    the interval of b - a taken from the input intervals, which is sound. For larger groups the
    backward pass falls back to the layer's output interval (A y >= A+ y_L + A- y_U), which stops
    the backward pass at this layer: sound, but the input dependence below is lost.
    """

    def __init__(self, group_size):
        self.group_size = group_size

    def _groups(self, t):
        return t.reshape(t.shape[0], -1, self.group_size, *t.shape[2:])

    def forward(self, x):
        return self._groups(x).sort(dim=2).values.reshape(x.shape)

    def interval(self, lower, upper):
        sort = lambda t: self._groups(t).sort(dim=2).values.reshape(t.shape)  # noqa: E731
        return sort(lower), sort(upper)

    @property
    def exact_backward(self) -> bool:
        return self.group_size == 2

    def backward(self, A, in_bounds):
        lower, upper = in_bounds
        if not self.exact_backward:
            out_lower, out_upper = self.interval(lower, upper)
            bias = _sum_rows(A.clamp(min=0) * out_lower.unsqueeze(1) + A.clamp(max=0) * out_upper.unsqueeze(1))
            return None, bias
        pair = lambda t: t.reshape(*t.shape[:2], -1, 2, *t.shape[3:])  # noqa: E731
        A_pairs = pair(A)
        A_min, A_max = A_pairs[:, :, :, 0], A_pairs[:, :, :, 1]
        lo, up = (
            lower.reshape(lower.shape[0], -1, 2, *lower.shape[2:]),
            upper.reshape(upper.shape[0], -1, 2, *upper.shape[2:]),
        )
        # d = b - a, where a is the first and b the second member of each pair.
        a_slope, d_slope, d_intercept = relu_relaxation(lo[:, :, 1] - up[:, :, 0], up[:, :, 1] - lo[:, :, 0])
        gain = A_max - A_min  # coefficient of relu(d) in A y
        gain_neg = gain.clamp(max=0)
        coeff_d = gain * a_slope.unsqueeze(1) + gain_neg * (d_slope - a_slope).unsqueeze(1)
        A_in = torch.stack((A_max - coeff_d, A_min + coeff_d), dim=3)
        A_in = A_in.reshape(A_in.shape[0], *A.shape[1:])  # batch grows from 1 where A was shared
        return A_in, _sum_rows(gain_neg * d_intercept.unsqueeze(1))


class MaxPoolOp:
    """MaxPool2d (no dilation, floor mode; any padding, which never wins the max).

    Interval: exact, max of the lower and max of the upper bounds. Backward relaxation of
    y = max_{i in window} x_i, DeepPoly's (Singh et al. 2019): with i* the input of largest lower
    bound, y >= x_i* below; above, y = x_i* when that input dominates (l_i* >= u_i for every
    other i), else the constant y <= max_i u_i. Both sides are sound on the input box.
    """

    def __init__(self, kernel_size, stride, padding):
        self.kernel, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)

    def interval(self, lower, upper):
        return self.forward(lower), self.forward(upper)

    def _windows(self, t):
        """(B, C, K, L): the K = kh * kw inputs of each of the L output positions; padding -inf."""
        (ph, pw), (kh, kw) = self.padding, self.kernel
        padded = F.pad(t, (pw, pw, ph, ph), value=float("-inf"))
        batch, channels = t.shape[:2]
        return F.unfold(padded, (kh, kw), stride=self.stride).reshape(batch, channels, kh * kw, -1)

    def _positions(self, like):
        """(1, 1, K, L) flat input index of every window entry (padding: 0, never chosen)."""
        _, h, w = self.in_shape
        index = torch.arange(h * w, device=like.device, dtype=like.dtype).reshape(1, 1, h, w)
        (ph, pw), (kh, kw) = self.padding, self.kernel
        padded = F.pad(index, (pw, pw, ph, ph), value=0.0)
        return F.unfold(padded, (kh, kw), stride=self.stride).reshape(1, 1, kh * kw, -1).long()

    def backward(self, A, in_bounds):
        lower, upper = in_bounds
        low_w, up_w = self._windows(lower), self._windows(upper)
        best_lower, star = low_w.max(dim=2, keepdim=True)
        others = up_w.scatter(2, star, float("-inf")).amax(dim=2, keepdim=True)
        dominant = (best_lower >= others).squeeze(2)  # (B, C, L): y = x_i* exactly
        top = up_w.amax(dim=2)  # (B, C, L)
        source = self._positions(lower).expand(lower.shape[0], lower.shape[1], -1, -1).gather(2, star).squeeze(2)
        rows = A.shape[1]
        batch = max(A.shape[0], lower.shape[0])
        A_out = A.expand(batch, *A.shape[1:]).flatten(3)  # (B, S, C, L)
        A_pos, A_neg = A_out.clamp(min=0), A_out.clamp(max=0)
        dominant = dominant.unsqueeze(1)
        coefficient = A_pos + torch.where(dominant, A_neg, torch.zeros_like(A_neg))
        bias = (torch.where(dominant, torch.zeros_like(A_neg), A_neg) * top.unsqueeze(1)).flatten(2).sum(-1)
        channels, h, w = self.in_shape
        A_in = A_out.new_zeros(batch, rows, channels, h * w)
        A_in.scatter_add_(3, source.unsqueeze(1).expand(-1, rows, -1, -1), coefficient)
        return A_in.reshape(batch, rows, channels, h, w), bias
