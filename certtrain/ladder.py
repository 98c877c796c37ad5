"""The evaluation ladder: on the same samples and radius, every certificate next to the exact answer.

    python verify.py mode=ladder run=outputs/<run> samples=0:200 out=results/ladder/<name>

Per sample: PGD, APGD, the exact answer (verify() with the run's verifier), and the verdicts of IBP, CROWN-IBP, CROWN
(plain, auto_LiRPA's form), CROWN as a verifier runs it (intermediate bounds intersected with
IBP's, at least IBP's bound: `tight_crown_lower`), alpha-CROWN, alpha-CROWN (full: the
intermediate bounds optimised too) and branch and bound (certtrain.bab, within bab_share of the
time limit; its verdict is a proof or nothing), each timed; `ladder.rungs` picks which of
the attacks and certifiers run (RUNGS, default all). The order
    PGD, APGD error <= exact error <= alpha-CROWN (either) <= CROWN (tight) <= IBP verified error
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

from certtrain.apgd import apgd_attack
from certtrain.atomic import atomic_write_text
from certtrain.bab import robustness_bab
from certtrain.bounds import certified, margin_spec
from certtrain.certifiers import BOUND_CERTIFIERS, soundness_pairs
from certtrain.verify.network import model_dtype
from certtrain.verify.options import VerifyOptions
from certtrain.verify.perturbations import make_domain
from certtrain.verify.result import FloatNetwork
from certtrain.verify_app.batch import COLUMNS
from certtrain.verify_app.references import pgd_finds
from certtrain.verify_app.summary import csv_flag, write_summary

# label -> (column stem, function(model, x_L, x_U, C) -> lower bounds): the one registry's certifiers
CERTIFIERS = {c.label: (c.stem, c.lower) for c in BOUND_CERTIFIERS}
BAB = "branch and bound"
APGD_STEPS, APGD_RESTARTS = 100, 1  # AutoAttack's APGD-CE and targeted APGD-DLR (9 targets)
# what ladder.rungs may name: the APGD attack, each certifier's column stem, and branch and bound
RUNGS = ("apgd", *(stem for stem, _ in CERTIFIERS.values()), "bab")


def check_rungs(rungs) -> tuple[str, ...]:
    """ladder.rungs -> the rungs to run (None: all); ValueError naming the choices."""
    if rungs is None:
        return RUNGS
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown or not rungs:
        raise ValueError(f"ladder.rungs={list(rungs)}: name one or more of {list(RUNGS)} (or null for all)")
    return tuple(r for r in RUNGS if r in rungs)


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
ORDER = soundness_pairs()
LADDER_COLUMNS = (
    COLUMNS
    + ["pgd_seconds", "apgd_adversarial", "apgd_seconds"]
    + [f"{stem}_{kind}" for stem, _ in CERTIFIERS.values() for kind in ("verified", "seconds")]
    + ["bab_verified", "bab_seconds"]
)


class LadderViolation(RuntimeError):
    """A sample breaks PGD <= exact <= alpha-CROWN <= CROWN <= IBP: a bug to report."""


def ladder_references(
    model, x, label, result, options: VerifyOptions, pgd_steps, pgd_restarts, rungs: tuple[str, ...] = RUNGS
) -> dict:
    """Every chosen attack and certifier on every correctly classified sample (not only where PGD
    failed: a certificate where an attack succeeds is exactly what the ladder must catch). A rung
    not chosen leaves its columns empty."""
    row = {"pgd_adversarial": True, "pgd_seconds": 0.0}
    row["apgd_adversarial"], row["apgd_seconds"] = (True, 0.0) if "apgd" in rungs else (None, None)
    certifiers = {
        name: entry for name, entry in {**CERTIFIERS, BAB: ("bab", bab_certifier(options))}.items() if entry[0] in rungs
    }
    for stem in RUNGS[1:]:
        row[f"{stem}_verified"], row[f"{stem}_seconds"] = (False, 0.0) if stem in rungs else (None, None)
    if result.status == "misclassified":
        return row
    domain = make_domain(x, options.perturbation, options.eps, options.blur_kernel_size)
    start = time.perf_counter()
    row["pgd_adversarial"] = pgd_finds(model, x, label, domain, pgd_steps, pgd_restarts)
    row["pgd_seconds"] = time.perf_counter() - start
    dtype = model_dtype(model)
    if "apgd" in rungs:
        start = time.perf_counter()
        _, found = apgd_attack(
            model,
            x.to(dtype),
            torch.tensor([label]),
            options.eps,
            steps=APGD_STEPS,
            restarts=APGD_RESTARTS,
            generator=torch.Generator().manual_seed(0),
        )
        row["apgd_adversarial"], row["apgd_seconds"] = bool(found[0]), time.perf_counter() - start
    x_L = torch.from_numpy(domain.box_lower.reshape(1, *domain.shape)).to(dtype)
    x_U = torch.from_numpy(domain.box_upper.reshape(1, *domain.shape)).to(dtype)
    with torch.no_grad():
        spec = margin_spec(torch.tensor([label]), model(x_L).shape[1]).to(dtype)
    for stem, bound in certifiers.values():
        start = time.perf_counter()
        with torch.no_grad():
            verdict = bool(certified(bound(model, x_L, x_U, spec))[0])
        row[f"{stem}_verified"], row[f"{stem}_seconds"] = verdict, time.perf_counter() - start
    row["crown_verified"] = row["crown_plain_verified"]  # the batch summary's CROWN column (or empty)
    return row


def _stems() -> dict:
    return {**{name: stem for name, (stem, _) in CERTIFIERS.items()}, BAB: "bab"}


def _ran(row: dict, key: str) -> bool:
    """The rung behind this column ran on the row (a rung not chosen leaves it empty)."""
    return row.get(key) not in (None, "")


def violations(rows: list[dict]) -> list[str]:
    """Every break of the chain, one line per sample and rung (pairs with a rung not run skipped)."""
    found = []
    for row in rows:
        index, status = row["index"], row["status"]
        for weak, strong in ORDER:
            weak_key, strong_key = CERTIFIERS[weak][0] + "_verified", CERTIFIERS[strong][0] + "_verified"
            if _ran(row, strong_key) and csv_flag(row, weak_key) and not csv_flag(row, strong_key):
                found.append(f"sample {index}: certified by {weak} but not by the tighter {strong}")
        certifiers = [name for name, stem in _stems().items() if csv_flag(row, stem + "_verified")]
        if certifiers and status in ("adversarial", "misclassified"):
            found.append(f"sample {index}: certified by {', '.join(certifiers)} but the exact answer is {status}")
        for attack, key in (("PGD", "pgd_adversarial"), ("APGD", "apgd_adversarial")):
            if certifiers and csv_flag(row, key):
                found.append(
                    f"sample {index}: certified by {', '.join(certifiers)} but {attack} found an adversarial input"
                )
            if status == "robust" and csv_flag(row, key):
                found.append(f"sample {index}: proved robust by the verifier but {attack} found an adversarial input")
    return found


EXACT_NAMES = {"milp": "MILP", "bab": "branch and bound", "bab-milp": "branch and bound, then MILP"}


def summarize_ladder(rows: list[dict], settings: dict) -> dict:
    n = max(len(rows), 1)
    status = [r["status"] for r in rows]
    seconds = lambda key: float(np.mean([float(r[key] or 0) for r in rows])) if rows else None
    ran = lambda key: any(_ran(r, key) for r in rows)
    exact_lower = sum(s in ("adversarial", "misclassified") for s in status)
    exact = EXACT_NAMES.get(settings.get("verifier") or "milp", settings.get("verifier"))
    rungs = [
        {"rung": "clean error", "error_pct": 100 * status.count("misclassified") / n, "seconds": None},
        {
            "rung": "PGD error",
            "error_pct": 100 * sum(csv_flag(r, "pgd_adversarial") for r in rows) / n,
            "seconds": seconds("pgd_seconds"),
        },
    ]
    if ran("apgd_adversarial"):
        rungs.append(
            {
                "rung": "APGD error",
                "error_pct": 100 * sum(csv_flag(r, "apgd_adversarial") for r in rows) / n,
                "seconds": seconds("apgd_seconds"),
            }
        )
    rungs += [
        {"rung": f"exact ({exact}), lower", "error_pct": 100 * exact_lower / n, "seconds": seconds("total_seconds")},
        {
            "rung": f"exact ({exact}), upper",
            "error_pct": 100 * (len(rows) - status.count("robust")) / n,
            "seconds": seconds("total_seconds"),
        },
    ]
    for name in (BAB, "alpha-CROWN (full)", "alpha-CROWN", "CROWN (tight)", "CROWN (plain)", "CROWN-IBP", "IBP"):
        stem = _stems()[name]
        if not ran(stem + "_verified"):
            continue
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
        "Checked per sample, among the rungs that ran: PGD, APGD <= exact <= alpha-CROWN (full), alpha-CROWN "
        "<= CROWN (tight) <= IBP. "
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
