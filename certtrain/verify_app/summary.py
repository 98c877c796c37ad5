"""summary.json and summary.md of a batch run, in the layout of Table 1 of Tjeng et al. (2019)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from certtrain.atomic import atomic_write_text
from certtrain.verify.result import RESOLVED


def csv_flag(row: dict, key: str) -> bool:
    """A boolean column of samples.csv (csv writes Python's True / False)."""
    return row.get(key) == "True"


def _numbers(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows if r.get(key) not in ("", None)])


def _mean(values: np.ndarray):
    return float(values.mean()) if len(values) else None


def summarize(rows: list[dict], settings: dict) -> dict:
    n = len(rows)
    status = [r["status"] for r in rows]
    count = {s: status.count(s) for s in sorted(set(status))}
    seconds = _numbers(rows, "total_seconds")
    pct = lambda k: 100.0 * k / n if n else None
    removed = [
        float(r["unstable_ibp"]) - float(r["binaries"])
        for r in rows
        if r.get("unstable_ibp") not in ("", None) and r.get("binaries") not in ("", None)
    ]
    return {
        "samples": n,
        "first": int(rows[0]["index"]) if n else None,
        "last": int(rows[-1]["index"]) if n else None,
        "status_counts": count,
        "clean_error_pct": pct(count.get("misclassified", 0)),
        "pgd_error_pct": _reference_pct(rows, "pgd_adversarial"),
        "exact_error_lower_pct": pct(count.get("misclassified", 0) + count.get("adversarial", 0)),
        "exact_error_upper_pct": pct(n - count.get("robust", 0)),
        "ibp_verified_error_pct": _reference_pct(rows, "ibp_verified", complement=True),
        "crown_verified_error_pct": _reference_pct(rows, "crown_verified", complement=True),
        "timeouts": count.get("timeout", 0),
        "unresolved": n - sum(count.get(s, 0) for s in RESOLVED),
        "seconds_mean": _mean(seconds),
        "seconds_median": float(np.median(seconds)) if len(seconds) else None,
        "seconds_p90": float(np.percentile(seconds, 90)) if len(seconds) else None,
        "solve_seconds_mean": _mean(_numbers(rows, "solve_seconds")),
        "cpu_seconds_mean": _mean(_numbers(rows, "cpu_seconds")),
        "cpu_seconds_median": float(np.median(_numbers(rows, "cpu_seconds"))) if len(seconds) else None,
        "cpu_seconds_p90": float(np.percentile(_numbers(rows, "cpu_seconds"), 90)) if len(seconds) else None,
        "unstable_relus_ibp_mean": _mean(_numbers(rows, "unstable_ibp")),
        "unstable_relus_crown_mean": _mean(_numbers(rows, "unstable_crown")),
        "binaries_mean": _mean(_numbers(rows, "binaries")),
        "binaries_removed_by_tightening_mean": _mean(np.array(removed)),
        "resolved_by": {k: sum(r["resolved_by"] == k for r in rows) for k in sorted({r["resolved_by"] for r in rows})},
        "settings": settings,
    }


def _reference_pct(rows: list[dict], key: str, complement: bool = False) -> float | None:
    """Percent of rows flagged (or not, with complement); None when a row lacks the column
    (references=false skipped it), so the summary says n/a instead of a made-up 0%."""
    if not rows or any(r.get(key) in ("", None) for r in rows):
        return None
    flagged = sum(csv_flag(r, key) for r in rows)
    return 100.0 * ((len(rows) - flagged) if complement else flagged) / len(rows)


def _cell(value, digits=2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_markdown(summary: dict) -> str:
    s, cfg = summary, summary["settings"]
    lines = [
        f"# Exact verification: {cfg.get('model')} on {cfg.get('dataset')}, samples {s['first']}-{s['last']}",
        "",
        "Layout of Table 1 of Tjeng et al. (2019). Errors in % of the samples; the exact adversarial error's",
        "upper bound counts every sample not proved robust (timeouts, unresolved) as adversarial.",
        "",
        "| Dataset | Network | eps | Test error | PGD error (lower bound) | IBP verified error | "
        "CROWN verified error | Exact adv. error, lower | Exact adv. error, upper | Mean time / s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {cfg.get('dataset')} | {cfg.get('model')} | {cfg.get('eps')} | {_cell(s['clean_error_pct'])} | "
        f"{_cell(s['pgd_error_pct'])} | {_cell(s['ibp_verified_error_pct'])} | {_cell(s['crown_verified_error_pct'])} | "
        f"{_cell(s['exact_error_lower_pct'])} | {_cell(s['exact_error_upper_pct'])} | {_cell(s['seconds_mean'])} |",
        "",
        "| Samples | Statuses | Timeouts | Unresolved | Wall s mean / median / p90 | CPU s mean / median / p90 | "
        "Unstable ReLUs (IBP -> CROWN -> binaries) | Binaries removed by tightening |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['samples']} | {s['status_counts']} | {s['timeouts']} | {s['unresolved']} | "
        f"{_cell(s['seconds_mean'])} / {_cell(s['seconds_median'])} / {_cell(s['seconds_p90'])} | "
        f"{_cell(s['cpu_seconds_mean'])} / {_cell(s['cpu_seconds_median'])} / {_cell(s['cpu_seconds_p90'])} | "
        f"{_cell(s['unstable_relus_ibp_mean'], 1)} -> {_cell(s['unstable_relus_crown_mean'], 1)} -> "
        f"{_cell(s['binaries_mean'], 1)} | {_cell(s['binaries_removed_by_tightening_mean'], 1)} |",
        "",
        f"Resolved by: {s['resolved_by']} (clean = misclassified; pgd = attack confirmed in float64; "
        "lp / mip = solver).",
        "Times are verify() wall seconds per sample (PGD / IBP / CROWN reference columns excluded).",
        "",
        f"Objective {cfg.get('objective')}, perturbation {cfg.get('perturbation')}, tightening {cfg.get('tightening')}, "
        f"time limit {cfg.get('time_limit')} s, solver {cfg.get('solver', 'highs')} (HiGHS {cfg.get('highs')}), "
        f"threads {cfg.get('threads')}.",
        f"Command: `{cfg.get('command')}`",
        f"Commit {cfg.get('commit')}, machine: {cfg.get('machine')}.",
        "",
    ]
    return "\n".join(lines)


def write_summary(rows: list[dict], out: Path, settings: dict) -> dict:
    summary = summarize(rows, settings)
    atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(Path(out) / "summary.md", render_markdown(summary))
    return summary
