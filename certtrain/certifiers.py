"""One registry of the bound certifiers, read by training evaluation (certtrain.evaluate) and by
the evaluation ladder (certtrain.ladder) alike.

Each record names the certifier three ways (its key in configs and metrics.json, its row in
ladder.md, its column stem in samples.csv), gives its lower bounds of C f(x) over a box, and its
place in the soundness order: a certifier of rank r + 1 certifies every sample the one of rank r
does (its bound is at least the other's by construction), so with the attacks and the exact
answer below them

    PGD, APGD error <= exact error <= rank 2 <= rank 1 <= rank 0 verified error.

Unranked certifiers (CROWN-IBP, plain CROWN) are not ordered against the others. Certifiers
that are not bound functions (Lipschitz, branch and bound) are added by evaluate and the ladder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from certtrain.bounds import lower_bounds, tight_crown_lower

Lower = Callable  # (model, x_L, x_U, C) -> (B, S) lower bounds of C f(x) over [x_L, x_U]


@dataclass(frozen=True)
class BoundCertifier:
    name: str  # eval.bounds / eval.final_bounds / metrics.json key
    label: str  # the ladder's row
    stem: str  # the ladder's samples.csv columns <stem>_verified, <stem>_seconds
    lower: Lower
    rank: int | None  # place in the soundness order (None: not ordered)
    in_training: bool = True  # offered to training evaluation


def _engine(method: str) -> Lower:
    return lambda model, x_L, x_U, C: lower_bounds(model, x_L, x_U, C, method=method)


BOUND_CERTIFIERS = (
    BoundCertifier("ibp", "IBP", "ibp", _engine("ibp"), rank=0),
    BoundCertifier("crown-ibp", "CROWN-IBP", "crown_ibp", _engine("crown-ibp"), rank=None),
    BoundCertifier("crown", "CROWN (plain)", "crown_plain", _engine("crown"), rank=None),
    # intermediate bounds intersected with IBP's, at least IBP's bound: how a verifier runs CROWN
    BoundCertifier("crown-tight", "CROWN (tight)", "crown_tight", tight_crown_lower, rank=1, in_training=False),
    BoundCertifier("alpha-crown", "alpha-CROWN", "alpha_crown", _engine("alpha-crown"), rank=2),
    BoundCertifier("alpha-crown-full", "alpha-CROWN (full)", "alpha_crown_full", _engine("alpha-crown-full"), rank=2),
)


def soundness_pairs() -> tuple[tuple[str, str], ...]:
    """(weaker, tighter) label pairs of consecutive ranks: the tighter certifies every sample the
    weaker does."""
    return tuple(
        (weak.label, strong.label)
        for strong in BOUND_CERTIFIERS
        if strong.rank
        for weak in BOUND_CERTIFIERS
        if weak.rank == strong.rank - 1
    )
