"""Batch verification over a range of test samples with a crash-safe CSV and resume.

`<out>/samples.csv` gets one row per finished sample, flushed and fsynced before the next sample
starts, so a killed run loses at most the sample in flight. Rerunning the same command skips
finished samples; `rerun` chooses which finished rows are done again (MIPVerify's options):
never | always | timeouts (status timeout) | unresolved (any status that is not an exact answer).
`<out>/run.json` records the settings that decide the answers; a rerun with other settings into
the same folder is refused.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from certtrain.atomic import atomic_write_text
from certtrain.data import to_float
from certtrain.verify.api import verify
from certtrain.verify.options import VerifyOptions
from certtrain.verify.perturbations import make_domain
from certtrain.verify.result import RESOLVED, VerificationResult
from certtrain.verify_app.references import bound_verified, pgd_finds
from certtrain.verify_app.summary import write_summary

log = logging.getLogger(__name__)

COLUMNS = [
    "index",
    "label",
    "predicted",
    "status",
    "distortion",
    "bound",
    "solve_seconds",
    "total_seconds",
    "cpu_seconds",
    "witness_verified",
    "tightening",
    "resolved_by",
    "pgd_adversarial",
    "ibp_verified",
    "crown_verified",
    "unstable_ibp",
    "unstable_crown",
    "binaries",
]
RERUN = ("never", "always", "timeouts", "unresolved")
# Settings that may change between a run and its resumption (they do not change a decided answer).
RESUMABLE = ("time_limit", "rerun", "command", "commit", "machine")
# Settings added after runs were saved, with the value those runs used, so they still resume.
# (Branch and bound split ReLUs only, which split=auto does for every image network.)
IMPLIED = {"solver": "highs", "bab": {"refine": True, "split": "auto"}}


def _with_implied(saved: dict) -> dict:
    """A saved run.json with the settings it predates filled in (nested dicts key by key)."""
    full = dict(saved)
    for key, value in IMPLIED.items():
        if not isinstance(value, dict):
            full.setdefault(key, value)
        elif isinstance(full.get(key), dict):
            full[key] = {**value, **full[key]}
    return full


def parse_samples(text: str, available: int) -> range:
    """'a:b' (b excluded) or 'a' -> a range inside [0, available); ValueError naming the fix otherwise."""
    parts = str(text).split(":")
    try:
        start, stop = (int(parts[0]), int(parts[0]) + 1) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise ValueError(f"samples={text!r}: write a range like 0:100 (first index, one past the last)") from None
    if len(parts) > 2 or not 0 <= start < stop <= available:
        raise ValueError(
            f"samples={text} lies outside the test set of {available} samples; choose a range within 0:{available}"
        )
    return range(start, stop)


def read_rows(path: Path, columns: list[str] = COLUMNS) -> dict[int, dict]:
    """Finished rows by index. A half-written last line (the process died mid-write) is cut off."""
    if not path.is_file():
        return {}
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        log.warning("%s ended in a half-written row (a killed run); dropping it", path)
        atomic_write_text(path, text)
    rows = {}
    for row in csv.DictReader(io.StringIO(text)):
        if None in row or any(row.get(c) is None for c in columns):
            log.warning("%s: skipping a malformed row %s", path, row)
            continue
        rows[int(row["index"])] = row
    return rows


def needs_run(row: dict | None, rerun: str) -> bool:
    if row is None or rerun == "always":
        return True
    if rerun == "timeouts":
        return row["status"] == "timeout"
    if rerun == "unresolved":
        return row["status"] not in RESOLVED
    return False


def _check_settings(out: Path, settings: dict) -> None:
    path = out / "run.json"
    if path.is_file():
        saved = _with_implied(json.loads(path.read_text()))
        if "weights_sha256" in settings and saved.get("weights_sha256") != settings["weights_sha256"]:
            raise ValueError(
                f"{out} holds results of another network (weights sha256 {str(saved.get('weights_sha256'))[:12]} "
                f"there, {settings['weights_sha256'][:12]} now): two networks' rows never share a CSV; "
                "choose a fresh out= folder"
            )
        differ = {k: (saved.get(k), v) for k, v in settings.items() if k not in RESUMABLE and saved.get(k) != v}
        if differ:
            raise ValueError(
                f"{out} holds a run with other settings {differ} (saved, now); "
                "choose a fresh out= folder or delete the old one"
            )
    atomic_write_text(path, json.dumps(settings, indent=2, default=str) + "\n")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def make_row(
    index: int, label: int, result: VerificationResult, tightening: str, references: dict, columns: list[str] = COLUMNS
) -> dict:
    stats = result.stats
    row = {
        "index": index,
        "label": label,
        "predicted": result.predicted,
        "status": result.status,
        "distortion": result.distortion,
        "bound": result.bound,
        "solve_seconds": round(result.solve_seconds, 4),
        "total_seconds": round(result.seconds, 4),
        "cpu_seconds": round(result.cpu_seconds, 4),
        "witness_verified": result.witness_verified,
        "tightening": tightening,
        "resolved_by": result.resolved_by,
        "unstable_ibp": stats.get("unstable_ibp"),
        "unstable_crown": stats.get("unstable_crown"),
        "binaries": stats.get("unstable_final"),
    }
    row.update(references)
    return {k: _fmt(row.get(k)) for k in columns}


def references(model, x, label, result, options: VerifyOptions, pgd_steps, pgd_restarts) -> dict:
    """PGD / IBP / CROWN verdicts for the summary; an exact adversarial answer settles the bounds."""
    domain = make_domain(x, options.perturbation, options.eps, options.blur_kernel_size)
    if result.status == "misclassified":
        return {"pgd_adversarial": True, "ibp_verified": False, "crown_verified": False}
    pgd = pgd_finds(model, x, label, domain, pgd_steps, pgd_restarts)
    if result.status == "robust" and pgd:
        log.error("sample verified robust but PGD found an adversarial input: please report this")
    if result.status == "adversarial" or pgd:
        return {"pgd_adversarial": pgd, "ibp_verified": False, "crown_verified": False}
    return {
        "pgd_adversarial": pgd,
        "ibp_verified": bound_verified(model, domain, label, "ibp"),
        "crown_verified": bound_verified(model, domain, label, "crown"),
    }


def run_batch(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: range,
    out: Path,
    *,
    settings: dict,
    options: VerifyOptions,
    rerun: str = "never",
    pgd_steps: int = 50,
    pgd_restarts: int = 3,
    verify_fn=verify,
    reference_fn=references,
    columns: list[str] = COLUMNS,
    summarize_fn=None,
) -> dict:
    """Verify images[indices]; append each row to out/samples.csv; write the summary; return it.

    reference_fn(model, x, label, result, options, pgd_steps, pgd_restarts) -> dict gives the
    columns beside the exact answer (the evaluation ladder adds its certifiers there); the CSV
    has `columns`, and summarize_fn(rows, out, settings) writes the summary (write_summary).
    """
    if rerun not in RERUN:
        raise ValueError(f"unknown rerun {rerun!r}; choose one of {RERUN}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    path = out / "samples.csv"
    rows = read_rows(path, columns)
    pending = [i for i in indices if needs_run(rows.get(i), rerun)]
    if any(i in rows for i in pending) or not path.is_file():
        kept = [r for i, r in sorted(rows.items()) if i not in pending]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, buffer.getvalue())
        rows = {int(r["index"]): r for r in kept}
    log.info("%d of %d samples to verify (%d finished rows kept)", len(pending), len(indices), len(rows))
    tightening = options.tightening
    bar = tqdm(pending, disable=None, leave=False, desc="verify")
    times, resolved = [], 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        for index in bar:
            x, label = to_float(images[index : index + 1]), int(labels[index])
            try:
                result = verify_fn(model, x, label, options)
                beside = reference_fn(model, x, label, result, options, pgd_steps, pgd_restarts)
            except Exception as err:
                raise RuntimeError(
                    f"sample {index} failed ({type(err).__name__}: {err}); the finished rows are kept in {path}; "
                    "fix the cause and rerun the same command to continue"
                ) from err
            row = make_row(index, label, result, tightening, beside, columns)
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
            rows[index] = row
            times.append(result.seconds)
            resolved += result.resolved
            bar.set_postfix(resolved=f"{resolved}/{len(times)}", mean_s=f"{sum(times) / len(times):.2f}")
    done = [rows[i] for i in indices if i in rows]
    return (summarize_fn or write_summary)(done, out, settings)
