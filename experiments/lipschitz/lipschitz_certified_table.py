"""results/lipschitz/certified.csv: one row per (run, evaluation radius) of the given train.py
run folders, full test sets, with the tightest certifier of each run.

    python experiments/lipschitz/lipschitz_certified_table.py outputs/lipschitz_mnist_eps0.1 outputs/ibp_mnist_dm_small ...

Columns: dataset, eps, model, method, clean_err, verified_err, certifier, epochs, seconds,
command, commit (errors in %, the commit the run started from, the command rebuilt from the
run's .hydra/overrides.yaml); certifier names every certifier reaching the lowest verified error
(ibp=lipschitz: the Lipschitz certificate, which also counts IBP's, adds nothing to IBP). Rows of the same runs are replaced when the script runs again.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml
from lipschitz_common import RESULTS

from certtrain.results import Errors

COLUMNS = [
    "dataset",
    "eps",
    "model",
    "method",
    "clean_err",
    "verified_err",
    "certifier",
    "epochs",
    "seconds",
    "command",
    "commit",
]


def rows_of(run: Path) -> list[dict]:
    metrics = json.loads((run / "metrics.json").read_text())
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    command = "python train.py " + " ".join(o for o in overrides if not o.startswith("hydra."))
    rows = []
    errors = Errors.from_metrics(metrics)
    for eps, best in errors.best().items():
        curves = {name: errors.verified_err[name][eps] for name in errors.certifiers}
        # the certifiers that reach the best figure (e.g. ibp=lipschitz); "union" where only the
        # per-sample union does
        tied = "=".join(name for name, err in curves.items() if err == best) or "union"
        rows.append(
            {
                "dataset": metrics["dataset"],
                "eps": eps,
                "model": metrics["model"],
                "method": metrics["method"],
                "clean_err": f"{100 * metrics['clean_err']:.2f}",
                "verified_err": f"{100 * best:.2f}",
                "certifier": tied,
                "epochs": metrics["epochs"],
                "seconds": f"{metrics['seconds']:.0f}",
                "command": command,
                "commit": metrics.get("provenance", {}).get("commit", "unknown"),
            }
        )
    return rows


def main(runs: list[Path]) -> None:
    path = RESULTS / "certified.csv"
    new = [row for run in runs for row in rows_of(run)]
    keep = []
    if path.is_file():
        commands = {row["command"] for row in new}
        keep = [row for row in csv.DictReader(open(path)) if row["command"] not in commands]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(keep + new)
    for row in keep + new:
        print(", ".join(str(row[c]) for c in COLUMNS[:9]))


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
