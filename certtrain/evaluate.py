"""Clean, PGD and verified error over a grid of radii: the drawdown curve.

Verified error at eps counts the test samples whose margin lower bounds are not all > 0 (by more
than the bound engine's float32 rounding slack) over the L-inf ball of radius eps (clipped to [0, 1]); PGD error is a lower bound on the true robust error,
verified error an upper bound. Certifiers are entries of CERTIFIERS keyed by name.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
from torch import nn

from certtrain.attacks import pgd_attack
from certtrain.data import Split, to_float
from certtrain.distributed import SINGLE, World, sum_over_ranks
from certtrain.lipschitz import method as lipschitz_method
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
CERTIFIERS: dict[str, Certifier] = {
    name: _bound_certifier(name) for name in ("ibp", "crown-ibp", "crown", "alpha-crown", "alpha-crown-full")
}


CERTIFIERS[lipschitz_method.CERTIFIER_NAME] = certifier(lipschitz_method.certifier)

# Certifiers a method brings with it: added to every evaluation of a run of that method.
METHOD_CERTIFIERS: dict[str, tuple[str, ...]] = {"lipschitz": (lipschitz_method.CERTIFIER_NAME,)}


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
    world: World = SINGLE,
) -> dict:
    """{"clean_err": e, "pgd_err": {eps: e}, "verified_err": {bound: {eps: e}},
    "certify_seconds": {bound: s}} with eps keys %g; certify_seconds is each certifier's time over
    the split (all radii; summed over ranks under torchrun).

    The model is put in eval mode (BatchNorm uses running statistics) and left in it. Under
    torchrun (`world`) each rank evaluates its shard of the split and the counts are summed.
    """
    eps_grid = [float(e) for e in eps_grid]
    bounds = list(bounds)
    unknown = [b for b in bounds if b not in CERTIFIERS]
    if unknown:
        raise ValueError(f"unknown certifier(s) {unknown}; choose from {sorted(CERTIFIERS)}")
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)  # PGD restarts reproducible
    # counts[0]: misclassified; counts[1 + i]: attacked at eps_grid[i]; then uncertified per bound and radius
    counts = torch.zeros(1 + len(eps_grid) * (1 + len(bounds)), dtype=torch.long, device=device)
    seconds = [0.0] * len(bounds)
    begin, end = world.shard(len(split))
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        x = to_float(split.images[start:stop].to(device))
        y = split.labels[start:stop].to(device)
        with torch.no_grad():
            misclassified = model(x).argmax(1) != y
        counts[0] += misclassified.sum()
        for i, eps in enumerate(eps_grid):
            found = misclassified
            if eps > 0 and pgd_steps > 0:
                _, attacked = pgd_attack(model, x, y, eps, steps=pgd_steps, restarts=pgd_restarts, generator=generator)
                found = found | attacked
            counts[1 + i] += found.sum()
            with torch.no_grad():
                for b, bound in enumerate(bounds):
                    start_time = time.perf_counter()
                    certified = CERTIFIERS[bound](model, x, y, eps, num_classes)
                    counts[1 + len(eps_grid) * (1 + b) + i] += (~certified).sum()
                    _wait_for(device)  # the cost of the certifier, not of its launch
                    seconds[b] += time.perf_counter() - start_time
    counts = sum_over_ranks(counts, world).tolist()
    seconds = sum_over_ranks(torch.tensor(seconds, dtype=torch.float64, device=device), world).tolist()
    total = max(len(split), 1)
    radius = [eps_key(e) for e in eps_grid]
    return {
        "clean_err": counts[0] / total,
        "pgd_err": {r: counts[1 + i] / total for i, r in enumerate(radius)},
        "verified_err": {
            bound: {r: counts[1 + len(eps_grid) * (1 + b) + i] / total for i, r in enumerate(radius)}
            for b, bound in enumerate(bounds)
        },
        "certify_seconds": {bound: round(seconds[b], 3) for b, bound in enumerate(bounds)},
    }


def _wait_for(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
