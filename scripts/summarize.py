"""Turn the metrics.json files of a multirun folder into a table and a drawdown plot.

    python scripts/summarize.py multirun/2026-11-23_20-00-00
    python scripts/summarize.py multirun/2026-11-23_20-00-00 --out results/sweep

Writes <out>.md and <out>.csv (one row per run: clean error, and PGD and verified error at every
radius) and <out>.png (verified error against eps_eval, one curve per run, taking at each radius
the tightest certifier the run evaluated). <out> defaults to <folder>/summary.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

log = logging.getLogger("summarize")


def load_runs(folder: Path) -> dict[str, dict]:
    """run name (its folder relative to `folder`) -> metrics."""
    runs = {}
    for path in sorted(folder.rglob("metrics.json")):
        name = str(path.parent.relative_to(folder)) if path.parent != folder else folder.name
        runs[name] = json.loads(path.read_text())
    return runs


def best_verified(metrics: dict) -> dict[str, float]:
    """Per radius, the lowest verified error over the certifiers (each one is a valid certificate)."""
    best: dict[str, float] = {}
    for curve in metrics["verified_err"].values():
        for eps, err in curve.items():
            best[eps] = min(err, best.get(eps, 1.0))
    return best


def table(runs: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for name, m in runs.items():
        row = {"run": name, "method": m.get("method"), "data": m.get("dataset"), "clean_err": m["clean_err"]}
        for eps, err in sorted(m["pgd_err"].items(), key=lambda item: float(item[0])):
            row[f"pgd@{eps}"] = err
        for bound, curve in m["verified_err"].items():
            for eps, err in sorted(curve.items(), key=lambda item: float(item[0])):
                row[f"verified_{bound}@{eps}"] = err
        row["seconds"] = m.get("seconds")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (errors as fractions with 4 decimals)."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], path: Path) -> None:
    figure = Figure(figsize=(6.5, 4), dpi=110)
    axes = figure.subplots()
    for name, m in runs.items():
        curve = best_verified(m)
        radii = sorted(curve, key=float)
        axes.plot([float(e) for e in radii], [100 * curve[e] for e in radii], marker="o", label=name)
    axes.set_xlabel("eps_eval (L-inf, pixel units)")
    axes.set_ylabel("verified error (%), tightest certifier")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a multirun (or run) folder containing metrics.json files")
    parser.add_argument("--out", type=Path, default=None, help="output path without suffix (default: <folder>/summary)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = load_runs(args.folder)
    if not runs:
        raise SystemExit(f"no metrics.json under {args.folder}; point summarize.py at a run or multirun folder")
    out = args.out or args.folder / "summary"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = table(runs)
    frame.to_csv(out.with_suffix(".csv"), index=False)
    out.with_suffix(".md").write_text(markdown(frame))
    plot(runs, out.with_suffix(".png"))
    log.info("%d runs -> %s.{md,csv,png}", len(runs), out)


if __name__ == "__main__":
    main()
