"""Verified error and seconds per sample of each certifier on the same test samples and radii.

    python scripts/compare_certifiers.py --weights ../shared/models/wk17a_linf0.1.pth --model wk17a \
        --eps 0.1 0.3 --samples 200 --certifiers ibp crown-ibp crown alpha-crown

Also PGD error (50 steps, 2 restarts), a lower bound of every verified error. One JSON line per
radius; exits 1 if a certifier certifies a sample that PGD attacks (a soundness bug).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from certtrain.attacks import pgd_attack
from certtrain.data import load_split, to_float
from certtrain.evaluate import CERTIFIERS
from certtrain.verify_app.loading import load_network


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="dm_small")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--certifiers", nargs="+", default=["ibp", "crown-ibp", "crown", "alpha-crown"])
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args(argv)
    model = load_network(args.model, args.weights, args.dataset)
    test = load_split(args.dataset, "test", args.data_dir).subset(args.samples)
    status = 0
    for eps in args.eps:
        attacked, certified, seconds = [], {c: [] for c in args.certifiers}, dict.fromkeys(args.certifiers, 0.0)
        for start in range(0, len(test), args.batch):
            x, y = to_float(test.images[start : start + args.batch]), test.labels[start : start + args.batch]
            _, found = pgd_attack(model, x, y, eps, steps=50, restarts=2, generator=torch.Generator().manual_seed(0))
            attacked.append(found)
            for name in args.certifiers:
                began = time.perf_counter()
                with torch.no_grad():
                    certified[name].append(CERTIFIERS[name](model, x, y, eps, 10))
                seconds[name] += time.perf_counter() - began
        attacked = torch.cat(attacked)
        line = {"weights": args.weights, "eps": eps, "samples": len(test), "pgd_err": attacked.float().mean().item()}
        for name in args.certifiers:
            mask = torch.cat(certified[name])
            line[f"verified_err/{name}"] = 1 - mask.float().mean().item()
            line[f"s_per_sample/{name}"] = round(seconds[name] / len(test), 4)
            if (mask & attacked).any():
                print(f"unsound: {name} certifies {int((mask & attacked).sum())} attacked samples", file=sys.stderr)
                status = 1
        print(json.dumps(line))
    return status


if __name__ == "__main__":
    sys.exit(main())
