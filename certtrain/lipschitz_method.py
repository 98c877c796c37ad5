"""`method=lipschitz`: the robust loss and the certifier that training and evaluation plug in.

Loss: the margin-aware loss on the Lipschitz lower bounds of the margins over the eps ball,
m_j - S[y, j] eps (see certtrain.lipschitz_certify), either cross-entropy with a temperature,
CE(-T m_low, y) / T, or a hinge relu(margin - min_j m_low_j). At eps = 0 these are the plain
temperature-CE and multi-class hinge of certtrain.lipschitz_losses.

Certifier: a sample counts as certified at eps if the Lipschitz certificate or any sound bound
method of the engine (IBP, CROWN-IBP) certifies it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from certtrain.lipschitz_certify import lipschitz_certified, lipschitz_margin_lower_bounds

LOSSES = ("ce", "hinge")


def lipschitz_robust_loss(
    model: nn.Module,
    logits: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    loss: str = "ce",
    temperature: float = 1.0,
    margin: float = 1.0,
) -> torch.Tensor:
    """Mean margin-aware loss on the certified (Lipschitz lower-bound) margins at radius eps."""
    lower = lipschitz_margin_lower_bounds(model, logits, y, eps)  # (B, K-1), j != y
    if loss == "ce":
        # CE(-m, y) with m padded by 0 at the true class: log(1 + sum_j exp(-T m_j)) / T
        padded = torch.cat([lower.new_zeros(len(lower), 1), -temperature * lower], dim=1)
        return F.cross_entropy(padded, lower.new_zeros(len(lower), dtype=torch.long)) / temperature
    if loss == "hinge":
        return F.relu(margin - lower.min(dim=1).values).mean()
    raise ValueError(f"unknown Lipschitz loss {loss!r}; choose one of {LOSSES}")


@torch.no_grad()
def certify_any(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int, bounds=("ibp", "crown-ibp")
) -> torch.Tensor:
    """(B,) bool: certified by the Lipschitz certificate or by any of `bounds` (engine methods).

    The engine runs only on the samples the Lipschitz certificate leaves open.
    """
    from certtrain.bounds import certified as bound_certified
    from certtrain.bounds import lower_bounds, margin_spec

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
        certified[open_] = bound_certified(lower)
    return certified
