"""Lower bounds of one specification row over a batch of sub-domains (beta-CROWN).

A sub-domain is the input box with some ReLUs fixed: split +1 means z >= 0 (the neuron is
active), -1 means z <= 0 (inactive), 0 means free. For x in the sub-domain the split neurons
are stable, so their pre-activation bounds are clamped at 0 and their relaxation is exact; the
input bounds of later ReLU layers are recomputed by CROWN from the clamped ones, intersected
with the root's. Each of these is valid on the sub-domain, so every bound below is sound for it.

The split constraints themselves enter through Lagrange multipliers (Wang et al. 2021): on the
sub-domain s_j z_j(x) >= 0, so for any beta_j >= 0
    c f(x) >= c f(x) - sum_j beta_j s_j z_j(x),
and the CROWN bound of the right-hand side over the whole box is a lower bound over the
sub-domain. The lower slopes of the free unstable ReLUs (alpha) and the betas are optimised by
projected Adam, per sub-domain, keeping the best bound of any iterate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from certtrain.bounds.backward import (
    concretize_lower,
    crown_intermediate_pass,
    refine_unstable,
    relu_backward_with_slopes,
)
from certtrain.bounds.graph import UnsupportedLayerError
from certtrain.bounds.ops import AffineOp, ReLUOp


@dataclass
class Bounded:
    """What bounding a batch of D sub-domains returns (all detached)."""

    lower: torch.Tensor  # (D,) lower bound of the row; +inf where the sub-domain is empty
    slopes: dict  # ReLU op index -> (D, n) the lower slopes reached (warm start of the children)
    betas: dict  # ReLU op index -> (D, n) the multipliers reached
    coefficients: dict  # ReLU op index -> (D, n) coefficient of the ReLU's output in the bound
    bounds: dict  # ReLU op index -> ((D, n), (D, n)) its input bounds on each sub-domain
    candidates: torch.Tensor  # (D, *input shape) the box corner minimising the final linear bound


def check_relu_network(ops, layer_index) -> None:
    for position, op in enumerate(ops):
        if not isinstance(op, (AffineOp, ReLUOp)):
            raise UnsupportedLayerError(
                f"layer {layer_index[position]} ({type(op).__name__.removesuffix('Op')}) cannot be split: "
                "branch and bound takes networks of affine layers and ReLUs"
            )


def root_bounds(ops, x_L, x_U):
    """Input bounds of every op over the whole box: CROWN where IBP leaves a ReLU unstable."""
    with torch.no_grad():
        return [
            (lo.detach(), up.detach()) for lo, up in crown_intermediate_pass(ops[:-1], x_L, x_U, only_unstable=True)
        ]


class SplitBounder:
    """Bounds of c ops(x) over sub-domains of one input box [x_L, x_U] (batch 1).

    c: (K,) one row for every sub-domain, or (D, K) one row per sub-domain (the root of several
    rows bounded in one call). root: root_bounds(ops, x_L, x_U), shared by the rows of a box.
    """

    def __init__(self, ops, x_L, x_U, c, iterations=20, lr_alpha=0.1, lr_beta=0.05, root=None, refine=True):
        self.ops, self.x_L, self.x_U = ops, x_L, x_U
        # refine: recompute the input bounds of later ReLU layers on each sub-domain (tighter; one
        # backward pass per unstable neuron and sub-domain, the cost of a sub-domain on a CNN)
        self.refine = refine
        self.c = c.reshape(-1, 1, c.shape[-1]).to(x_L.dtype)
        self.relus = [i for i, op in enumerate(ops) if isinstance(op, ReLUOp)]
        self.iterations, self.lr_alpha, self.lr_beta = iterations, lr_alpha, lr_beta
        self.root = root_bounds(ops, x_L, x_U) if root is None else root

    def neurons(self, index) -> int:
        return self.root[index][0][0].numel()

    def empty_splits(self, count=1) -> dict:
        return {i: torch.zeros(count, self.neurons(i), dtype=torch.int8, device=self.x_L.device) for i in self.relus}

    def domain_bounds(self, splits):
        """Input bounds of every op on each sub-domain: the root's, clamped by the splits, later
        ReLU layers refined by CROWN over the clamped earlier ones. Returns (bounds, empty)."""
        count = next(iter(splits.values())).shape[0] if splits else 1
        x_L, x_U = self._boxes(count)
        bounds = [(lo.expand(count, *lo.shape[1:]), up.expand(count, *up.shape[1:])) for lo, up in self.root]
        empty = torch.zeros(count, dtype=torch.bool, device=x_L.device)
        for position, index in enumerate(self.relus):
            shape = bounds[index][0].shape
            if self.refine and position > 0 and any(bool(splits[i].any()) for i in self.relus[:position]):
                bounds[index] = refine_unstable(
                    self.ops[:index], self.ops[index].in_shape, bounds, bounds[index], x_L, x_U
                )
            sign = splits[index].view(shape)
            lower = torch.where(sign > 0, bounds[index][0].clamp(min=0), bounds[index][0])
            upper = torch.where(sign < 0, bounds[index][1].clamp(max=0), bounds[index][1])
            empty |= (lower > upper).flatten(1).any(1)
            bounds[index] = (lower, upper)
            # the affine ops up to the next ReLU: interval image of the clamped bounds (read only
            # by refine_unstable's intersection, so these need only be sound)
            for after in range(index, len(self.ops) - 1):
                if after > index and isinstance(self.ops[after], ReLUOp):
                    break
                image = self.ops[after].interval(*bounds[after])
                old = bounds[after + 1]
                bounds[after + 1] = (torch.maximum(old[0], image[0]), torch.minimum(old[1], image[1]))
        return bounds, empty

    def _boxes(self, count):
        return self.x_L.expand(count, *self.x_L.shape[1:]), self.x_U.expand(count, *self.x_U.shape[1:])

    def _lower(self, bounds, slopes, betas, signs, record=None):
        """CROWN lower bound of c f - sum beta s z with the given slopes, (D,); and the input A."""
        count = bounds[0][0].shape[0]
        x_L, x_U = self._boxes(count)
        A, bias = self.c, None
        for index in range(len(self.ops) - 1, -1, -1):
            op = self.ops[index]
            if isinstance(op, ReLUOp):
                shape = bounds[index][0].shape
                if record is not None:
                    record[index] = A.detach().expand(count, *A.shape[1:]).reshape(count, -1)
                A, term = relu_backward_with_slopes(A, bounds[index], slopes[index].view(count, 1, *shape[1:]))
                A = A - (betas[index] * signs[index]).view(count, 1, *shape[1:])
            else:
                A, term = op.backward(A, bounds[index])
            if term is not None:
                bias = term if bias is None else bias + term
        return concretize_lower(A, bias, x_L, x_U)[:, 0], A

    def bound(self, splits, slopes=None, betas=None, iterations=None) -> Bounded:
        """Bound every sub-domain of `splits` ({ReLU index: (D, n) int8}), optimising alpha and beta
        from the given warm start (CROWN's slopes and zero betas where None)."""
        iterations = self.iterations if iterations is None else iterations
        bounds, empty = self.domain_bounds(splits)
        count = len(empty)
        dtype = self.x_L.dtype
        signs = {i: splits[i].to(dtype) for i in self.relus}
        slopes = {
            i: (slopes[i] if slopes is not None else self._crown_slopes(bounds[i]))
            .to(dtype)
            .clone()
            .requires_grad_(True)
            for i in self.relus
        }
        betas = {
            i: (
                betas[i]
                if betas is not None
                else torch.zeros(count, self.neurons(i), dtype=dtype, device=self.x_L.device)
            )
            .to(dtype)
            .mul(signs[i].abs())
            .clone()
            .requires_grad_(True)
            for i in self.relus
        }
        optimizer = None
        if iterations > 0:
            optimizer = torch.optim.Adam(
                [
                    {"params": list(slopes.values()), "lr": self.lr_alpha},
                    {"params": list(betas.values()), "lr": self.lr_beta},
                ]
            )
        best = torch.full((count,), -torch.inf, dtype=dtype, device=self.x_L.device)
        best_slopes = {i: s.detach().clone() for i, s in slopes.items()}
        best_betas = {i: b.detach().clone() for i, b in betas.items()}
        coefficients, candidates = {}, None
        for step in range(iterations + 1):
            record = {}
            with torch.enable_grad():
                lower, A = self._lower(bounds, slopes, betas, signs, record)
            improved = lower.detach() > best
            if improved.any() or step == 0:
                best = torch.where(improved, lower.detach(), best)
                for i in self.relus:
                    best_slopes[i][improved] = slopes[i].detach()[improved]
                    best_betas[i][improved] = betas[i].detach()[improved]
                    if i in coefficients:
                        coefficients[i][improved] = record[i][improved]
                    else:
                        coefficients[i] = record[i].clone()
                x_L, x_U = self._boxes(count)
                corner = torch.where(A.detach()[:, 0] > 0, x_L, x_U)
                candidates = (
                    corner
                    if candidates is None
                    else torch.where(improved.view(-1, *[1] * (corner.dim() - 1)), corner, candidates)
                )
            if step == iterations:
                break
            if bool((best > 0).all()):  # every sub-domain proved: more steps change no verdict
                break
            grads = torch.autograd.grad(-lower.sum(), list(slopes.values()) + list(betas.values()))
            for param, grad in zip(list(slopes.values()) + list(betas.values()), grads):
                param.grad = grad
            optimizer.step()
            with torch.no_grad():
                for s in slopes.values():
                    s.clamp_(0.0, 1.0)
                for i, b in betas.items():
                    b.clamp_(min=0.0).mul_(signs[i].abs())
        best = torch.where(empty, torch.full_like(best, torch.inf), best)
        flat = {i: (bounds[i][0].reshape(count, -1), bounds[i][1].reshape(count, -1)) for i in self.relus}
        return Bounded(best, best_slopes, best_betas, coefficients, flat, candidates)

    @staticmethod
    def _crown_slopes(bound):
        lower, upper = bound
        return (upper > -lower).to(lower.dtype).reshape(lower.shape[0], -1)
