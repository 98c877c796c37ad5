"""Liang et al.'s Table 3 and Fig. 3 from certtrain's own runs: one CSV row per run, the drawdown
figure (verified error against eps_eval, one curve per run).

    python experiments/gm/table3.py multirun/table3_eps0.5 multirun/table3_eps0.6 --out results/gm

Reads every metrics.json under the folders (runs of conf/experiment/table3_mnist.yaml or any
run with the same evaluation grid). Verified error at a radius is the lower of the IBP and
CROWN-IBP certificates' errors (each is sound). Writes <out>/table3.csv and <out>/fig3_eps<e>.png
per training radius. A run folder without a readable metrics.json is listed as incomplete.
The commit column is the last commit made before the run started (from its train.log).

    python experiments/gm/table3.py runs/table3_protocol/eps0.6 --keep results/gm/table3.csv --out results/gm

--keep carries over an earlier table3.csv's rows that no run in the folders replaces (a run of
the same training radius, configuration and seed replaces its row; the others' run folders may be
gone): the tables and figures are rebuilt from the CSV's figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import subprocess
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from certtrain.results import Errors

log = logging.getLogger("table3")

COLUMNS = [
    "method",
    "estimator",
    "loss_fusion",
    "eps_train",
    "kappa_final",
    "ramp_epochs",
    "lr",
    "seed",
    "val_clean_err",
    "val_verified_err_0.3",
    "clean_err",
    "verified_err_0.1",
    "verified_err_0.2",
    "verified_err_0.3",
    "verified_err_0.4",
    "verified_err_0.5",
    "pgd_err_0.3",
    "pgd_err_0.5",
    "apgd_err_0.3",
    "apgd_err_0.5",
    "apgd_set_verified_err_0.3",
    "apgd_samples",
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
        cwd=Path(__file__).resolve().parents[2],
    )
    return result.stdout.strip() or None


def best_curve(metrics: dict) -> dict[float, float]:
    """Per radius (a float, ascending), the best certificate's verified error."""
    return dict(sorted((float(eps), err) for eps, err in Errors.from_metrics(metrics).best().items()))


def _attack(run_dir: Path) -> dict:
    """scripts/attack_runs.py's PGD/APGD figures on the first test images, if it ran."""
    path = run_dir / "attack.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _config(run_dir: Path) -> dict:
    path = run_dir / ".hydra" / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def row_of(run_dir: Path, metrics: dict, default_commit: str) -> dict:
    curve = best_curve(metrics)
    config, attack, val = _config(run_dir), _attack(run_dir), metrics.get("val")
    row = {
        "method": metrics["method"],
        "estimator": metrics.get("gm_estimator", "all"),
        "loss_fusion": metrics.get("loss_fusion", False),
        "eps_train": metrics["eps_train"],
        "kappa_final": config.get("method", {}).get("kappa_final", ""),
        "ramp_epochs": config.get("schedule", {}).get("ramp_epochs", ""),
        "lr": config.get("lr", ""),
        "seed": metrics["seed"],
        "val_clean_err": val["clean_err"] if val else "",
        "val_verified_err_0.3": best_curve(val).get(0.3, "") if val else "",
        "clean_err": metrics["clean_err"],
        "pgd_err_0.3": metrics["pgd_err"].get("0.3", ""),
        "pgd_err_0.5": metrics["pgd_err"].get("0.5", ""),
        "apgd_err_0.3": attack.get("apgd_err", {}).get("0.3", ""),
        "apgd_err_0.5": attack.get("apgd_err", {}).get("0.5", ""),
        # verified error on the same first images APGD attacked (the full test set's is above)
        "apgd_set_verified_err_0.3": attack.get("verified_err", {}).get("0.3", ""),
        "apgd_samples": attack.get("samples", ""),
        "epochs": metrics["epochs"],
        "seconds": metrics["seconds"],
        "command": command_of(run_dir),
        "commit": commit_at_start(run_dir) or metrics.get("provenance", {}).get("commit", default_commit),
    }
    for eps in (0.1, 0.2, 0.3, 0.4, 0.5):
        row[f"verified_err_{eps}"] = curve.get(eps, "")
    return row


TEXT_COLUMNS = ("method", "estimator", "command", "commit")


def _number(text: str) -> int | float | str:
    """A CSV cell as row_of wrote it: an int stays an int, blanks stay ''."""
    if text == "":
        return ""
    try:
        return int(text)
    except ValueError:
        return float(text)


