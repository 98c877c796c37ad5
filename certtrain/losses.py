"""Certified-training losses: kappa * CE(f(x), y) + (1 - kappa) * L_rob.

The machinery every method's robust loss is made of: the input box, CE(-m, y) of the margin
lower bounds m (padded with 0 at the true class), the per-sample worst-case CE bound, and the
global loss over radii (gm_loss) of any per-sample loss. The methods themselves are records in
certtrain.methods.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from certtrain.bounds import ce_upper_bound, crown_ibp_and_ibp_lower, lower_bounds, margin_spec, other_classes

# gm.estimator: all | sampled | stratified (see gm_loss and radius_draw)
GM_ESTIMATORS = ("all", "sampled", "stratified")


@dataclass(frozen=True)
class RobustContext:
    """What a robust loss may use at one training step."""

    model: nn.Module
    x: torch.Tensor  # clean batch in [0, 1]
    y: torch.Tensor
    eps: float  # current radius eps_t
    beta: float  # CROWN-IBP mixing weight
    gm_n: int | None = 1  # radii of the global loss; None: the method's default (certtrain.methods)
    gm_weights: str = "inverse"
    num_classes: int = 10
    logits: torch.Tensor | None = None  # f(x), when the caller has it already
    method: object = None  # the method config, for method-specific options (method=lipschitz)
    gm_estimator: str = "all"  # all | sampled | stratified (see GM_ESTIMATORS)
    loss_fusion: bool = False  # bound the CE itself from one backward row (certtrain.bounds.fusion)
    generator: torch.Generator | None = None  # the run's seeded generator for the radius draws
    # (start, stop, global batch size) when x is one rank's shard of a global batch (torchrun):
    # the radii are drawn for the global batch and this shard's draws used
    batch_shard: tuple[int, int, int] | None = None


RobustLoss = Callable[[RobustContext], torch.Tensor]


def input_box(x: torch.Tensor, radius: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf ball of `radius` around x, clipped to the pixel range [0, 1]."""
    return (x - radius).clamp(0.0, 1.0), (x + radius).clamp(0.0, 1.0)


