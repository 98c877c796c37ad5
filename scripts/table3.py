"""Liang et al.'s Table 3 and Fig. 3 from certtrain's own runs: one CSV row per run, the drawdown
figure (verified error against eps_eval, one curve per run).

    python scripts/table3.py multirun/table3_eps0.5 multirun/table3_eps0.6 --out results/gm

Reads every metrics.json under the folders (runs of conf/experiment/table3_mnist.yaml or any
run with the same evaluation grid). Verified error at a radius is the lower of the IBP and
CROWN-IBP certificates' errors (each is sound). Writes <out>/table3.csv and <out>/fig3_eps<e>.png
per training radius. A run folder without a readable metrics.json is listed as incomplete.
The commit column is the last commit made before the run started (from its train.log).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
from pathlib import Path

import yaml
from matplotlib.figure import Figure

log = logging.getLogger("table3")

COLUMNS = [
    "method",
    "estimator",
    "loss_fusion",
    "eps_train",
    "seed",
    "clean_err",
    "verified_err_0.1",
    "verified_err_0.2",
    "verified_err_0.3",
    "verified_err_0.4",
    "verified_err_0.5",
    "pgd_err_0.3",
    "epochs",
    "seconds",
    "command",
    "commit",
]


def command_of(run_dir: Path) -> str:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return ""
    return "python train.py " + " ".join(yaml.safe_load(overrides.read_text()) or [])


def commit_at_start(run_dir: Path) -> str | None:
    """The last commit made before the run's first log line (the code it imported), from git."""
    log_file = run_dir / "train.log"
    if not log_file.is_file():
        return None
    first = log_file.read_text().split("\n", 1)[0]
    if not first.startswith("["):
        return None
    started = first[1:20]  # "2026-12-01 22:43:52"
    result = subprocess.run(
        ["git", "log", "-1", "--format=%h", f"--before={started} +0000"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return result.stdout.strip() or None


def best_curve(metrics: dict) -> dict[float, float]:
    best: dict[float, float] = {}
    for curve in metrics["verified_err"].values():
        for eps, err in curve.items():
            best[float(eps)] = min(err, best.get(float(eps), 1.0))
    return dict(sorted(best.items()))


def row_of(run_dir: Path, metrics: dict, default_commit: str) -> dict:
    curve = best_curve(metrics)
    row = {
        "method": metrics["method"],
        "estimator": metrics.get("gm_estimator", "all"),
        "loss_fusion": metrics.get("loss_fusion", False),
        "eps_train": metrics["eps_train"],
        "seed": metrics["seed"],
        "clean_err": metrics["clean_err"],
        "pgd_err_0.3": metrics["pgd_err"].get("0.3", ""),
        "epochs": metrics["epochs"],
        "seconds": metrics["seconds"],
        "command": command_of(run_dir),
        "commit": commit_at_start(run_dir) or metrics.get("provenance", {}).get("commit", default_commit),
    }
    for eps in (0.1, 0.2, 0.3, 0.4, 0.5):
        row[f"verified_err_{eps}"] = curve.get(eps, "")
    return row


def label(row: dict) -> str:
    parts = [row["method"]]
    if row["estimator"] != "all":
        parts.append(row["estimator"])
    if row["loss_fusion"]:
        parts.append("fused")
    return " ".join(parts) + f" (seed {row['seed']})"


def drawdown(rows_and_curves, eps_train: float) -> Figure:
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for row, curve in rows_and_curves:
        axes.plot(list(curve), [100 * e for e in curve.values()], marker=".", label=label(row))
    axes.set_xlabel("eps_eval")
    axes.set_ylabel("verified error (%), best of IBP / CROWN-IBP")
    axes.set_title(f"MNIST, DM-small, eps_train {eps_train:g}")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure


def table_markdown(rows: list[dict], eps_train: float) -> list[str]:
    """Table 3's layout: one line per run, errors in %, sorted by method."""
    radii = (0.1, 0.2, 0.3, 0.4, 0.5)
    lines = [
        f"### eps_train {eps_train:g}",
        "",
        "| run | standard | " + " | ".join(f"verified {e}" for e in radii) + " | PGD 0.3 | epochs | minutes | commit |",
        "| --- |" + " --- |" * (len(radii) + 5),
    ]
    for row in sorted(rows, key=lambda r: (r["method"], r["estimator"], r["loss_fusion"], r["seed"])):
        cells = [label(row), f"{100 * row['clean_err']:.2f}"]
        cells += [f"{100 * row[f'verified_err_{e}']:.2f}" if row[f"verified_err_{e}"] != "" else "-" for e in radii]
        cells += [
            f"{100 * row['pgd_err_0.3']:.2f}" if row["pgd_err_0.3"] != "" else "-",
            str(row["epochs"]),
            f"{row['seconds'] / 60:.1f}",
            row["commit"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/gm"))
    parser.add_argument(
        "--default-commit", default="unknown", help="commit of runs whose metrics.json predates provenance"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows, curves = [], []
    for folder in args.folders:
        for run_dir in sorted(p.parent for p in folder.rglob(".hydra/overrides.yaml")):
            run_dir = run_dir.parent if run_dir.name == ".hydra" else run_dir
            try:
                metrics = json.loads((run_dir / "metrics.json").read_text())
            except (OSError, ValueError) as err:
                log.warning("incomplete: %s (%s)", run_dir, type(err).__name__)
                continue
            row = row_of(run_dir, metrics, args.default_commit)
            rows.append(row)
            curves.append((row, best_curve(metrics)))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "table3.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    markdown = []
    for eps_train in sorted({row["eps_train"] for row in rows}):
        picked = [(row, curve) for row, curve in curves if row["eps_train"] == eps_train]
        drawdown(picked, eps_train).savefig(args.out / f"fig3_eps{eps_train:g}.png", dpi=120)
        markdown += table_markdown([row for row, _ in picked], eps_train)
    (args.out / "table3.md").write_text("\n".join(markdown) + "\n")
    log.info("%d runs -> %s", len(rows), args.out / "table3.csv")


if __name__ == "__main__":
    main()
