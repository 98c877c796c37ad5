"""How the fused CE bound compares with CE(-m, y) of the CROWN-IBP margins, on trained networks.

    python scripts/fusion_tightness.py --weights ../shared/models/wk17a_linf0.1.pth --model wk17a --eps 0.1 0.3
    python scripts/fusion_tightness.py --weights multirun/table3_eps0.5/<run>/checkpoint.pt --model dm_small --eps 0.1 0.3 0.5

Both are upper bounds of the worst-case cross-entropy over the L-inf ball; the lower is the
tighter. Prints one JSON line per radius: the share of test samples where each is tighter and
the median and 90th percentile of (fused - unfused) in nats.
"""

from __future__ import annotations

import argparse
import json

import torch

from certtrain.bounds import ce_upper_bound, lower_bounds, margin_spec
from certtrain.data import load_split, to_float
from certtrain.losses import input_box, robust_cross_entropy
from certtrain.verify_app.loading import load_network


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="dm_small")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args(argv)
    model = load_network(args.model, args.weights, "mnist")
    test = load_split("mnist", "test", args.data_dir).subset(args.samples)
    x, y = to_float(test.images), test.labels
    for eps in args.eps:
        x_L, x_U = input_box(x, eps)
        with torch.no_grad():
            fused = torch.cat(
                [ce_upper_bound(model, a, b, t) for a, b, t in zip(x_L.split(250), x_U.split(250), y.split(250))]
            )
            margins = torch.cat(
                [
                    lower_bounds(model, a, b, margin_spec(t, 10), method="crown-ibp")
                    for a, b, t in zip(x_L.split(250), x_U.split(250), y.split(250))
                ]
            )
        unfused = robust_cross_entropy(margins, y)
        gap = fused - unfused
        print(
            json.dumps(
                {
                    "weights": args.weights,
                    "eps": eps,
                    "samples": len(y),
                    "fused_tighter": round((gap < -1e-6).float().mean().item(), 4),
                    "unfused_tighter": round((gap > 1e-6).float().mean().item(), 4),
                    "median_gap_nats": round(gap.median().item(), 4),
                    "p90_gap_nats": round(gap.quantile(0.9).item(), 4),
                    "mean_fused": round(fused.mean().item(), 4),
                    "mean_unfused": round(unfused.mean().item(), 4),
                }
            )
        )


if __name__ == "__main__":
    main()
