"""Sound bounds of C f(x') over an L-inf box, for feed-forward nn.Sequential models.

    from certtrain.bounds import compute_bounds, margin_spec
    C = margin_spec(y, num_classes)                                   # (B, K-1, K)
    lb, ub = compute_bounds(model, x_L, x_U, C=C, method="crown-ibp")  # (B, K-1) each

Methods:
  ibp        interval propagation; with C, C is folded into the last Linear layer.
  crown-ibp  intermediate bounds by IBP, then one backward linear relaxation from C.
  crown      every activation's input bounded by the backward relaxation as well.
  alpha-crown  crown with the unstable ReLUs' lower slopes optimised per spec row (certtrain.bounds.alpha);
             the best bound of any iterate (never looser than crown in the tests); not differentiable.
  alpha-crown-full  alpha-crown that then optimises the input bounds of every later ReLU layer the
             same way and the output's again on them; never looser than alpha-crown, and as tight
             as auto_LiRPA's CROWN-Optimized on every row measured (results/alpha_crown/): the
             certifier to pick for verification. 1-5x alpha-crown's cost (measured).
Unstable ReLU (l < 0 < u): upper line through (l, 0) and (u, u); lower line a x with a = 1 if
u > -l else 0. Bounds are differentiable in the model's parameters.

Boxes are per sample, so several radii can be stacked along the batch. BatchNorm in training
mode is bounded as the affine map of the clean batch's statistics: pass that batch as `x`.

Floating point: the engine evaluates the relaxations in the dtype of x_L (float32 weights are
cast up for float64 boxes) with round-to-nearest arithmetic and no directed rounding. The bounds
are therefore sound for exact arithmetic, and the float32 results differ from the float64
evaluation of the same relaxation by rounding only: the test suite checks
|bound32 - bound64| <= FLOAT32_SLACK * (1 + |bound64|) on random networks. A certificate decided
in float32 should keep that slack (see `certified`); for exact-grade answers use float64 boxes.
"""

from __future__ import annotations

import torch
from torch import nn

from certtrain.bounds.alpha import alpha_crown_lower
from certtrain.bounds.backward import backward_bounds, backward_lower, crown_intermediate_pass
from certtrain.bounds.fusion import fused_and_ibp_ce, log1p_sum_exp
from certtrain.bounds.graph import UnsupportedLayerError, build_ops, flatten_layers
from certtrain.bounds.interval import ibp_bounds, identity_spec, interval_pass, interval_with_spec

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown", "alpha-crown-full")
# Relative difference between float32 and float64 bounds that the tests guarantee.
FLOAT32_SLACK = 1e-4

__all__ = [
    "FLOAT32_SLACK",
    "METHODS",
    "UnsupportedLayerError",
    "ce_upper_bound",
    "certified",
    "compute_bounds",
    "crown_ibp_and_ibp_lower",
    "flatten_layers",
    "intermediate_bounds",
    "lower_bounds",
    "margin_spec",
    "other_classes",
    "tight_crown_lower",
]


def other_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K-1) the classes j != y of each sample in increasing order, on y's device. Built by
    arithmetic, not boolean indexing, so no step waits on the device (and shapes stay static)."""
    j = torch.arange(num_classes - 1, device=y.device).expand(len(y), -1)
    return j + (j >= y.unsqueeze(1)).long()


def margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K-1, K) specification: for each sample, rows e_y - e_j for every j != y, j increasing.

    Labels on the CPU are range-checked; on an accelerator the check would read them back to
    the host (a synchronisation per training step), so an out-of-range label there fails in
    the indexing instead.
    """
    y = torch.as_tensor(y).long().flatten()
    if y.device.type == "cpu" and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    # Made on the labels' device: a CPU eye indexed by CUDA labels fails on the first GPU step.
    eye = torch.eye(num_classes, device=y.device)
    return eye[y].unsqueeze(1) - eye[other_classes(y, num_classes)]


def certified(lower: torch.Tensor, slack: float = FLOAT32_SLACK) -> torch.Tensor:
    """Samples whose every margin lower bound is positive with room for float32 rounding.

    lower: (B, S) margin lower bounds. A bound computed in float32 must exceed
    slack * (1 + |lower|) so that the float64 bound of the same relaxation is positive too.
    """
    return (lower > slack * (1 + lower.abs())).all(dim=1)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; choose one of {METHODS}")


def _prepare(model, x_L, x_U, x):
    if x_L.shape != x_U.shape:
        raise ValueError(f"x_L {tuple(x_L.shape)} and x_U {tuple(x_U.shape)} must have the same shape")
    if not x_L.is_floating_point():
        raise ValueError(f"boxes must be float tensors, got {x_L.dtype}")
    empty_box = "every entry of x_L must be <= x_U (an empty box has no bounds)"
    if x_L.device.type == "cpu":
        if (x_L > x_U).any():
            raise ValueError(empty_box)
    else:  # checked on the device, so a training step does not wait for the answer
        torch._assert_async((x_L <= x_U).all(), empty_box)
    return build_ops(model, x, x_L)


def _check_spec(C, x_L, out_shape):
    if C.dim() == 2:
        C = C.expand(x_L.shape[0], *C.shape)
    if C.dim() != 3 or C.shape[0] != x_L.shape[0] or (C.shape[2],) != out_shape:
        raise ValueError(f"C must be (B, S, K) with B={x_L.shape[0]} and K={out_shape}, got {tuple(C.shape)}")
    return C.to(device=x_L.device, dtype=x_L.dtype)


