"""Interval bound propagation (IBP)."""

from __future__ import annotations

import torch

from certtrain.bounds.ops import LinearOp


def interval_pass(ops, x_L, x_U):
    """Bounds of every op's input, then of the output: a list of len(ops) + 1 (lower, upper) pairs."""
    bounds = [(x_L, x_U)]
    for op in ops:
        bounds.append(op.interval(*bounds[-1]))
    return bounds


def interval_with_spec(op, lower, upper, C):
    """Bounds of C y where y = op(x) and x lies in [lower, upper].

    When op is the last Linear layer, C is folded into it (W' = C W, b' = C b), which is exact for
    the composed map and tighter than bounding C against the logit interval.
    """
    if isinstance(op, LinearOp):
        weight = C.matmul(op.weight.to(C.dtype))  # (B, S, in)
        center, radius = (upper + lower) / 2, (upper - lower) / 2
        mid = weight.matmul(center.unsqueeze(-1)).squeeze(-1)
        reach = weight.abs().matmul(radius.unsqueeze(-1)).squeeze(-1)
        if op.bias is not None:
            mid = mid + C.matmul(op.bias.to(C.dtype))
        return mid - reach, mid + reach
    out_lower, out_upper = op.interval(lower, upper)
    return spec_of_interval(C, out_lower, out_upper)


def spec_of_interval(C, lower, upper):
    """Bounds of C y over the box y in [lower, upper]."""
    C_pos, C_neg = C.clamp(min=0), C.clamp(max=0)
    lo, up = lower.unsqueeze(-1), upper.unsqueeze(-1)
    return (C_pos.matmul(lo) + C_neg.matmul(up)).squeeze(-1), (C_pos.matmul(up) + C_neg.matmul(lo)).squeeze(-1)


def ibp_bounds(ops, x_L, x_U, C=None):
    """IBP bounds of C f(x) (or of f(x) when C is None)."""
    if C is None:
        return interval_pass(ops, x_L, x_U)[-1]
    bounds = interval_pass(ops[:-1], x_L, x_U)
    return interval_with_spec(ops[-1], *bounds[-1], C)


def identity_spec(batch: int, num_outputs: int, like: torch.Tensor) -> torch.Tensor:
    """C = I for every sample: bounds of the outputs themselves."""
    return torch.eye(num_outputs, dtype=like.dtype, device=like.device).expand(batch, num_outputs, num_outputs)