def row_from_csv(record: dict) -> dict:
    """One table3.csv line as row_of made it (numbers as numbers, loss_fusion a bool)."""
    row = {
        key: value if key in TEXT_COLUMNS else _number(value) for key, value in record.items() if key != "loss_fusion"
    }
    return {**row, "loss_fusion": record["loss_fusion"] == "True"}


def curve_of_row(row: dict) -> dict[float, float]:
    """The verified-error curve a kept row carries (the protocol evaluates at RADII only)."""
    return {eps: float(row[f"verified_err_{eps}"]) for eps in RADII if row[f"verified_err_{eps}"] != ""}


def _run_key(row: dict) -> tuple:
    return (row["eps_train"], *_config_key(row), row["seed"])


def kept_rows(path: Path, new_rows: list[dict]) -> list[dict]:
    """The earlier CSV's rows less those a new run replaces (the same configuration and seed).
    A CSV written before the lr column read "" there."""
    with open(path, newline="") as handle:
        rows = [row_from_csv({"lr": "", **record}) for record in csv.DictReader(handle)]
    replaced = {_run_key(row) for row in new_rows}
    return [row for row in rows if _run_key(row) not in replaced]


def label(row: dict) -> str:
    parts = [row["method"]]
    if row["estimator"] != "all":
        parts.append(row["estimator"])
    if row["loss_fusion"]:
        parts.append("fused")
    return " ".join(parts) + f" (seed {row['seed']})"


def degenerate(row: dict) -> bool:
    """A single-radius loss with kappa_final 0 at eps_train >= 0.5: its optimum is the constant
    classifier (every ball holds the grey image), so the row is not a baseline."""
    return row["method"] in ("ibp", "crown_ibp") and row["kappa_final"] == 0 and row["eps_train"] >= 0.5


def _pct(value) -> str:
    return "-" if value == "" or value is None else f"{100 * float(value):.2f}"


