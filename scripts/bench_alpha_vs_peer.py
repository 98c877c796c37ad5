"""alpha-CROWN beside auto_LiRPA 0.7.1's CROWN-Optimized on the same network, samples and box, in
one sitting: each certtrain method's margin lower bounds and wall time, the peer's, and per spec
row how the two compare.

    python scripts/bench_alpha_vs_peer.py --run <train.py run folder> --eps 0.2 --samples 16
    python scripts/bench_alpha_vs_peer.py --model dm_small --weights <file> --eps 0.2 --peer-python /work/peer/venv/bin/python

The network is exported (layer list and weights) for scripts/alpha_auto_lirpa.py, which runs in
the peer's virtual environment. Both sides run one after the other with --threads torch threads.
Prints one JSON line: seconds per method, the peer's seconds, and for each certtrain method the
rows at least as tight as the peer's (within --tolerance, relative, of float32 rounding), the mean and the smallest difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from certtrain.bounds import FLOAT32_SLACK, lower_bounds, margin_spec
from certtrain.bounds.graph import flatten_layers
from certtrain.data import load_split, to_float
from certtrain.layers import Normalize
from certtrain.losses import input_box
from certtrain.verify_app.loading import load_network
from certtrain.verify_app.run_folder import read_run

METHODS = ("crown", "alpha-crown", "alpha-crown-full")  # "crown": every neuron by the backward pass


def export_layers(model: nn.Module) -> tuple[list, dict]:
    """The network as (kind, options) entries and a state_dict the peer script rebuilds it from."""
    layers, state = [], {}
    for index, layer in enumerate(flatten_layers(model)):
        if isinstance(layer, Normalize):
            layers.append(("normalize", {"mean": layer.mean.tolist(), "std": layer.std.tolist()}))
            continue
        if isinstance(layer, nn.Conv2d):
            options = dict(
                in_channels=layer.in_channels,
                out_channels=layer.out_channels,
                kernel_size=layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
            )
            layers.append(("conv", options))
        elif isinstance(layer, nn.Linear):
            layers.append(("linear", {"in_features": layer.in_features, "out_features": layer.out_features}))
        elif isinstance(layer, nn.ReLU):
            layers.append(("relu", {}))
        elif isinstance(layer, nn.Flatten):
            layers.append(("flatten", {}))
        else:
            raise SystemExit(f"layer {index} ({type(layer).__name__}) has no peer counterpart in alpha_auto_lirpa.py")
        state |= {f"{len(layers) - 1}.{name}": value for name, value in layer.state_dict().items()}
    return layers, state


def run_peer(model: nn.Module, x_L, x_U, C, args) -> dict:
    """scripts/alpha_auto_lirpa.py's bounds and seconds, in the peer's virtual environment."""
    layers, state = export_layers(model)
    with tempfile.TemporaryDirectory() as folder:
        export, out = Path(folder) / "export.pt", Path(folder) / "peer.pt"
        torch.save({"layers": layers, "state_dict": state, "x_L": x_L, "x_U": x_U, "C": C}, export)
        command = [args.peer_python, str(Path(__file__).with_name("alpha_auto_lirpa.py")), str(export), str(out)]
        command += ["--iterations", str(args.iterations), "--threads", str(args.threads)]
        subprocess.run(command, check=True, cwd=tempfile.gettempdir())  # not the repo: no shadowing
        return torch.load(out, weights_only=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a train.py run folder (its checkpoint, model and dataset)")
    parser.add_argument("--model", default="dm_small")
    parser.add_argument("--weights")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=50, help="the peer's CROWN-Optimized iterations")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--tolerance", type=float, default=FLOAT32_SLACK, help="relative: float32 rounding between two engines"
    )
    parser.add_argument("--peer-python", default="/work/peer/venv/bin/python")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument(
        "--peer-result", type=Path, help="keep the peer's bounds here, and reuse them when the file exists"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.run:
        trained = read_run(args.run)
        model = load_network(trained.model, str(trained.checkpoint), trained.stats)
        dataset = trained.dataset
    else:
        model, dataset = load_network(args.model, args.weights, args.dataset), args.dataset
    test = load_split(dataset, "test", args.data_dir).subset(args.samples)
    x, y = to_float(test.images), test.labels
    x_L, x_U = input_box(x, args.eps)
    C = margin_spec(y, 10)

    bounds, seconds = {}, {}
    for method in args.methods.split(","):
        start = time.perf_counter()
        with torch.no_grad():
            bounds[method] = lower_bounds(model, x_L, x_U, C, method=method)
        seconds[method] = round(time.perf_counter() - start, 3)

    if args.peer_result and args.peer_result.is_file():
        peer = torch.load(args.peer_result, weights_only=False)  # an earlier run's, same arguments
    else:
        peer = run_peer(model, x_L, x_U, C, args)
        if args.peer_result:
            torch.save(peer, args.peer_result)
    reference = peer["crown_optimized"]
    report = {
        "samples": len(test),
        "eps": args.eps,
        "rows": reference.numel(),
        "threads": args.threads,
        "seconds": seconds,
        "peer_seconds": peer["seconds"],
        "peer_iterations": peer["iterations"],
        "peer_crown_optimized_gain_over_crown": round((reference - peer["crown"]).mean().item(), 4),
    }
    for method, lower in bounds.items():
        difference = lower - reference
        report[method] = {
            "rows_at_least_as_tight": int((difference >= -args.tolerance * (1 + reference.abs())).sum()),
            "mean_difference": round(difference.mean().item(), 4),
            "smallest_difference": round(difference.min().item(), 4),
            "time_over_peer": round(seconds[method] / peer["seconds"]["crown_optimized"], 3),
            "mean_difference_to_peer_crown": round((lower - peer["crown"]).mean().item(), 4),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
