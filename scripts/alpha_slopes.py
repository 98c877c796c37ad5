"""alpha-CROWN's slopes one per neuron and spec row against one per neuron shared by the rows
(and, with --full, the variant with optimised intermediate bounds), on the same test images:
verified error and seconds.

    python scripts/alpha_slopes.py --model wk17a --weights ../shared/models/wk17a_linf0.1.pth --eps 0.1
    python scripts/alpha_slopes.py --run outputs/ibp_mnist_dm_small --eps 0.1
"""

from __future__ import annotations

import argparse
import time

import torch

from certtrain.bounds import certified, margin_spec
from certtrain.bounds.alpha import alpha_crown_lower
from certtrain.bounds.graph import build_ops
from certtrain.data import load_split, to_float
from certtrain.losses import input_box
from certtrain.verify_app.loading import load_network
from certtrain.verify_app.run_folder import read_run

VARIANTS = {
    "per neuron and row": {},
    "shared per neuron": {"shared_slopes": True},
}
# --full: batches share their union of unstable neurons as intermediate rows, which makes this
# slow in batches; results/ladder times it one sample at a time.
FULL = {"per neuron and row, intermediate bounds optimised (alpha-crown-full)": {"optimise_intermediate": True}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a train.py run folder (instead of --model / --weights)")
    parser.add_argument("--model", default="wk17a")
    parser.add_argument("--weights")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--full", action="store_true", help="also alpha-crown-full")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        trained = read_run(args.run)
        model = load_network(trained.model, str(trained.checkpoint), trained.stats)
    else:
        model = load_network(args.model, args.weights)
    test = load_split("mnist", "test", args.data_dir).subset(args.samples)
    x, y = to_float(test.images[: args.batch]), test.labels[: args.batch]
    alpha_crown_lower(build_ops(model, None, x)[0], margin_spec(y, 10), *input_box(x, args.eps))  # compiles kernels
    for name, options in {**VARIANTS, **(FULL if args.full else {})}.items():
        uncertified, seconds = 0, 0.0
        for start in range(0, args.samples, args.batch):
            x, y = to_float(test.images[start : start + args.batch]), test.labels[start : start + args.batch]
            x_L, x_U = input_box(x, args.eps)
            ops, _, _ = build_ops(model, None, x_L)
            begin = time.perf_counter()
            with torch.no_grad():
                wrong = model(x).argmax(1) != y
            lower = alpha_crown_lower(ops, margin_spec(y, 10), x_L, x_U, **options)
            seconds += time.perf_counter() - begin
            uncertified += int((~certified(lower) | wrong).sum())
        print(
            f"{name}: verified error {100 * uncertified / args.samples:.2f}%, {seconds / args.samples:.3f} s per sample"
        )


if __name__ == "__main__":
    main()
