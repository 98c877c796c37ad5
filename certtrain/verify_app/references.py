"""The baselines a batch run reports next to the exact answer, computed outside verify()'s timing:
PGD error (a lower bound on adversarial error) and IBP / CROWN verified error (upper bounds)."""

from __future__ import annotations

import torch
from torch import nn

from certtrain.bounds import certified, compute_bounds, margin_spec
from certtrain.verify.attack import domain_pgd
from certtrain.verify.network import model_dtype
from certtrain.verify.perturbations import InputDomain


def bound_verified(model: nn.Module, domain: InputDomain, label: int, method: str) -> bool:
    """Every margin f_y - f_j has a positive lower bound by `method` (ibp | crown) on the input box.

    Computed in float32 and decided with the engine's float32 slack (`certified`), as training
    evaluation does.
    """
    shape = (1, *domain.shape)
    dtype = model_dtype(model)
    x_L = torch.from_numpy(domain.box_lower.reshape(shape)).to(dtype)
    x_U = torch.from_numpy(domain.box_upper.reshape(shape)).to(dtype)
    with torch.no_grad():
        num_classes = model(x_L).shape[1]
        spec = margin_spec(torch.tensor([label]), num_classes).to(dtype)
        lower, _ = compute_bounds(model, x_L, x_U, C=spec, method=method)
    return bool(certified(lower)[0])


def pgd_finds(model: nn.Module, x: torch.Tensor, label: int, domain: InputDomain, steps: int, restarts: int) -> bool:
    """PGD (float32, as the model runs) finds a misclassified input in the L-inf set."""
    return domain.is_box and domain_pgd(model, x, label, domain, steps, restarts)[1]