def robust_cross_entropy(margin_lower: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CE(-m, y): m (B, K-1) lower bounds of f_y - f_j for j != y in increasing j."""
    batch, others = margin_lower.shape
    worst_logits = margin_lower.new_zeros(batch, others + 1)
    worst_logits = worst_logits.scatter(1, other_classes(y, others + 1), -margin_lower)
    return F.cross_entropy(worst_logits, y, reduction="none")


def margin_lower_bounds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_lower, x_upper, beta: float, num_classes: int
) -> torch.Tensor:
    """beta * m_CROWN-IBP + (1 - beta) * m_IBP; the CROWN pass is skipped at beta = 0 and the
    IBP pass at beta = 1; in between both share one interval pass. `x` is the clean batch
    (BatchNorm statistics come from it)."""
    spec = margin_spec(y, num_classes)
    if beta <= 0.0:
        return lower_bounds(model, x_lower, x_upper, spec, method="ibp", x=x)
    if beta >= 1.0:
        return lower_bounds(model, x_lower, x_upper, spec, method="crown-ibp", x=x)
    crown, ibp = crown_ibp_and_ibp_lower(model, x_lower, x_upper, spec, x=x)
    return beta * crown + (1.0 - beta) * ibp


def robust_ce_per_sample(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_lower,
    x_upper,
    beta: float,
    num_classes: int,
    loss_fusion: bool = False,
) -> torch.Tensor:
    """Per-sample upper bound of the worst-case CE over the box, as the method trains on it.

    Unfused: CE(-m, y) of the beta-mixed margins. Fused: beta * CE_fused + (1 - beta) * CE(-m_IBP)
    (certtrain.bounds.fusion: the backward pass starts from one row per sample).
    """
    if not loss_fusion or beta <= 0.0:
        return robust_cross_entropy(margin_lower_bounds(model, x, y, x_lower, x_upper, beta, num_classes), y)
    fused, ibp = ce_upper_bound(model, x_lower, x_upper, y, method="crown-ibp", x=x, with_ibp=True)
    return fused if beta >= 1.0 else beta * fused + (1.0 - beta) * ibp


def radius_weights(n: int, scheme: str) -> torch.Tensor:
    """Weights c_1..c_n of the radii r_i = (i / n) eps, normalised to sum to 1."""
    if n < 1:
        raise ValueError(f"gm.n={n}: the global loss needs at least one radius, use gm.n >= 1")
    i = torch.arange(1, n + 1, dtype=torch.float64)
    raw = {
        "inverse": 1.0 / i,  # c_i proportional to 1 / r_i: the GM loss of Liang et al.
        "uniform": torch.ones_like(i),
        "inverse_square": 1.0 / i**2,
        "linear_decreasing": n + 1 - i,
        "increasing": i,  # a control: weights the largest radius most
    }
    if scheme not in raw:
        raise ValueError(f"gm.weights={scheme!r} is not known; choose one of {', '.join(raw)}")
    return (raw[scheme] / raw[scheme].sum()).float()


def radius_grid(eps: float, n: int) -> torch.Tensor:
    """r_i = (i / n) eps for i = 1..n (r_n = eps exactly)."""
    return torch.tensor([eps * i / n for i in range(1, n + 1)], dtype=torch.float32)


def stack_radii_by_default(device: torch.device) -> bool:
    """Whether the N radii share one bound call (boxes stacked along the batch).

    Stacking fills an accelerator; on a CPU the kernels are already busy at one radius and the
    stacked tensors fall out of cache: measured on 2 CPU cores, dm_small, batch 256, N = 4,
    CROWN-IBP step 1184 ms stacked vs 978 ms one radius after another.
    """
    return device.type != "cpu"


# Per-sample robust loss at a radius: (x, radius broadcastable to x, y) -> (B,) losses. Every
# method that trains at a radius writes one; gm_loss turns it into the local or the global loss.
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def gm_loss(ctx: RobustContext, per_sample: PerSampleLoss, stack_radii: bool | None = None) -> torch.Tensor:
    """sum_i c_i mean_batch L(x, r_i, y) over the radii r_i = (i / n) eps, or an unbiased estimate
    of it (ctx.gm_estimator, see radius_draw), for any per-sample loss L. With n = 1 this is
    exactly the local loss mean_batch L(x, eps, y). stack_radii=None chooses by device (see
    stack_radii_by_default); it only matters for the `all` estimator."""
    if ctx.gm_estimator not in GM_ESTIMATORS:
        raise ValueError(f"gm.estimator={ctx.gm_estimator!r} is not known; choose one of {', '.join(GM_ESTIMATORS)}")
    n, batch = ctx.gm_n, len(ctx.x)
    pixel = [1] * (ctx.x.dim() - 1)  # a radius per sample broadcasts over its pixels
    radii = radius_grid(ctx.eps, n).to(ctx.x.device)
    host_weights = radius_weights(n, ctx.gm_weights)  # the draws are made on the CPU
    weights = host_weights.to(ctx.x.device)
    if n > 1 and ctx.gm_estimator != "all":
        if ctx.batch_shard is None:
            index, sample_weight = radius_draw(host_weights, batch, ctx.gm_estimator, ctx.generator)
        else:  # this rank's share of the global draw, weighted as a mean over the shard
            begin, end, total = ctx.batch_shard
            index, sample_weight = radius_draw(host_weights, total, ctx.gm_estimator, ctx.generator)
            index, sample_weight = index[begin:end], sample_weight[begin:end] * (total / batch)
        index, sample_weight = index.to(ctx.x.device), sample_weight.to(ctx.x.device)
        return (sample_weight * per_sample(ctx.x, radii[index].view(-1, *pixel), ctx.y)).sum()
    if stack_radii is None:
        stack_radii = stack_radii_by_default(ctx.x.device)
    if n == 1 or not stack_radii:
        per_radius = [per_sample(ctx.x, radius, ctx.y).mean() for radius in radii]
        return (weights * torch.stack(per_radius)).sum()
    stacked = ctx.x.repeat(n, *pixel)
    per_sample_radius = radii.repeat_interleave(batch).view(-1, *pixel)
    per_radius = per_sample(stacked, per_sample_radius, ctx.y.repeat(n)).view(n, batch).mean(dim=1)
    return (weights * per_radius).sum()


def bound_loss(ctx: RobustContext, beta: float) -> PerSampleLoss:
    """The per-sample loss of IBP (beta 0) and CROWN-IBP: the worst-case CE bound over the box.
    BatchNorm statistics come from the clean batch ctx.x whatever x is (stacked radii repeat it)."""

    def per_sample(x: torch.Tensor, radius: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_lower, x_upper = input_box(x, radius)
        return robust_ce_per_sample(ctx.model, ctx.x, y, x_lower, x_upper, beta, ctx.num_classes, ctx.loss_fusion)

    return per_sample


def global_robust_loss(ctx: RobustContext, beta: float, stack_radii: bool | None = None) -> torch.Tensor:
    """The GM loss over IBP (beta 0) or CROWN-IBP margins: gm_loss of bound_loss."""
    return gm_loss(ctx, bound_loss(ctx, beta), stack_radii)


def radius_draw(
    weights: torch.Tensor, batch: int, estimator: str, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(radius index, loss weight) per sample, so that sum_b weight_b CE_b(r_index_b) is an unbiased
    estimate of sum_i c_i mean_b CE_b(r_i) (and so is its gradient).

    sampled:    index_b ~ c independently, weight 1 / B.
    stratified: n_i = B c_i samples per radius (rounded by largest remainder, at least one each),
                assigned by a random permutation, weight c_i / n_i: each sample is equally likely
                in every stratum, so the estimate is unbiased with less variance from the counts.
                A batch smaller than N cannot fill every stratum; it is drawn as `sampled`.
    Drawn on the CPU from `generator` (the run's seeded generator, saved in its checkpoint), from
    CPU weights: reading them back from an accelerator would synchronise every step.
    """
    if weights.device.type != "cpu":
        raise ValueError("radius_draw takes the weights on the CPU (radius_weights' output)")
    weights = weights.detach().double()
    n = len(weights)
    if estimator == "stratified" and batch >= n:
        counts = _largest_remainder_counts(weights, batch)
        strata = torch.repeat_interleave(torch.arange(n), counts)
        index = strata[torch.randperm(batch, generator=generator)]
        sample_weight = (weights / counts)[index]
        return index, sample_weight.float()
    index = torch.multinomial(weights, batch, replacement=True, generator=generator)
    return index, torch.full((batch,), 1.0 / batch)


def _largest_remainder_counts(weights: torch.Tensor, total: int) -> torch.Tensor:
    """Integer counts proportional to weights, summing to total, each at least 1 (total >= len)."""
    n = len(weights)
    share = weights * (total - n)  # one sample per stratum first, the rest by weight
    counts = share.floor().long()
    left = total - n - int(counts.sum())
    counts[torch.argsort(share - counts, descending=True)[:left]] += 1
    return counts + 1


def training_loss(
    robust_fn: RobustLoss | None, ctx: RobustContext, kappa: float, logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """kappa * CE(f(x), y) + (1 - kappa) * L_rob; also returns the parts for logging, as
    detached tensors (reading them is a host synchronisation: log them every log_every steps).

    The robust term is skipped (not just weighted by 0) when kappa is 1 or eps is 0, so warm-up
    epochs cost what plain training costs.
    """
    logits = ctx.model(ctx.x) if logits is None else logits
    clean = F.cross_entropy(logits, ctx.y)
    if robust_fn is None or kappa >= 1.0 or ctx.eps <= 0.0:
        return clean, {"clean_ce": clean.detach()}
    robust = robust_fn(replace(ctx, logits=logits))
    # At kappa = 0 the clean term stays out of the graph: 0 * clean would still cost a backward
    # pass through the clean forward (IBP step, dm_small, batch 256: 71 -> 56 ms median).
    loss = robust if kappa <= 0.0 else kappa * clean + (1.0 - kappa) * robust
    return loss, {"clean_ce": clean.detach(), "robust_ce": robust.detach()}
