"""The strongest attack on finished runs: PGD and APGD (APGD-CE, then targeted APGD-DLR) on the
first --samples test images of each train.py run folder, written to <run>/attack.json.

    python scripts/attack_runs.py runs/table3_protocol/eps0.5/*/*/* --eps 0.3 0.5 --samples 1000

Training evaluates with PGD (fast); this gives the empirical lower bound of robust error that the
tables print beside it, without retraining. A folder that already holds attack.json with the same
settings is skipped, so the script resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from certtrain.data import Split, load_split
from certtrain.evaluate import evaluate
from certtrain.provenance import git_commit
from certtrain.verify_app.loading import load_network
from certtrain.verify_app.run_folder import read_run

ATTACK_FILE = "attack.json"
CERTIFIED_BY = ("ibp", "crown-ibp")  # the union the training evaluation reports


def attack_run(folder: Path, eps: list[float], samples: int, steps: int, restarts: int, data_dir: str) -> dict:
    """PGD, APGD and the verified error (union of CERTIFIED_BY) on the first `samples` test
    images, in one pass: the attacks' lower bounds beside the certificates' upper bound."""
    trained = read_run(folder)
    network = load_network(trained.model, str(trained.checkpoint), trained.stats)
    test = load_split(trained.dataset, "test", data_dir)
    if samples > len(test):
        raise SystemExit(f"--samples {samples}: the {trained.dataset} test set has {len(test)} images")
    first = Split(test.images[:samples], test.labels[:samples], test.source)
    metrics = evaluate(
        network, first, eps, bounds=CERTIFIED_BY, pgd_steps=20, attack="apgd", apgd_steps=steps, apgd_restarts=restarts
    )
    return {
        "samples": samples,
        "eps": eps,
        "pgd_steps": 20,
        "apgd_steps": steps,
        "apgd_restarts": restarts,
        "clean_err": metrics["clean_err"],
        "pgd_err": metrics["pgd_err"],
        "apgd_err": metrics["apgd_err"],
        "verified_err": metrics["verified_err"]["best"],
        "commit": git_commit(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eps", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--samples", type=int, default=1000, help="the first N test images")
    parser.add_argument("--steps", type=int, default=100, help="APGD iterations per run")
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.samples < 1 or args.steps < 1 or args.restarts < 1:
        raise SystemExit("--samples, --steps and --restarts must be at least 1")
    torch.set_num_threads(args.threads)
    settings = {"samples": args.samples, "eps": args.eps, "apgd_steps": args.steps, "apgd_restarts": args.restarts}
    for folder in args.runs:
        out = folder / ATTACK_FILE
        result = json.loads(out.read_text()) if out.is_file() else {}
        if all(result.get(k) == v for k, v in settings.items()) and "verified_err" in result:
            print("kept", out)
            continue
        result = attack_run(folder, args.eps, args.samples, args.steps, args.restarts, args.data_dir)
        for eps, err in result["apgd_err"].items():  # sound certificates never undercut a real attack
            if err > result["verified_err"][eps] + 1e-12:
                raise SystemExit(
                    f"{folder}: APGD error {err} above verified error {result['verified_err'][eps]} at {eps}"
                )
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(folder, "APGD", result["apgd_err"], "PGD", result["pgd_err"], flush=True)


if __name__ == "__main__":
    main()
