"""The CPU-scale table of results/sota: one row per method (mean +- sd over its seeds) from the
run folders' metrics.json, beside CTBench's CNN7 rows, and a CSV with every run's command and commit.

    python experiments/sota/sota_table.py results/sota/*_seed* --out results/sota

Each run folder holds metrics.json and overrides.yaml (Hydra's record of the command line).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import yaml

from certtrain.results import Errors

# CTBench (Mao et al. 2024), CNN7, CIFAR-10 2/255, clean / certified accuracy % as the issue quotes them.
CTBENCH_CIFAR_2 = {
    "ibp": (67.49, 55.99),
    "crown_ibp": (67.60, 57.11),
    "sabr": (77.86, 63.61),
    "mtl_ibp": (78.82, 64.41),
}


def read_run(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    overrides = yaml.safe_load((folder / "overrides.yaml").read_text())
    radii = sorted(metrics["pgd_err"], key=float)
    errors = Errors.from_metrics(metrics)
    best = errors.best()
    row = {
        "run": folder.name,
        "method": metrics["method"],
        "seed": metrics["seed"],
        "clean_err": 100 * metrics["clean_err"],
        "seconds": metrics["seconds"],
        "command": "python train.py " + " ".join(overrides),
        "commit": metrics["provenance"].get("commit", ""),
    }
    for r in radii:
        row[f"pgd_err@{r}"] = 100 * metrics["pgd_err"][r]
        row[f"verified_best@{r}"] = 100 * best[r]
        for name in errors.certifiers:
            row[f"verified_{name}@{r}"] = 100 * errors.verified_err[name][r]
    return row


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = [read_run(folder) for folder in args.runs]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    radii = sorted({key.split("@")[1] for key in columns if key.startswith("pgd_err@")}, key=float)
    lines = [
        "| method | seeds | clean err % | "
        + " | ".join(f"verified err % (best) @{r} | PGD err % @{r}" for r in radii)
        + " | seconds | CTBench CNN7 2/255 clean / verified err % |",
        "| --- " * (4 + 2 * len(radii)) + "| --- |",
    ]
    for method in dict.fromkeys(row["method"] for row in rows):
        runs = [row for row in rows if row["method"] == method]
        cells = [method, ",".join(str(row["seed"]) for row in runs), mean_sd([row["clean_err"] for row in runs])]
        for r in radii:
            cells += [
                mean_sd([row[f"verified_best@{r}"] for row in runs]),
                mean_sd([row[f"pgd_err@{r}"] for row in runs]),
            ]
        cells.append(mean_sd([row["seconds"] for row in runs]))
        anchor = CTBENCH_CIFAR_2.get(method)
        cells.append(f"{100 - anchor[0]:.2f} / {100 - anchor[1]:.2f}" if anchor else "")
        lines.append("| " + " | ".join(cells) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
