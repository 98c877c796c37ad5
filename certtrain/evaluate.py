"""Clean, PGD and verified error over a grid of radii: the drawdown curve.

Verified error at eps counts the test samples whose margin lower bounds are not all > 0 (by more
than the bound engine's float32 rounding slack) over the L-inf ball of radius eps (clipped to [0, 1]); PGD error is a lower bound on the true robust error,
verified error an upper bound. Certifiers are entries of CERTIFIERS keyed by name.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from certtrain.attacks import pgd_attack
from certtrain.data import Split, to_float
from certtrain.losses import input_box
from certtrain.precision import certifier

Certifier = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, int], torch.Tensor]


def _bound_certifier(method: str) -> Certifier:
    @certifier
    def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int) -> torch.Tensor:
        from certtrain.bounds import certified, lower_bounds, margin_spec

        x_lower, x_upper = input_box(x, eps)
        margins = lower_bounds(model, x_lower, x_upper, margin_spec(y, num_classes), method=method)
        # Every margin lower bound > 0, with the engine's float32 rounding slack.
        return certified(margins)

    return certify


# name -> function(model, x, y, eps, num_classes) -> bool tensor: certified samples.
CERTIFIERS: dict[str, Certifier] = {name: _bound_certifier(name) for name in ("ibp", "crown-ibp", "crown")}


def _lipschitz_certifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int
) -> torch.Tensor:
    """Certified by the Lipschitz bound of the network or by IBP / CROWN-IBP (any sound method)."""
    from certtrain.lipschitz_method import certify_any

    return certify_any(model, x, y, eps, num_classes)


CERTIFIERS["lipschitz"] = certifier(_lipschitz_certifier)


def eps_key(eps: float) -> str:
    """How a radius appears in metric names and metrics.json: %g (0.1, 0.25, 2e-05)."""
    return f"{eps:g}"


def evaluate(
    model: nn.Module,
    split: Split,
    eps_grid: Iterable[float],
    bounds: Iterable[str] = ("ibp", "crown-ibp"),
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    num_classes: int = 10,
) -> dict:
    """{"clean_err": e, "pgd_err": {eps: e}, "verified_err": {bound: {eps: e}}} with eps keys %g.

    The model is put in eval mode (BatchNorm uses running statistics) and left in it.
    """
    eps_grid = [float(e) for e in eps_grid]
    bounds = list(bounds)
    unknown = [b for b in bounds if b not in CERTIFIERS]
    if unknown:
        raise ValueError(f"unknown certifier(s) {unknown}; choose from {sorted(CERTIFIERS)}")
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)  # PGD restarts reproducible
    wrong = torch.zeros((), dtype=torch.long)
    attacked = {e: torch.zeros((), dtype=torch.long) for e in eps_grid}
    uncertified = {b: {e: torch.zeros((), dtype=torch.long) for e in eps_grid} for b in bounds}
    for start in range(0, len(split), batch_size):
        x = to_float(split.images[start : start + batch_size]).to(device)
        y = split.labels[start : start + batch_size].to(device)
        with torch.no_grad():
            wrong += (model(x).argmax(1) != y).sum().cpu()
        for eps in eps_grid:
            if eps > 0 and pgd_steps > 0:
                _, found = pgd_attack(model, x, y, eps, steps=pgd_steps, restarts=pgd_restarts, generator=generator)
                with torch.no_grad():
                    found = found | (model(x).argmax(1) != y)
            else:
                with torch.no_grad():
                    found = model(x).argmax(1) != y
            attacked[eps] += found.sum().cpu()
            with torch.no_grad():
                for bound in bounds:
                    certified = CERTIFIERS[bound](model, x, y, eps, num_classes)
                    uncertified[bound][eps] += (~certified).sum().cpu()
    total = max(len(split), 1)
    return {
        "clean_err": wrong.item() / total,
        "pgd_err": {eps_key(e): attacked[e].item() / total for e in eps_grid},
        "verified_err": {b: {eps_key(e): uncertified[b][e].item() / total for e in eps_grid} for b in bounds},
    }
