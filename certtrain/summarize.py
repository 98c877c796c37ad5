"""Turn the metrics.json files of a multirun folder into a table and a drawdown plot.

    python -m certtrain.summarize multirun/2026-11-23_20-00-00
    python -m certtrain.summarize multirun/2026-11-23_20-00-00 --out results/sweep

Writes <out>.md and <out>.csv (one row per run: clean error, and PGD and verified error at every
radius; a failed or incomplete run is listed with why, never dropped) and <out>.png (verified error against eps_eval, one curve per run, taking at each radius
the tightest certifier the run evaluated). <out> defaults to <folder>/summary.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from certtrain.atomic import atomic_savefig, atomic_write_text
from certtrain.results import Errors

log = logging.getLogger("summarize")


REQUIRED_KEYS = ("clean_err", "pgd_err", "verified_err")


def run_folders(folder: Path) -> list[Path]:
    """Every run folder under `folder`: one with a metrics.json, a checkpoint, Hydra's record or
    a FAILED marker."""
    markers = ("metrics.json", "checkpoint.pt", ".hydra/config.yaml", "FAILED")
    found = {path.parent for marker in markers for path in folder.rglob(marker)}
    return sorted(p.parent if p.name == ".hydra" else p for p in found)


def load_runs(folder: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """(run name -> metrics, run name -> why it has none): every run is in one of the two."""
    runs, missing = {}, {}
    for run_dir in run_folders(folder):
        name = str(run_dir.relative_to(folder)) if run_dir != folder else folder.name
        if (run_dir / "FAILED").is_file():
            missing[name] = "failed: " + ((run_dir / "FAILED").read_text().splitlines() or ["?"])[0]
            continue
        path = run_dir / "metrics.json"
        if not path.is_file():
            missing[name] = "incomplete: no metrics.json (still running, or killed; resume=true continues it)"
            continue
        try:
            metrics = json.loads(path.read_text())
        except ValueError as err:
            missing[name] = f"incomplete: metrics.json is not valid JSON ({err})"
            continue
        absent = [key for key in REQUIRED_KEYS if not isinstance(metrics.get(key), (dict, float, int))]
        if absent:
            missing[name] = f"incomplete: metrics.json lacks {', '.join(absent)}"
            continue
        runs[name] = metrics
    return runs, missing


def table(runs: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for name, m in runs.items():
        row = {
            "run": name,
            "status": "finished",
            "method": m.get("method"),
            "data": m.get("dataset"),
            "clean_err": m["clean_err"],
        }
        for eps, err in sorted(m["pgd_err"].items(), key=lambda item: float(item[0])):
            row[f"pgd@{eps}"] = err
        for eps, err in sorted(m.get("apgd_err", {}).items(), key=lambda item: float(item[0])):
            row[f"apgd@{eps}"] = err  # eval.attack=apgd runs only
        for bound, curve in m["verified_err"].items():
            for eps, err in sorted(curve.items(), key=lambda item: float(item[0])):
                row[f"verified_{bound}@{eps}"] = err
        row["seconds"] = m.get("seconds")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, missing: dict[str, str] | None = None) -> str:
    """A GitHub markdown table (errors as fractions with 4 decimals), then the runs without results."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    if missing:
        lines += ["", "Runs without results:", ""] + [f"- `{name}`: {why}" for name, why in missing.items()]
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], path: Path) -> None:
    figure = Figure(figsize=(6.5, 4), dpi=110)
    axes = figure.subplots()
    for name, m in runs.items():
        curve = Errors.from_metrics(m).best()
        radii = sorted(curve, key=float)
        axes.plot([float(e) for e in radii], [100 * curve[e] for e in radii], marker="o", label=name)
    axes.set_xlabel("eps_eval (L-inf, pixel units)")
    axes.set_ylabel("verified error (%), tightest certifier")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    atomic_savefig(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a multirun (or run) folder containing metrics.json files")
    parser.add_argument("--out", type=Path, default=None, help="output path without suffix (default: <folder>/summary)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs, missing = load_runs(args.folder)
    for name, why in missing.items():
        log.warning("%s: %s", name, why)
    if not runs and not missing:
        raise SystemExit(f"no runs under {args.folder}; point summarize.py at a run or multirun folder")
    out = args.out or args.folder / "summary"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = table(runs)
    for name, why in missing.items():  # listed in the table too, never dropped silently
        frame = pd.concat([frame, pd.DataFrame([{"run": name, "status": why}])], ignore_index=True)
    atomic_write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
    atomic_write_text(out.with_suffix(".md"), markdown(table(runs), missing))
    if runs:
        plot(runs, out.with_suffix(".png"))
    log.info("%d runs with results, %d without -> %s.{md,csv,png}", len(runs), len(missing), out)


if __name__ == "__main__":
    main()
