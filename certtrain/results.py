"""One evaluation's errors per radius and certifier, as a record.

evaluate() fills it, metrics.json stores it (`to_metrics`, the format the runs of earlier commits
wrote, unchanged) and every reader gets it back with `Errors.from_metrics`. "The best certificate
per radius" is `best_verified`, here only: the per-sample union where the evaluation recorded it,
else the lowest error of the certifiers (each one sound, so the lowest is too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

# verified_err's key of the per-sample union: verified if any certifier of the evaluation proves it.
BEST = "best"

Curve = dict[str, float]  # radius key (eps_key: "%g") -> error in [0, 1]


def eps_key(eps: float) -> str:
    """How a radius appears in metric names and metrics.json: %g (0.1, 0.25, 2e-05)."""
    return f"{eps:g}"


def best_verified(verified_err: Mapping[str, Curve]) -> Curve:
    """Per radius key, the verified error of the best certificate (see the module's docstring)."""
    best: Curve = {}
    for curve in verified_err.values():
        for eps, err in curve.items():
            best[eps] = min(err, best.get(eps, 1.0))
    return {**best, **verified_err.get(BEST, {})}


@dataclass(frozen=True)
class Errors:
    """Errors of one split: clean, attacked (PGD; APGD when it ran) and verified per certifier.

    verified_err maps a certifier's name (and BEST, with two or more) to its curve;
    certify_seconds each certifier's time over the split, all radii."""

    clean_err: float
    pgd_err: Curve
    verified_err: dict[str, Curve]
    apgd_err: Curve | None = None
    certify_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_metrics(cls, metrics: Mapping) -> Errors:
        """The record of a metrics.json (or of its "val" part); other keys are ignored."""
        return cls(
            clean_err=metrics["clean_err"],
            pgd_err=dict(metrics["pgd_err"]),
            verified_err={name: dict(curve) for name, curve in metrics["verified_err"].items()},
            apgd_err=dict(metrics["apgd_err"]) if "apgd_err" in metrics else None,
            certify_seconds=dict(metrics.get("certify_seconds", {})),
        )

    def to_metrics(self) -> dict:
        """metrics.json's layout: clean_err, pgd_err, [apgd_err,] verified_err, certify_seconds."""
        metrics: dict = {"clean_err": self.clean_err, "pgd_err": self.pgd_err}
        if self.apgd_err is not None:
            metrics["apgd_err"] = self.apgd_err
        return {**metrics, "verified_err": self.verified_err, "certify_seconds": self.certify_seconds}

    def best(self) -> Curve:
        """The best certificate's verified error per radius key."""
        return best_verified(self.verified_err)

    def best_at(self, eps: float) -> float | None:
        """The best certificate's verified error at eps, or None where eps was not evaluated."""
        return self.best().get(eps_key(eps))

    @property
    def certifiers(self) -> list[str]:
        """The certifiers evaluated, without the union."""
        return [name for name in self.verified_err if name != BEST]
