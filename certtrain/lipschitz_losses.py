"""Margin-aware losses for Lipschitz classifiers.

A Lipschitz network cannot scale its logits up at will, so plain cross-entropy never saturates
and the margins it produces stay small. A temperature (logits * T) or a hinge with an explicit
margin makes the loss care about the margin, which is what the certificate needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def temperature_cross_entropy(logits: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of logits * temperature (divided by it, so the loss scale stays comparable)."""
    return F.cross_entropy(logits * temperature, y) / temperature


def multiclass_hinge(logits: torch.Tensor, y: torch.Tensor, margin: float | torch.Tensor = 1.0) -> torch.Tensor:
    """mean relu(margin - (f_y - max_{j != y} f_j)); margin may be a float or one per sample (B,)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return F.relu(torch.as_tensor(margin, dtype=logits.dtype) - (true - others)).mean()


def binary_hinge(score: torch.Tensor, target: torch.Tensor, margin: float | torch.Tensor = 1.0) -> torch.Tensor:
    """mean relu(margin - t * f) for one score per sample and targets t in {0, 1} (mapped to -1/+1)."""
    sign = 2.0 * target.to(score.dtype) - 1.0
    return F.relu(torch.as_tensor(margin, dtype=score.dtype) - sign * score.reshape(sign.shape)).mean()


def lipschitz_loss(
    logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", temperature: float = 1.0, margin: float = 1.0
) -> torch.Tensor:
    """Dispatch by name: "ce" (temperature cross-entropy) or "hinge" (multi-class hinge)."""
    if loss == "ce":
        return temperature_cross_entropy(logits, y, temperature)
    if loss == "hinge":
        return multiclass_hinge(logits, y, margin)
    raise ValueError(f"unknown Lipschitz loss {loss!r}; choose 'ce' or 'hinge'")
