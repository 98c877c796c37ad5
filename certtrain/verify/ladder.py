"""The evaluation ladder: on the same samples and radius, every certificate next to the exact answer.

    python verify.py mode=ladder run=outputs/<run> samples=0:200 out=results/ladder/<name>

Per sample: PGD, the exact MILP answer (verify()), and the verdicts of IBP, CROWN-IBP, CROWN
(plain, auto_LiRPA's form), CROWN as a verifier runs it (intermediate bounds intersected with
IBP's, at least IBP's bound: `tight_crown_lower`), alpha-CROWN, alpha-CROWN (full: the
intermediate bounds optimised too) and branch and bound (certtrain.bab, within bab_share of the
time limit; its verdict is a proof or nothing), each timed. The order
    PGD error <= exact error <= alpha-CROWN (either) <= CROWN (tight) <= IBP verified error
holds per sample by construction (each certifier's bound is at least the next one's, and a
sound certificate never covers a real adversarial input). A sample that breaks it is a bug: the
run writes ladder.md / ladder.json naming it, then fails. Plain CROWN and CROWN-IBP are reported
beside the chain: neither is ordered against IBP (plain CROWN is often looser on IBP-trained
networks).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from certtrain.atomic import atomic_write_text
from certtrain.bab import robustness_bab
from certtrain.bounds import certified, lower_bounds, margin_spec, tight_crown_lower
from certtrain.verify.batch import COLUMNS
from certtrain.verify.network import model_dtype
from certtrain.verify.options import VerifyOptions
from certtrain.verify.perturbations import make_domain
from certtrain.verify.references import pgd_finds
from certtrain.verify.result import FloatNetwork
from certtrain.verify.summary import csv_flag, write_summary

# name -> (column stem, function(model, x_L, x_U, C) -> lower bounds)
CERTIFIERS = {
    "IBP": ("ibp", lambda m, lo, up, c: lower_bounds(m, lo, up, c, method="ibp")),
    "CROWN-IBP": ("crown_ibp", lambda m, lo, up, c: lower_bounds(m, lo, up, c, method="crown-ibp")),
    "CROWN (plain)": ("crown_plain", lambda m, lo, up, c: lower_bounds(m, lo, up, c, method="crown")),
    "CROWN (tight)": ("crown_tight", tight_crown_lower),
    "alpha-CROWN": ("alpha_crown", lambda m, lo, up, c: lower_bounds(m, lo, up, c, method="alpha-crown")),
    "alpha-CROWN (full)": (
        "alpha_crown_full",
        lambda m, lo, up, c: lower_bounds(m, lo, up, c, method="alpha-crown-full"),
    ),
}
BAB = "branch and bound"


def bab_certifier(options: VerifyOptions):
    """Branch and bound as a ladder certifier: every margin proved within the rung's time, or not.
    Returns a function of (model, x_L, x_U, C) giving +1 (proved) or -1 per margin row."""

    def bound(model, x_L, x_U, C):
        label = int(C[0, 0].argmax())
        classes = [int(j) for j in C[0].argmin(1)]
        net = FloatNetwork(model).model

        def check(point):
            with torch.no_grad():
                logits = net(point.double())[0]
            return point if int(logits.argmax()) != label and logits.max() > logits[label] else None

        deadline = time.perf_counter() + float(options.time_limit) * options.bab_share
        outcome = robustness_bab(model, x_L, x_U, label, classes, options.bab, deadline, check)
        return torch.full((1, len(classes)), 1.0 if outcome.status == "robust" else -1.0)

    return bound


# (weaker, tighter): the tighter certifies every sample the weaker does, by construction
ORDER = (("IBP", "CROWN (tight)"), ("CROWN (tight)", "alpha-CROWN"), ("CROWN (tight)", "alpha-CROWN (full)"))
LADDER_COLUMNS = (
    COLUMNS
    + ["pgd_seconds"]
    + [f"{stem}_{kind}" for stem, _ in CERTIFIERS.values() for kind in ("verified", "seconds")]
    + ["bab_verified", "bab_seconds"]
)


class LadderViolation(RuntimeError):
    """A sample breaks PGD <= exact <= alpha-CROWN <= CROWN <= IBP: a bug to report."""


def ladder_references(model, x, label, result, options: VerifyOptions, pgd_steps, pgd_restarts) -> dict:
    """Every certifier on every correctly classified sample (not only where PGD failed: a
    certificate where PGD succeeds is exactly what the ladder must catch)."""
    row = {"pgd_adversarial": True, "pgd_seconds": 0.0}
    certifiers = {**CERTIFIERS, BAB: ("bab", bab_certifier(options))}
    for stem, _ in certifiers.values():
        row[f"{stem}_verified"], row[f"{stem}_seconds"] = False, 0.0
    if result.status == "misclassified":
        return row
    domain = make_domain(x, options.perturbation, options.eps, options.blur_kernel_size)
    start = time.perf_counter()
    row["pgd_adversarial"] = pgd_finds(model, x, label, domain, pgd_steps, pgd_restarts)
    row["pgd_seconds"] = time.perf_counter() - start
    dtype = model_dtype(model)
    x_L = torch.from_numpy(domain.box_lower.reshape(1, *domain.shape)).to(dtype)
    x_U = torch.from_numpy(domain.box_upper.reshape(1, *domain.shape)).to(dtype)
    with torch.no_grad():
        spec = margin_spec(torch.tensor([label]), model(x_L).shape[1]).to(dtype)
    for stem, bound in certifiers.values():
        start = time.perf_counter()
        with torch.no_grad():
            verdict = bool(certified(bound(model, x_L, x_U, spec))[0])
        row[f"{stem}_verified"], row[f"{stem}_seconds"] = verdict, time.perf_counter() - start
    row["crown_verified"] = row["crown_plain_verified"]  # the batch summary's CROWN column
    return row


def _stems() -> dict:
    return {**{name: stem for name, (stem, _) in CERTIFIERS.items()}, BAB: "bab"}


def violations(rows: list[dict]) -> list[str]:
    """Every break of the chain, one line per sample and rung."""
    found = []
    for row in rows:
        index, status = row["index"], row["status"]
        for weak, strong in ORDER:
            if csv_flag(row, CERTIFIERS[weak][0] + "_verified") and not csv_flag(
                row, CERTIFIERS[strong][0] + "_verified"
            ):
                found.append(f"sample {index}: certified by {weak} but not by the tighter {strong}")
        certifiers = [name for name, stem in _stems().items() if csv_flag(row, stem + "_verified")]
        if certifiers and status in ("adversarial", "misclassified"):
            found.append(f"sample {index}: certified by {', '.join(certifiers)} but the exact answer is {status}")
        if certifiers and csv_flag(row, "pgd_adversarial"):
            found.append(f"sample {index}: certified by {', '.join(certifiers)} but PGD found an adversarial input")
        if status == "robust" and csv_flag(row, "pgd_adversarial"):
            found.append(f"sample {index}: proved robust by the MILP but PGD found an adversarial input")
    return found


def summarize_ladder(rows: list[dict], settings: dict) -> dict:
    n = max(len(rows), 1)
    status = [r["status"] for r in rows]
    seconds = lambda key: float(np.mean([float(r[key] or 0) for r in rows])) if rows else None
    exact_lower = sum(s in ("adversarial", "misclassified") for s in status)
    rungs = [
        {"rung": "clean error", "error_pct": 100 * status.count("misclassified") / n, "seconds": None},
        {
            "rung": "PGD error",
            "error_pct": 100 * sum(csv_flag(r, "pgd_adversarial") for r in rows) / n,
            "seconds": seconds("pgd_seconds"),
        },
        {"rung": "exact (MILP), lower", "error_pct": 100 * exact_lower / n, "seconds": seconds("total_seconds")},
        {
            "rung": "exact (MILP), upper",
            "error_pct": 100 * (len(rows) - status.count("robust")) / n,
            "seconds": seconds("total_seconds"),
        },
    ]
    for name in (BAB, "alpha-CROWN (full)", "alpha-CROWN", "CROWN (tight)", "CROWN (plain)", "CROWN-IBP", "IBP"):
        stem = _stems()[name]
        rungs.append(
            {
                "rung": f"{name} verified error",
                "error_pct": 100 * (len(rows) - sum(csv_flag(r, stem + "_verified") for r in rows)) / n,
                "seconds": seconds(stem + "_seconds"),
            }
        )
    return {
        "samples": len(rows),
        "first": rows[0]["index"] if rows else None,
        "last": rows[-1]["index"] if rows else None,
        "eps": settings.get("eps"),
        "model": settings.get("model"),
        "run": settings.get("run"),
        "exact_counts": {
            s: status.count(s) for s in ("robust", "adversarial", "misclassified", "timeout", "unresolved")
        },
        "rungs": rungs,
        "violations": violations(rows),
        "settings": settings,
    }


def _seconds(value) -> str:
    return "" if value is None else f"{value:.4f}"


def render_ladder(ladder: dict) -> str:
    cfg, counts = ladder["settings"], ladder["exact_counts"]
    lines = [
        f"# Evaluation ladder: {cfg.get('run') or cfg.get('weights')} ({cfg.get('model')}, {cfg.get('dataset')}), "
        f"eps {cfg.get('eps')}, {ladder['samples']} test samples ({ladder['first']}-{ladder['last']})",
        "",
        "| rung | error % | seconds per sample |",
        "|---|---|---|",
        *[f"| {r['rung']} | {r['error_pct']:.2f} | {_seconds(r['seconds'])} |" for r in ladder["rungs"]],
        "",
        f"Exact answers: {counts['robust']} robust, {counts['adversarial']} adversarial, "
        f"{counts['misclassified']} misclassified, {counts['timeout']} timeout, {counts['unresolved']} unresolved "
        f"(time limit {cfg.get('time_limit')} s per sample, tightening {cfg.get('tightening')}).",
        "Certifiers run in float32 on the sample's L-inf box and count a sample only when every margin bound "
        "exceeds the engine's float32 slack; exact seconds are verify()'s wall time.",
        "Checked per sample: PGD <= exact <= alpha-CROWN (full), alpha-CROWN <= CROWN (tight) <= IBP. "
        + ("**Violations:** " + "; ".join(ladder["violations"]) if ladder["violations"] else "No violation."),
        "",
        f"Command: `{cfg.get('command')}`",
        f"Commit {cfg.get('commit')}, machine: {cfg.get('machine')}, weights sha256 {str(cfg.get('weights_sha256'))[:12]}.",
        "",
    ]
    return "\n".join(lines)


def write_ladder(rows: list[dict], out: Path, settings: dict) -> dict:
    """summary.md / .json (the Table 1 layout) and ladder.md / .json; LadderViolation after writing."""
    summary = write_summary(rows, out, settings)
    ladder = summarize_ladder(rows, settings)
    atomic_write_text(Path(out) / "ladder.json", json.dumps(ladder, indent=2, default=str) + "\n")
    atomic_write_text(Path(out) / "ladder.md", render_ladder(ladder))
    if ladder["violations"]:
        raise LadderViolation(
            f"{len(ladder['violations'])} break(s) of the ladder, see {Path(out) / 'ladder.md'}: "
            f"{ladder['violations'][0]}; please report this"
        )
    summary["ladder"] = ladder
    return summary