def drawdown(rows_and_curves, eps_train: float) -> Figure:
    """One curve per run; where configurations ran with several seeds, their mean +- sd only."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    groups: dict[tuple, list] = {}
    for row, curve in rows_and_curves:
        groups.setdefault(_config_key(row), []).append((row, curve))
    seeded = {key: runs for key, runs in groups.items() if len(runs) >= 2}
    if seeded:
        for key, runs in sorted(seeded.items(), key=str):
            radii = sorted(set.intersection(*(set(curve) for _, curve in runs)))
            values = [[100 * curve[e] for _, curve in runs] for e in radii]
            mean = [statistics.mean(v) for v in values]
            sd = [statistics.stdev(v) for v in values]
            name = label(runs[0][0]).rsplit(" (", 1)[0] + f", kappa_final {key[3]:g}"
            name += (f", lr {key[5]:g}" if key[5] != "" else "") + f" ({len(runs)} seeds)"
            axes.plot(radii, mean, marker=".", label=name)
            axes.fill_between(radii, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)], alpha=0.2)
    else:
        for row, curve in rows_and_curves:
            axes.plot(list(curve), [100 * e for e in curve.values()], marker=".", label=label(row))
    axes.set_xlabel("eps_eval")
    axes.set_ylabel("verified error (%), union of IBP / CROWN-IBP")
    axes.set_title(f"MNIST, DM-small, eps_train {eps_train:g}")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure


RADII = (0.1, 0.2, 0.3, 0.4, 0.5)
# Liang et al. 2023, Table 3, MNIST, eps_train 0.5: standard, verified at 0.2 / 0.3 / 0.4 (%).
PUBLISHED = {
    0.5: {
        "IBP": (46.38, 62.79, 72.14, 81.92),
        "CROWN-IBP": (17.13, 36.19, 48.55, 65.48),
        "GM-CROWN-IBP": (7.98, 16.00, 24.03, 43.73),
    }
}
MEASURES = (
    ["clean_err"]
    + [f"verified_err_{e}" for e in RADII]
    + ["pgd_err_0.3", "apgd_err_0.3", "apgd_set_verified_err_0.3", "pgd_err_0.5", "apgd_err_0.5"]
)
MEASURE_NAMES = (
    ["standard"]
    + [f"verified {e}" for e in RADII]
    + ["PGD 0.3", "APGD 0.3 (1k)", "verified 0.3 (the same 1k)", "PGD 0.5", "APGD 0.5 (1k)"]
)


def table_markdown(rows: list[dict], eps_train: float) -> list[str]:
    """One line per run, errors in %, sorted by method; kappa-0 single-radius rows marked."""
    lines = [
        f"### eps_train {eps_train:g}: every run",
        "",
        "| run | kappa_final | ramp | lr | val verified 0.3 | "
        + " | ".join(MEASURE_NAMES)
        + " | epochs | minutes | commit |",
        "| --- |" + " --- |" * (len(MEASURES) + 7),
    ]
    key = lambda r: (
        r["method"],
        r["estimator"],
        r["loss_fusion"],
        str(r["kappa_final"]),
        str(r["ramp_epochs"]),
        str(r["lr"]),
        r["seed"],
    )
    for row in sorted(rows, key=key):
        name = label(row) + (" *degenerate objective*" if degenerate(row) else "")
        lr = "-" if row["lr"] == "" else f"{row['lr']:g}"
        cells = [name, f"{row['kappa_final']:g}", f"{row['ramp_epochs']:g}", lr, _pct(row["val_verified_err_0.3"])]
        cells += [_pct(row[m]) for m in MEASURES]
        cells += [str(row["epochs"]), f"{row['seconds'] / 60:.1f}", row["commit"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _config_key(row: dict) -> tuple:
    return (
        row["method"],
        row["estimator"],
        row["loss_fusion"],
        row["kappa_final"],
        row["ramp_epochs"],
        row["lr"],
        row["epochs"],
    )


def seeds_markdown(rows: list[dict], eps_train: float) -> list[str]:
    """Mean +- sd (sample sd over seeds) of each configuration run with two or more seeds, beside
    the published rows."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(_config_key(row), []).append(row)
    seeded = {k: v for k, v in groups.items() if len({r["seed"] for r in v}) >= 2}
    if not seeded:
        return []
    lines = [
        f"### eps_train {eps_train:g}: mean +- sd over seeds",
        "",
        "| configuration | seeds | " + " | ".join(MEASURE_NAMES) + " |",
        "| --- | --- |" + " --- |" * len(MEASURES),
    ]
    for name, published in PUBLISHED.get(eps_train, {}).items():
        standard, *verified = published
        cells = [f"{name}, published", "", f"{standard:.2f}", "", *(f"{v:.2f}" for v in verified), "", ""]
        lines.append("| " + " | ".join(cells + [""] * (len(MEASURES) + 2 - len(cells))) + " |")
    for key in sorted(seeded, key=str):
        group = seeded[key]
        method, estimator, fusion, kappa, ramp, lr, _ = key
        name = " ".join([method] + ([estimator] if estimator != "all" else []) + (["fused"] if fusion else []))
        name += f", kappa_final {kappa:g}, ramp {ramp:g}" + (f", lr {lr:g}" if lr != "" else "")
        cells = [name, ", ".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"]))]
        for measure in MEASURES:
            values = [100 * float(r[measure]) for r in group if r[measure] != ""]
            if len(values) >= 2:
                cells.append(f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}")
            else:
                cells.append(f"{values[0]:.2f}" if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/gm"))
    parser.add_argument("--keep", type=Path, help="an earlier table3.csv: keep its rows no new run replaces")
    parser.add_argument(
        "--default-commit", default="unknown", help="commit of runs whose metrics.json predates provenance"
    )
    args = parser.parse_args(argv)
    if args.keep and not args.keep.is_file():
        parser.error(f"--keep {args.keep}: no such table3.csv; pass the path of an earlier table3.csv, or drop --keep")
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
    if args.keep:
        kept = kept_rows(args.keep, rows)
        log.info("%d rows kept from %s", len(kept), args.keep)
        rows += kept
        curves += [(row, curve_of_row(row)) for row in kept]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "table3.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    markdown = []
    for eps_train in sorted({row["eps_train"] for row in rows}):
        picked = [(row, curve) for row, curve in curves if row["eps_train"] == eps_train]
        drawdown(picked, eps_train).savefig(args.out / f"fig3_eps{eps_train:g}.png", dpi=120)
        markdown += seeds_markdown([row for row, _ in picked], eps_train)
        markdown += table_markdown([row for row, _ in picked], eps_train)
    (args.out / "table3.md").write_text("\n".join(markdown) + "\n")
    log.info("%d runs -> %s", len(rows), args.out / "table3.csv")


if __name__ == "__main__":
    main()
