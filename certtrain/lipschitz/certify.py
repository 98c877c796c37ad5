"""Certification of l-inf robustness from a network's Lipschitz bound.

The margin f_y - f_j moves by at most S[y, j] eps over the linf ball of radius eps, with S from
`certtrain.lipschitz.bound.margin_sensitivities` (the one source for the loss, the certifier
and the certified radius).
"""

from __future__ import annotations

import torch
from torch import nn

from certtrain.bounds import certified as bounds_certify
from certtrain.bounds import lower_bounds, margin_spec
from certtrain.lipschitz.bound import margin_sensitivities


def pairwise_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> (B, K) margins f_y - f_j, with +inf at j = y (never the binding pair)."""
    margins = logits.gather(1, y[:, None]) - logits
    return margins.scatter(1, y[:, None], float("inf"))


@torch.no_grad()
def certified_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest linf radius at which each sample is certified (0 when misclassified)."""
    margins = pairwise_margins(model(x), y)
    sens = margin_sensitivities(model, margins.shape[1]).to(margins)[y]  # (B, K): the true row
    radius = (margins / sens.clamp(min=1e-12)).min(dim=1).values
    return radius.clamp(min=0.0)


def lipschitz_margin_lower_bounds(model: nn.Module, logits: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor):
    """(B, K-1) lower bounds of f_y - f_j over the linf ball of radius eps, rows j != y in
    increasing j (the order of certtrain.bounds.margin_spec).

    Differentiable in `logits` and in the last layer's weight, so it can replace
    bound-propagation lower bounds in a robust loss; eps may be a float or one radius per sample.
    """
    batch, classes = logits.shape
    margins = logits.gather(1, y[:, None]) - logits
    sens = margin_sensitivities(model, classes).to(logits)[y]
    eps = torch.as_tensor(eps, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
    lower = margins - sens * eps
    # columns j != y in increasing j, by gather (a boolean mask would read its count back to the host)
    others = torch.arange(classes - 1, device=logits.device).expand(batch, -1)
    return lower.gather(1, others + (others >= y[:, None]))


@torch.no_grad()
def lipschitz_certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """(B,) bool: the Lipschitz certificate proves the prediction constant on the eps ball,
    with the bound engine's float32 slack (a bound positive only by rounding does not count)."""
    return bounds_certify(lipschitz_margin_lower_bounds(model, model(x), y, eps))


@torch.no_grad()
def certify_any(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int, bounds=("ibp", "crown-ibp")
) -> torch.Tensor:
    """(B,) bool: certified by the Lipschitz certificate or by any of `bounds` (engine methods).

    The engine runs only on the samples the Lipschitz certificate leaves open.
    """
    try:
        certified = lipschitz_certified(model, x, y, eps)
    except ValueError:  # a layer without a Lipschitz rule (e.g. Conv2d): the bound methods decide alone
        certified = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    for method in bounds:
        open_ = ~certified
        if not open_.any():
            break
        xo, yo = x[open_], y[open_]
        box = (xo - eps).clamp(0, 1), (xo + eps).clamp(0, 1)
        lower = lower_bounds(model, *box, margin_spec(yo, num_classes), method=method)
        certified[open_] = bounds_certify(lower)
    return certified
