"""Throughput of branch and bound's bounding step: sub-domains bounded per second, beside the
time alpha-CROWN (the root bound) takes for one domain.

    python scripts/bench_bab.py --model dm_small --eps 0.02 --batch 64 --threads 1

A random-weight network of the zoo (or --weights) on one MNIST-shaped input; sub-domains are
random splits of 8 unstable ReLUs each. Each figure is the median of --repeats timings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from certtrain.bab.bounding import SplitBounder, root_bounds
from certtrain.bounds.graph import build_ops
from certtrain.data import load_split
from certtrain.models import build_model
from certtrain.verify_app.loading import load_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dm_small")
    parser.add_argument(
        "--weights", default=None, help="a state_dict or train.py checkpoint for the model (default: random init)"
    )
    parser.add_argument(
        "--image", type=int, default=None, help="an MNIST test image (needs --data-dir) instead of noise"
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--batch", type=int, default=64, help="sub-domains split per call (2x children bounded)")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-refine", action="store_true", help="keep the root's intermediate bounds")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = load_network(args.model, args.weights) if args.weights else build_model(args.model).eval()
    model = model.to(dtype)
    x = torch.rand(1, 1, 28, 28, dtype=dtype)
    if args.image is not None:
        x = load_split("mnist", "test", args.data_dir).images[args.image : args.image + 1].to(dtype) / 255
    x_L, x_U = (x - args.eps).clamp(0, 1), (x + args.eps).clamp(0, 1)
    ops, _, out = build_ops(model, None, x)
    c = torch.zeros(out[0], dtype=dtype)
    label = int(model(x).argmax())
    c[label], c[(label + 1) % out[0]] = 1.0, -1.0
    root = root_bounds(ops, x_L, x_U)
    bounder = SplitBounder(ops, x_L, x_U, c, iterations=args.iterations, root=root, refine=not args.no_refine)

    def timed(fn):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    alpha = timed(lambda: bounder.bound(bounder.empty_splits(), iterations=50))
    children = 2 * args.batch
    splits = bounder.empty_splits(children)
    gen = torch.Generator().manual_seed(0)
    for i in bounder.relus:
        lower, upper = (t.reshape(-1) for t in root[i])
        unstable = ((lower < 0) & (upper > 0)).nonzero().flatten()
        for d in range(children):
            picked = unstable[torch.randperm(len(unstable), generator=gen)[:8]]
            splits[i][d, picked] = torch.where(torch.rand(len(picked), generator=gen) < 0.5, 1, -1).to(torch.int8)
    batch = timed(lambda: bounder.bound(splits))
    unstable = sum(int(((r[0] < 0) & (r[1] > 0)).sum()) for r in (root[i] for i in bounder.relus))
    print(
        f"{args.model} ({args.dtype}, refine {not args.no_refine}, {args.threads} thread(s), eps {args.eps}, {unstable} unstable ReLUs): "
        f"alpha-CROWN root (50 steps) {alpha:.3f} s for one domain; {children} children x {args.iterations} "
        f"alpha/beta steps {batch:.3f} s = {children / batch:.0f} sub-domains per second"
    )


if __name__ == "__main__":
    main()