def compute_bounds(
    model: nn.Module,
    x_L: torch.Tensor,
    x_U: torch.Tensor,
    C: torch.Tensor | None = None,
    method: str = "crown-ibp",
    x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of C f(x') for every x' in [x_L, x_U]: (B, S) each.

    With C=None the bounds are of the logits themselves, (B, K).
    """
    _check_method(method)
    ops, _, out_shape = _prepare(model, x_L, x_U, x)
    if C is None:
        if len(out_shape) != 1:
            raise ValueError(f"the model's output has shape {out_shape}; bounds need flat logits")
        if method == "ibp":
            return ibp_bounds(ops, x_L, x_U)
        C = identity_spec(x_L.shape[0], out_shape[0], x_L)
    C = _check_spec(C, x_L, out_shape)
    if method == "ibp":
        return ibp_bounds(ops, x_L, x_U, C)
    if method.startswith("alpha-crown"):  # rows [C; -C] optimised one by one: the upper bound is a lower one
        rows = C.shape[1]
        lower = alpha_crown_lower(
            ops, torch.cat((C, -C), dim=1), x_L, x_U, optimise_intermediate=method == "alpha-crown-full"
        )
        return lower[:, :rows], -lower[:, rows:]
    return backward_bounds(ops, C, _intermediate(ops, x_L, x_U, method), x_L, x_U)


def lower_bounds(model, x_L, x_U, C, method="ibp", x=None) -> torch.Tensor:
    """Lower bounds of C f(x') alone (B, S): what robust training losses need, at lower cost."""
    _check_method(method)
    ops, _, out_shape = _prepare(model, x_L, x_U, x)
    C = _check_spec(C, x_L, out_shape)
    if method == "ibp":
        return ibp_bounds(ops, x_L, x_U, C)[0]
    if method.startswith("alpha-crown"):
        return alpha_crown_lower(ops, C, x_L, x_U, optimise_intermediate=method == "alpha-crown-full")
    return backward_lower(ops, C, _intermediate(ops, x_L, x_U, method), x_L, x_U)


def tight_crown_lower(model, x_L, x_U, C, x=None) -> torch.Tensor:
    """CROWN as a verifier runs it: intermediate bounds by CROWN intersected with IBP's, the
    result at least IBP's bound of each row (alpha-CROWN's first iterate, so alpha-CROWN is never
    looser). Unlike plain `crown` it never certifies less than IBP."""
    ops, _, out_shape = _prepare(model, x_L, x_U, x)
    return alpha_crown_lower(ops, _check_spec(C, x_L, out_shape), x_L, x_U, iterations=0)


def crown_ibp_and_ibp_lower(model, x_L, x_U, C, x=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(CROWN-IBP, IBP) lower bounds of C f(x') from ONE interval pass: what the CROWN-IBP ramp
    mixes (beta * CROWN-IBP + (1 - beta) * IBP) costs one pass less than two lower_bounds calls."""
    ops, _, out_shape = _prepare(model, x_L, x_U, x)
    C = _check_spec(C, x_L, out_shape)
    in_bounds = interval_pass(ops[:-1], x_L, x_U)
    ibp = interval_with_spec(ops[-1], *in_bounds[-1], C)[0]
    return backward_lower(ops, C, in_bounds, x_L, x_U), ibp


def ce_upper_bound(model, x_L, x_U, y, method="crown-ibp", x=None, with_ibp=False):
    """Per-sample upper bound of max over the box of CE(f(x'), y), by loss fusion: the backward
    pass starts from one row per sample instead of K - 1 (see certtrain.bounds.fusion).

    method: "ibp" (CE(-m_IBP, y)), "crown-ibp" or "crown" (intermediate bounds by CROWN).
    with_ibp=True also returns CE(-m_IBP, y), which the fused bound never exceeds.
    """
    _check_method(method)
    ops, _, out_shape = _prepare(model, x_L, x_U, x)
    if len(out_shape) != 1:
        raise ValueError(f"the model's output has shape {out_shape}; the CE bound needs flat logits")
    C = _check_spec(margin_spec(y.to(x_L.device), out_shape[0]), x_L, out_shape)
    if method == "ibp":
        ibp = log1p_sum_exp(-ibp_bounds(ops, x_L, x_U, C)[0])
        return (ibp, ibp) if with_ibp else ibp
    fused, ibp = fused_and_ibp_ce(ops, C, x_L, x_U, method)
    return (fused, ibp) if with_ibp else fused


def _intermediate(ops, x_L, x_U, method):
    """Bounds of every op's input for the backward pass."""
    if method == "crown-ibp":
        return interval_pass(ops[:-1], x_L, x_U)
    return crown_intermediate_pass(ops[:-1], x_L, x_U)


def intermediate_bounds(
    model, x_L, x_U, method="ibp", x=None, only_unstable=False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Bounds of the input of every layer of flatten_layers(model), and of the output last.

    method "ibp" propagates intervals; "crown" bounds the input of every activation by the
    backward relaxation (interval propagation through affine layers in between).
    only_unstable (crown): recompute only neurons the interval bounds leave unstable and
    intersect with those; tighter and faster, which is what a verifier wants, but not
    auto_LiRPA's CROWN numbers.
    """
    if method not in ("ibp", "crown"):
        raise ValueError(f"intermediate bounds come from 'ibp' or 'crown', got {method!r}")
    ops, layer_index, _ = _prepare(model, x_L, x_U, x)
    if method == "ibp":
        op_bounds = interval_pass(ops, x_L, x_U)
    else:
        op_bounds = crown_intermediate_pass(ops, x_L, x_U, only_unstable=only_unstable)
    layers = flatten_layers(model)
    result, op = [], 0
    for position in range(len(layers)):
        while op < len(layer_index) and layer_index[op] < position:
            op += 1
        result.append(op_bounds[op])
    result.append(op_bounds[-1])
    return result
