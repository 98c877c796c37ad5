"""Peer side of scripts/bench_alpha_vs_peer.py: auto_LiRPA 0.7.1's CROWN and CROWN-Optimized
(alpha-CROWN) lower bounds of the margins of an exported network, with their wall time.

Runs in the peer's own virtual environment (scripts/bench_auto_lirpa.py says how to make it) and
imports no certtrain code; it reads what bench_alpha_vs_peer.py exported:

    /work/peer/venv/bin/python scripts/alpha_auto_lirpa.py EXPORT.pt OUT.pt --iterations 50 --threads 1

EXPORT.pt: {"layers": [(kind, options)], "state_dict", "x_L", "x_U", "C"}; OUT.pt gets
{"crown", "crown_optimized": (B, S) lower bounds, "seconds": {method: s}}.
"""

import argparse
import time
import warnings

import torch
import torch.nn as nn

warnings.filterwarnings("ignore")
from auto_LiRPA import BoundedModule, BoundedTensor  # noqa: E402
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402


def standardize(mean, std) -> nn.Conv2d:
    """(x - mean) / std per channel, what certtrain's Normalize layer computes, as a diagonal 1x1
    convolution (auto_LiRPA wants a constant operand of a subtraction to be 4-D with a batch dimension)."""
    channels = len(mean)
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.diag(1 / torch.as_tensor(std)).view(channels, channels, 1, 1))
        conv.bias.copy_(-torch.as_tensor(mean) / torch.as_tensor(std))
    return conv


def build(layers):
    modules = []
    for kind, options in layers:
        if kind == "normalize":
            modules.append(standardize(options["mean"], options["std"]))
        elif kind == "conv":
            modules.append(nn.Conv2d(**options))
        elif kind == "linear":
            modules.append(nn.Linear(**options))
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind == "flatten":
            modules.append(nn.Flatten())
        else:
            raise ValueError(f"no peer layer for {kind!r}")
    return nn.Sequential(*modules)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export")
    parser.add_argument("out")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = torch.load(args.export, weights_only=False)
    net = build(data["layers"])
    result = net.load_state_dict(data["state_dict"], strict=False)  # the standardising convs are set above
    standardizing = {
        f"{i}.{name}"
        for i, (kind, _) in enumerate(data["layers"])
        if kind == "normalize"
        for name in ("weight", "bias")
    }
    if result.unexpected_keys or set(result.missing_keys) != standardizing:
        raise SystemExit(f"the export does not fit the rebuilt network: {result}")
    net.eval()
    x_L, x_U, C = data["x_L"], data["x_U"], data["C"]
    center = (x_L + x_U) / 2
    result, seconds = {}, {}
    for name, method in (("crown", "CROWN"), ("crown_optimized", "CROWN-Optimized")):
        model = BoundedModule(
            net, torch.zeros_like(center[:1]), bound_opts={"optimize_bound_args": {"iteration": args.iterations}}
        )
        box = BoundedTensor(center, PerturbationLpNorm(norm=float("inf"), x_L=x_L, x_U=x_U))
        start = time.perf_counter()
        lower, _ = model.compute_bounds(x=(box,), C=C, method=method, bound_upper=False)
        seconds[name] = round(time.perf_counter() - start, 3)
        result[name] = lower.detach()
    torch.save({**result, "seconds": seconds, "iterations": args.iterations}, args.out)


if __name__ == "__main__":
    main()
