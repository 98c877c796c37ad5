"""Backward linear relaxation (CROWN) and the bounds of intermediate layers it needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from certtrain.bounds.kernels import relu_relaxation
from certtrain.bounds.ops import AffineOp, FlattenOp, ScaleShiftOp

# Largest number of elements one chunk of intermediate-bound rows may occupy in any layer
# (2^26 float32 = 256 MiB): bounds every neuron of a wide conv layer without running out of memory.
ROW_CHUNK_ELEMENTS = 1 << 26


def concretize_lower(A, bias, x_L, x_U):
    """min over the box of A x + bias. A: (Ba, S, *input_shape) with Ba in {1, B}."""
    center = ((x_U + x_L) / 2).flatten(1).unsqueeze(-1)
    radius = ((x_U - x_L) / 2).flatten(1).unsqueeze(-1)
    A = A.flatten(2)
    lower = (A.matmul(center) - A.abs().matmul(radius)).squeeze(-1)
    return lower if bias is None else lower + bias


def backward_lower(ops, A, in_bounds, x_L, x_U, lower_slopes=None):
    """Lower bound of A ops(x) over the box [x_L, x_U].

    A: (Ba, S, *output shape of ops[-1]). in_bounds[i]: bounds of the input of ops[i]
    (only read for activation ops). lower_slopes: {index of a ReLU op: slopes in [0, 1] of its
    unstable neurons' lower lines, (B, S, *its input shape)} (alpha-CROWN); the other ReLUs
    take CROWN's adaptive choice.
    """
    bias = None
    for index in range(len(ops) - 1, -1, -1):
        if lower_slopes is not None and index in lower_slopes:
            A, term = relu_backward_with_slopes(A, in_bounds[index], lower_slopes[index])
        else:
            A, term = ops[index].backward(A, in_bounds[index])
        if term is not None:
            bias = term if bias is None else bias + term
        if A is None:  # an op fell back to its output interval: nothing below it matters
            return bias.expand(x_L.shape[0], -1)
    return concretize_lower(A, bias, x_L, x_U)


def relu_backward_with_slopes(A, in_bounds, slopes):
    """The ReLU rule with given lower slopes for the unstable neurons: any slope in [0, 1] gives a
    line below relu on [l, u] with l < 0 < u, so every choice is sound."""
    lower, upper = (t.unsqueeze(1) for t in in_bounds)
    _, d, c = relu_relaxation(lower, upper)
    unstable = (lower < 0) & (upper > 0)
    a = torch.where(unstable, slopes.clamp(0.0, 1.0), (lower >= 0).to(A.dtype))
    A_neg = A.clamp(max=0)
    return A.clamp(min=0) * a + A_neg * d, (A_neg * c).flatten(2).sum(-1)


def backward_bounds(ops, C, in_bounds, x_L, x_U):
    """(lower, upper) of C ops(x) by one backward pass over the stacked rows [C; -C]."""
    rows = C.shape[1]
    lower = backward_lower(ops, torch.cat((C, -C), dim=1), in_bounds, x_L, x_U)
    return lower[:, :rows], -lower[:, rows:]


def _interval_is_exact(ops) -> bool:
    """Interval arithmetic is exact for a chain with one general affine map and otherwise only
    per-channel scalings and reshapes (|D2 W D1| = |D2| |W| |D1|): CROWN gives the same there."""
    general = 0
    for op in ops:
        if not isinstance(op, AffineOp):
            return False
        if not isinstance(op, (ScaleShiftOp, FlattenOp)):
            general += 1
    return general <= 1


@dataclass(frozen=True)
class Rows:
    """Which neurons of a layer (flat indices) to bound, for a batch of B samples.

    Shared (`per_sample` False): `index` (R,), the same rows for every sample, bounded by a spec
    the batch shares. Per sample: `index` (B, R), each sample's own rows padded to the largest
    count, `valid` (B, R) marking the real ones (padding rows are zero and never written back).
    """

    index: torch.Tensor
    valid: torch.Tensor | None = None

    @property
    def per_sample(self) -> bool:
        return self.index.dim() == 2

    def __len__(self) -> int:
        return self.index.shape[-1]

    def spec(self, start: int, stop: int, neurons: int, dtype, sign: float = 1.0) -> torch.Tensor:
        """One-hot rows start:stop, (1 or B, stop - start, neurons), times sign."""
        if not self.per_sample:
            picked = self.index[start:stop]
            spec = torch.zeros(len(picked), neurons, dtype=dtype, device=picked.device)
            spec[torch.arange(len(picked), device=picked.device), picked] = sign
            return spec.unsqueeze(0)
        picked, valid = self.index[:, start:stop], self.valid[:, start:stop]
        spec = torch.zeros(*picked.shape, neurons, dtype=dtype, device=picked.device)
        return spec.scatter_(2, picked.unsqueeze(-1), sign * valid.unsqueeze(-1).to(dtype))

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """values (B, N) at the rows: (B, R)."""
        return values[:, self.index] if not self.per_sample else values.gather(1, self.index)

    def write(self, values: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """A copy of values (B, N) with new (B, R) at the rows (the real ones only)."""
        out = values.clone()
        if not self.per_sample:
            out[:, self.index] = new
            return out
        return out.scatter_(1, self.index, torch.where(self.valid, new, values.gather(1, self.index)))


def unstable_rows(lower: torch.Tensor, upper: torch.Tensor) -> Rows:
    """The neurons with l < 0 < u of (B, N) bounds. Shared rows (unstable in some sample) cost the
    first op of the backward pass once for the batch; per-sample rows cost it B times but the
    rest of the pass only each sample's own count. Per sample where a sample's largest count is
    at most half the union's (distinct images: measured 1/3 to 1/4 on DM-small), shared where
    the samples are alike (branch and bound's sub-domains of one box)."""
    unstable = (lower < 0) & (upper > 0)
    union = unstable.any(dim=0).nonzero().flatten()
    largest = int(unstable.sum(1).max()) if unstable.numel() else 0
    if unstable.shape[0] == 1 or 2 * largest > len(union):
        return Rows(union)
    order = torch.argsort(unstable.to(torch.uint8), dim=1, descending=True, stable=True)[:, :largest]
    return Rows(order, unstable.gather(1, order))


def crown_output_bounds(ops, rows, shape, in_bounds, x_L, x_U):
    """Bounds of the output neurons `rows` (flat indices (R,), or a Rows) of ops(x), whose output
    has `shape` (no batch): one backward pass per chunk of rows. Returns (lower, upper), (B, R)."""
    rows = rows if isinstance(rows, Rows) else Rows(rows)
    batch = x_L.shape[0]
    widest = max([math.prod(op.in_shape) for op in ops] + [math.prod(shape)])
    chunk = max(1, ROW_CHUNK_ELEMENTS // (2 * batch * widest))
    lowers, uppers = [], []
    for start in range(0, len(rows), chunk):
        spec = rows.spec(start, start + chunk, math.prod(shape), x_L.dtype)
        lower, upper = backward_bounds(ops, spec.reshape(*spec.shape[:2], *shape), in_bounds, x_L, x_U)
        lowers.append(lower)
        uppers.append(upper)
    return torch.cat(lowers, 1), torch.cat(uppers, 1)


def refine_unstable(ops, shape, in_bounds, reference, x_L, x_U):
    """Tighten the interval bounds `reference` of ops(x) by the backward relaxation, recomputing
    only the neurons that the reference leaves unstable (l < 0 < u) (unstable_rows).

    Where the reference already proves a ReLU stable its relaxation is exact, so nothing is
    gained there. The result is the intersection of both bounds: sound, and never looser.
    """
    lower, upper = (t.flatten(1) for t in reference)
    rows = unstable_rows(lower, upper)
    if len(rows) == 0:
        return reference
    new_lower, new_upper = crown_output_bounds(ops, rows, shape, in_bounds, x_L, x_U)
    lower = rows.write(lower, torch.maximum(rows.gather(lower), new_lower))
    upper = rows.write(upper, torch.minimum(rows.gather(upper), new_upper))
    return lower.view_as(reference[0]), upper.view_as(reference[1])


def crown_intermediate_pass(ops, x_L, x_U, only_unstable=False):
    """Bounds of every op's input (and the output), where the input of every activation is
    bounded by the backward relaxation from that layer; affine layers propagate intervals.

    only_unstable=False: every neuron by the backward relaxation, as auto_LiRPA's CROWN does.
    only_unstable=True: only neurons the interval bounds leave unstable, intersected with those
    (see refine_unstable): tighter and much faster, but no longer CROWN's exact numbers.
    Returns a list of len(ops) + 1 (lower, upper) pairs, like the interval pass.
    """
    bounds = [(x_L, x_U)]
    for index, op in enumerate(ops):
        if not isinstance(op, AffineOp) and index > 0 and not _interval_is_exact(ops[:index]):
            if only_unstable:
                bounds[index] = refine_unstable(ops[:index], op.in_shape, bounds, bounds[index], x_L, x_U)
            else:
                rows = torch.arange(math.prod(op.in_shape), device=x_L.device)
                lower, upper = crown_output_bounds(ops[:index], rows, op.in_shape, bounds, x_L, x_U)
                batch = x_L.shape[0]
                bounds[index] = (lower.reshape(batch, *op.in_shape), upper.reshape(batch, *op.in_shape))
        bounds.append(op.interval(*bounds[index]))
    return bounds
