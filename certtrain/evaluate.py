"""Clean, PGD (and, with attack="apgd", APGD) and verified error over a grid of radii: the drawdown curve.

Verified error at eps counts the test samples whose margin lower bounds are not all > 0 (by more
than the bound engine's float32 rounding slack) over the L-inf ball of radius eps (clipped to [0, 1]); PGD error is a lower bound on the true robust error,
verified error an upper bound. APGD error (AutoAttack's APGD-CE and APGD-T, certtrain.apgd, run on
the samples PGD left unbroken) is the tighter lower bound of the two. Certifiers are entries of
CERTIFIERS keyed by name.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
from torch import nn

from certtrain.apgd import apgd_attack
from certtrain.attacks import pgd_attack
from certtrain.bab.certifier import bab_certifier
from certtrain.bounds import certified, margin_spec
from certtrain.certifiers import BOUND_CERTIFIERS
from certtrain.data import Split, to_float
from certtrain.distributed import SINGLE, World, sum_over_ranks
from certtrain.lipschitz import method as lipschitz_method
from certtrain.losses import input_box
from certtrain.precision import certifier
from certtrain.results import BEST, Errors, eps_key

Certifier = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, int], torch.Tensor]


def _bound_certifier(lower) -> Certifier:
    @certifier
    def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int) -> torch.Tensor:
        x_lower, x_upper = input_box(x, eps)
        margins = lower(model, x_lower, x_upper, margin_spec(y, num_classes))
        # Every margin lower bound > 0, with the engine's float32 rounding slack.
        return certified(margins)

    return certify


# name -> function(model, x, y, eps, num_classes) -> bool tensor: certified samples; the bound
# certifiers come from the one registry (certtrain.certifiers).
CERTIFIERS: dict[str, Certifier] = {c.name: _bound_certifier(c.lower) for c in BOUND_CERTIFIERS if c.in_training}


CERTIFIERS[lipschitz_method.CERTIFIER_NAME] = certifier(lipschitz_method.certifier)
# Branch and bound, BAB_SECONDS per sample and radius; training builds it with eval.bab_seconds.
CERTIFIERS["bab"] = bab_certifier()


def _sum_counts(counts: dict[str, torch.Tensor], world: World) -> dict[str, list[int]]:
    """Every named count tensor summed over the ranks in one all-reduce, back under its name."""
    flat = sum_over_ranks(torch.cat([c.reshape(-1) for c in counts.values()]), world).tolist()
    summed, start = {}, 0
    for name, count in counts.items():
        summed[name] = flat[start : start + count.numel()]
        start += count.numel()
    return summed


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
    attack: str = "pgd",
    apgd_steps: int = 100,
    apgd_restarts: int = 1,
    certifiers: dict[str, Certifier] | None = None,
) -> dict:
    """{"clean_err": e, "pgd_err": {eps: e}, ["apgd_err": {eps: e},] "verified_err": {bound: {eps: e}},
    "certify_seconds": {bound: s}} with eps keys %g (certtrain.results.Errors.to_metrics; read it
    back with Errors.from_metrics); certify_seconds is each certifier's time over the split (all
    radii; summed over ranks under torchrun). With two or more certifiers,
    verified_err["best"] is the per-sample union: a sample counts as verified if any certifier
    proves it (never above any single certifier's figure).

    attack="apgd" adds "apgd_err": {eps: e}, the samples misclassified, broken by PGD or broken by
    APGD (`apgd_steps` iterations, `apgd_restarts` starts per run) on those PGD left, so
    pgd_err <= apgd_err <= every verified error. "pgd" (the default) runs PGD alone.

    certifiers: the table `bounds` names are looked up in (default CERTIFIERS).

    The model is put in eval mode (BatchNorm uses running statistics) and left in it. Under
    torchrun (`world`) each rank evaluates its shard of the split and the counts are summed.
    """
    if attack not in ("pgd", "apgd"):
        raise ValueError(f"unknown attack {attack!r}; choose pgd or apgd")
    eps_grid = [float(e) for e in eps_grid]
    bounds = list(bounds)
    table = CERTIFIERS if certifiers is None else certifiers
    unknown = [b for b in bounds if b not in table]
    if unknown:
        raise ValueError(f"unknown certifier(s) {unknown}; choose from {sorted(table)}")
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)  # PGD restarts reproducible
    # APGD draws from its own stream, so pgd_err is the same with attack=pgd and attack=apgd.
    apgd_generator = torch.Generator(device=device).manual_seed(seed + 7919)
    use_apgd = attack == "apgd"
    radii = len(eps_grid)
    misclassified_count = torch.zeros((), dtype=torch.long, device=device)
    attacked = torch.zeros(radii, dtype=torch.long, device=device)  # misclassified or PGD found one
    apgd_attacked = torch.zeros(radii, dtype=torch.long, device=device)  # ... or APGD found one
    uncertified = torch.zeros(len(bounds), radii, dtype=torch.long, device=device)
    uncertified_by_all = torch.zeros(radii, dtype=torch.long, device=device)  # the union's misses
    seconds = [0.0] * len(bounds)
    begin, end = world.shard(len(split))
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        x = to_float(split.images[start:stop].to(device))
        y = split.labels[start:stop].to(device)
        with torch.no_grad():
            misclassified = model(x).argmax(1) != y
        misclassified_count += misclassified.sum()
        for i, eps in enumerate(eps_grid):
            found = misclassified
            if eps > 0 and pgd_steps > 0:
                _, hit = pgd_attack(model, x, y, eps, steps=pgd_steps, restarts=pgd_restarts, generator=generator)
                found = found | hit
            attacked[i] += found.sum()
            if use_apgd:
                if eps > 0 and not bool(found.all()):
                    left = (~found).nonzero().squeeze(1)
                    _, hit = apgd_attack(
                        model, x[left], y[left], eps, apgd_steps, apgd_restarts, generator=apgd_generator
                    )
                    found = found.clone()
                    found[left] = hit
                apgd_attacked[i] += found.sum()
            certified_by_any = torch.zeros_like(misclassified)
            with torch.no_grad():
                for b, bound in enumerate(bounds):
                    start_time = time.perf_counter()
                    certified = table[bound](model, x, y, eps, num_classes)
                    uncertified[b, i] += (~certified).sum()
                    certified_by_any |= certified
                    _wait_for(device)  # the cost of the certifier, not of its launch
                    seconds[b] += time.perf_counter() - start_time
            uncertified_by_all[i] += (~certified_by_any).sum()
    counts = {"clean": misclassified_count, "pgd": attacked, "apgd": apgd_attacked, BEST: uncertified_by_all}
    counts |= {f"uncertified/{bound}": uncertified[b] for b, bound in enumerate(bounds)}
    counts = _sum_counts(counts, world)
    seconds = sum_over_ranks(torch.tensor(seconds, dtype=torch.float64, device=device), world).tolist()
    total = max(len(split), 1)
    radius = [eps_key(e) for e in eps_grid]

    def curve(name: str) -> dict[str, float]:
        return dict(zip(radius, (n / total for n in counts[name])))

    verified = {bound: curve(f"uncertified/{bound}") for bound in bounds}
    if len(bounds) > 1:
        verified[BEST] = curve(BEST)
    return Errors(
        clean_err=counts["clean"][0] / total,
        pgd_err=curve("pgd"),
        verified_err=verified,
        apgd_err=curve("apgd") if use_apgd else None,
        certify_seconds={bound: round(seconds[b], 3) for b, bound in enumerate(bounds)},
    ).to_metrics()


def _wait_for(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
