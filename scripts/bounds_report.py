"""Clean, PGD and verified error (IBP, CROWN-IBP, CROWN) of a zoo network on MNIST test images.

    python scripts/bounds_report.py --weights ../shared/models/wk17a_linf0.1.pth --model wk17a \
        --eps 0.1 --samples 200 --data-dir ../shared/data

Prints one JSON line: the errors and the seconds each part took.
"""

from __future__ import annotations

import argparse
import json
import time

from certtrain.data import load_split
from certtrain.evaluate import evaluate
from certtrain.verify_app.loading import load_network


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="wk17a")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--pgd-steps", type=int, default=50)
    parser.add_argument("--pgd-restarts", type=int, default=4)
    args = parser.parse_args(argv)
    model = load_network(args.model, args.weights, args.dataset)
    test = load_split(args.dataset, "test", args.data_dir).subset(args.samples)
    report = {"model": args.model, "weights": args.weights, "eps": args.eps, "samples": len(test)}
    for bound in ("ibp", "crown-ibp", "crown"):
        start = time.perf_counter()
        result = evaluate(model, test, [args.eps], bounds=[bound], pgd_steps=0)
        report[f"verified_err/{bound}"] = result["verified_err"][bound][f"{args.eps:g}"]
        report[f"seconds/{bound}"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    result = evaluate(model, test, [args.eps], bounds=[], pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts)
    report["clean_err"] = result["clean_err"]
    report["pgd_err"] = result["pgd_err"][f"{args.eps:g}"]
    report["seconds/pgd"] = round(time.perf_counter() - start, 2)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
