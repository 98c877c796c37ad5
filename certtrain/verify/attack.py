"""verify()'s own attack: PGD over an input domain's box, run before the exact search."""

from __future__ import annotations

import torch
from torch import nn

from certtrain.attacks import pgd_attack
from certtrain.verify.network import model_dtype
from certtrain.verify.perturbations import InputDomain


def domain_pgd(
    model: nn.Module, x: torch.Tensor, label: int, domain: InputDomain, steps: int, restarts: int
) -> tuple[torch.Tensor, bool]:
    """PGD (in the model's dtype, seeded) over the domain's box: (best point, misclassified?).
    An unrestricted domain is the whole pixel box, radius 1 around x clipped to [0, 1]."""
    radius = domain.eps if domain.name == "linf" else 1.0
    with torch.enable_grad():
        x_adv, found = pgd_attack(
            model,
            x.to(model_dtype(model)),
            torch.tensor([label]),
            radius,
            steps=steps,
            restarts=restarts,
            generator=torch.Generator().manual_seed(0),
        )
    return x_adv, bool(found[0])
