"""Loss fusion: an upper bound of the worst-case cross-entropy from ONE backward row per sample.

The robust CE of the margins, CE(-m, y), needs the K - 1 margin lower bounds m, so the backward
relaxation starts from K - 1 rows. Here the CE itself is bounded. With z_j = f_j(x') - f_y(x'),

    CE(f(x'), y) = log(1 + sum_{j != y} exp(z_j)) = M + log(exp(-M) + sum_j exp(z_j - M))

for any shift M (we take M = max(0, max_j u_j), so every exp below is at most 1). Over the
interval [l_j, u_j] of z_j (from IBP, which CROWN-IBP computes anyway) exp lies below its chord,
exp(z - M) <= a_j (z - u_j) + exp(u_j - M), a_j = (exp(u_j - M) - exp(l_j - M)) / (u_j - l_j), so

    sum_j exp(z_j - M) <= sum_j a_j z_j + const = (sum_j a_j (e_j - e_y))^T f(x') + const,

one linear function of the logits per sample: its maximum over the box is one backward pass.
The sum is also at most sum_j exp(u_j - M) (the interval bound); we keep the smaller of the
two, so the fused bound is never above CE(-m_IBP, y). log is increasing, so no relaxation of
log is needed (the tangent lower line of exp would only serve a lower bound of CE).

Where u_j - l_j is tiny the chord slope is ill-conditioned; there we use slope exp(l_j - M)
through (u_j, exp(u_j - M)), which lies above exp on [l_j, u_j] for any width (the integral of
exp over [z, u] is at least exp(l) (u - z)).

How it compares with CE(-m_CROWN-IBP, y): neither dominates. The fused bound couples the K - 1
margins (one linear function, so a perturbation that raises one wrong logit must be paid for
by the others) but pays the chord gap of exp on IBP's interval of z_j; CE(-m) bounds every
margin by its own best perturbation but each margin's relaxation is exact in the exp. Measured
in results/cost/README.md (`scripts/fusion_tightness.py`).

CROWN-IBP's ramp mixes with IBP at the loss level for the fused loss:
    L = beta * CE_fused + (1 - beta) * CE(-m_IBP, y)
(both are upper bounds of the worst-case CE, so is any convex combination); the unfused loss
mixes the margins instead. At beta = 0 the backward pass is skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from certtrain.bounds.backward import backward_lower, crown_intermediate_pass
from certtrain.bounds.interval import interval_pass, interval_with_spec

# Below this interval width (logit units) the chord slope is replaced by the always-sound
# slope exp(l): the two differ by less than 1e-3 relative there.
CHORD_MIN_WIDTH = 1e-3


def exp_chord(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(slope, intercept) of a line above exp on [lower, upper] (elementwise; upper <= 0 keeps
    every value <= 1). The chord where the interval is wide enough, else slope exp(lower)
    through (upper, exp(upper))."""
    exp_lower, exp_upper = lower.exp(), upper.exp()
    width = upper - lower
    wide = width > CHORD_MIN_WIDTH
    chord = (exp_upper - exp_lower) / torch.where(wide, width, torch.ones_like(width))
    slope = torch.where(wide, chord, exp_lower)
    return slope, exp_upper - slope * upper


def _fused_from_intermediates(ops, in_bounds, C, x_L, x_U):
    """(fused CE upper bound, CE(-m_IBP)) per sample, with C the (B, K-1, K) margin spec and
    in_bounds the bounds of every op's input (for the backward pass)."""
    margin_lower, margin_upper = interval_with_spec(ops[-1], *in_bounds[len(ops) - 1], C)
    z_lower, z_upper = -margin_upper, -margin_lower  # z_j = f_j - f_y
    ibp_ce = log1p_sum_exp(z_upper)
    shift = z_upper.detach().amax(dim=1, keepdim=True).clamp(min=0.0)
    slope, intercept = exp_chord(z_lower - shift, z_upper - shift)
    # lower bound of sum_j a_j m_j = -(upper bound of sum_j a_j z_j), one row per sample
    row = slope.unsqueeze(1).matmul(C)  # (B, 1, K)
    linear_lower = backward_lower(ops, row, in_bounds, x_L, x_U).squeeze(1)
    linear_sum = -linear_lower - (slope * shift).sum(1) + intercept.sum(1)
    interval_sum = (z_upper - shift).exp().sum(1)
    bounded_sum = torch.minimum(linear_sum, interval_sum).clamp(min=0.0)
    shift = shift.squeeze(1)
    fused = shift + torch.log((-shift).exp() + bounded_sum)
    return torch.minimum(fused, ibp_ce), ibp_ce


def log1p_sum_exp(z: torch.Tensor) -> torch.Tensor:
    """log(1 + sum_j exp(z_j)) per row, stably: CE with a 0 logit for the true class."""
    return torch.logsumexp(F.pad(z, (1, 0)), dim=1)


def fused_and_ibp_ce(ops, C, x_L, x_U, method: str = "crown-ibp"):
    """(fused upper bound, IBP upper bound) of max_box CE(f(x'), y); ops from build_ops."""
    if method == "crown-ibp":
        in_bounds = interval_pass(ops[:-1], x_L, x_U)
    elif method == "crown":
        in_bounds = crown_intermediate_pass(ops[:-1], x_L, x_U)
    else:
        raise ValueError(f"loss fusion needs a backward pass: method 'crown-ibp' or 'crown', got {method!r}")
    return _fused_from_intermediates(ops, in_bounds, C, x_L, x_U)
