"""Certification of l-inf robustness from a network's Lipschitz bound.

If the logit map is L-Lipschitz from linf to linf, each logit moves by at most L * eps, so the
margin f_y - f_j moves by at most 2 L eps ("whole map"). Tighter ("per pair"): split the model
into a body h (Lipschitz constant L_body, linf -> linf) and a last linear layer W; then
(w_y - w_j) . h moves by at most ||w_y - w_j||_1 * L_body * eps, and the bias cancels.
"""

from __future__ import annotations

import torch
from torch import nn

from certtrain.models.lipschitz import lipschitz_bound


def pairwise_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> (B, K) margins f_y - f_j, with +inf at j = y (never the binding pair)."""
    margins = logits.gather(1, y[:, None]) - logits
    return margins.scatter(1, y[:, None], float("inf"))


def _split_last_linear(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear):
        return model[:-1], model[-1]
    return None


def margin_sensitivities(model: nn.Module, num_classes: int) -> torch.Tensor:
    """(K, K) matrix S with S[y, j] an upper bound of how much f_y - f_j can change per unit of
    linf input change. Uses the per-pair rule when the model is a Sequential ending with a Linear
    layer and the whole-map rule (2 L) otherwise; takes the smaller of the two entrywise."""
    whole = 2.0 * lipschitz_bound(model, "inf")
    split = _split_last_linear(model)
    if split is None:
        return torch.full((num_classes, num_classes), whole)
    body, last = split
    weight = last.weight.detach()
    pair_rows = (weight[:, None, :] - weight[None, :, :]).abs().sum(dim=2)  # ||w_y - w_j||_1
    per_pair = pair_rows * lipschitz_bound(body, "inf")
    return torch.clamp(per_pair, max=whole)


@torch.no_grad()
def certified_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest linf radius at which each sample is certified (0 when misclassified)."""
    margins = pairwise_margins(model(x), y)
    sens = margin_sensitivities(model, margins.shape[1]).to(margins)[y]  # (B, K): the sensitivities of the true row
    radius = (margins / sens.clamp(min=1e-12)).min(dim=1).values
    return radius.clamp(min=0.0)


@torch.no_grad()
def lipschitz_certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """(B,) bool: the Lipschitz certificate proves the prediction constant on the eps ball.

    Uses the bound engine's float32 slack, so a bound that is positive only by rounding does not count.
    """
    from certtrain.bounds import certified

    logits = model(x)
    return certified(lipschitz_margin_lower_bounds(model, logits, y, eps))


def lipschitz_margin_lower_bounds(model: nn.Module, logits: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor):
    """(B, K-1) lower bounds of f_y - f_j over the linf ball of radius eps, rows j != y in
    increasing j (the order of certtrain.bounds.margin_spec), from the Lipschitz sensitivities.

    Differentiable in `logits` (and in the weights through the sensitivities), so it can replace
    bound-propagation lower bounds in a robust loss; eps may be a float or one radius per sample.
    """
    batch, classes = logits.shape
    margins = logits.gather(1, y[:, None]) - logits
    sens = _differentiable_sensitivities(model, classes).to(logits)[y]
    eps = torch.as_tensor(eps, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
    lower = margins - sens * eps
    keep = torch.ones_like(lower, dtype=torch.bool).scatter(1, y[:, None], False)
    return lower[keep].view(batch, classes - 1)


def _differentiable_sensitivities(model: nn.Module, num_classes: int) -> torch.Tensor:
    """margin_sensitivities with gradients flowing into the last layer's weight (the body's
    constant is taken as a number: in a Lipschitz net it is fixed by construction)."""
    split = _split_last_linear(model)
    if split is None:
        return margin_sensitivities(model, num_classes)
    body, last = split
    weight = last.weight
    pair_rows = (weight[:, None, :] - weight[None, :, :]).abs().sum(dim=2)
    return pair_rows * lipschitz_bound(body, "inf")
