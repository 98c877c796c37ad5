"""Margin-aware losses for Lipschitz classifiers.

A Lipschitz network cannot scale its logits up at will, so plain cross-entropy never saturates
and the margins it produces stay small. A temperature (logits * T) or a hinge with an explicit
margin makes the loss care about the margin, which is what the certificate needs. The robust
forms act on the margins the Lipschitz bound certifies over the eps ball.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from certtrain.lipschitz.certify import lipschitz_margin_lower_bounds

LOSSES = ("ce", "hinge", "dynamic_hinge")


def temperature_cross_entropy(logits: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of logits * temperature (divided by it, so the loss scale stays comparable)."""
    return F.cross_entropy(logits * temperature, y) / temperature


def multiclass_hinge(logits: torch.Tensor, y: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    """mean relu(margin - (f_y - max_{j != y} f_j)); margin may be a float or one per sample (B,)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return F.relu(torch.as_tensor(margin, dtype=logits.dtype) - (true - others)).mean()


def binary_hinge(score: torch.Tensor, target: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    """mean relu(margin - t * f) for one score per sample and targets t in {0, 1} (mapped to -1/+1)."""
    sign = 2.0 * target.to(score.dtype) - 1.0
    return F.relu(torch.as_tensor(margin, dtype=score.dtype) - sign * score.reshape(sign.shape)).mean()


def half_distance_to_other_class(x: torch.Tensor, y: torch.Tensor, p: float = float("inf")) -> torch.Tensor:
    """(B,) half the l_p distance from each sample to the nearest sample of another class in the
    same batch (+inf where the batch holds no other class): the largest radius at which the
    two could both be certified. Within a batch it over-estimates the data set's distance."""
    flat = x.flatten(1)
    distance = torch.cdist(flat, flat, p=p)
    same = y[:, None] == y[None, :]
    return distance.masked_fill(same, float("inf")).min(dim=1).values / 2


def lipschitz_robust_loss(
    model: nn.Module,
    logits: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    loss: str,
    temperature: float,
    margin: float,
    x: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean margin-aware loss on the certified (Lipschitz lower-bound) margins.

    ce: CE(-T m_low(eps), y) / T.  hinge: relu(margin - min_j m_low(eps)).
    dynamic_hinge (Kitouni et al.): relu(-min_j m_low(r_i)) with r_i half the distance of x_i to
    the nearest other-class sample of the batch, so each sample is pushed to be certified at the
    largest radius its neighbourhood allows (eps is not used; x is needed).
    """
    if loss == "dynamic_hinge":
        if x is None:
            raise ValueError("the dynamic hinge needs the inputs x (the margin is half the distance between classes)")
        radius = half_distance_to_other_class(x.detach(), y)
        radius = torch.where(torch.isfinite(radius), radius, torch.zeros_like(radius))
        lower = lipschitz_margin_lower_bounds(model, logits, y, radius)
        return F.relu(-lower.min(dim=1).values).mean()
    lower = lipschitz_margin_lower_bounds(model, logits, y, eps)  # (B, K-1), j != y
    if loss == "ce":
        # CE(-m, y) with m padded by 0 at the true class: log(1 + sum_j exp(-T m_j)) / T
        padded = torch.cat([lower.new_zeros(len(lower), 1), -temperature * lower], dim=1)
        return F.cross_entropy(padded, lower.new_zeros(len(lower), dtype=torch.long)) / temperature
    if loss == "hinge":
        return F.relu(margin - lower.min(dim=1).values).mean()
    raise ValueError(f"unknown Lipschitz loss {loss!r}; choose one of {LOSSES}")
