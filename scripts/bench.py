"""Time one full certified-training step (forward, bounds, loss, backward, optimiser step).

    python scripts/bench.py --model dm_small --batch 256
    python scripts/bench.py --model dm_medium --dataset cifar10 --batch 128 --methods crown_ibp

Prints a line per method and, last, one JSON line:
{"model": ..., "batch": ..., "device": ..., "ms_per_step": {"standard": .., "ibp": .., ...}, "ratios": {..},
 "gflop_per_step": {..}, "floor_ms": {..}, "fraction_of_matmul_rate": {..}, "peak_step_mb": {..},
 "matmul_gflops": .., "conv_gflops": .., "peak_rss_mb": ..}
ms_per_step is the median over --steps timed steps (the methods taking turns) after --warmup
untimed rounds, on random
MNIST/CIFAR-shaped batches; crown_ibp is beta = 1 (the costly ramp phase), gm_crown_ibp uses
N = --gm-n sub-perturbations (stacked into one bound call on a GPU, one after another on a CPU);
*_sampled draws one radius per sample (gm.estimator=sampled, one bound call), *_fused bounds the CE
itself (method.loss_fusion=true). ratios: the issue-11 targets, each against ibp or crown_ibp of
the same run. peak_rss_mb is the process's peak
resident memory (ru_maxrss) at the end, covering every method run.

The floor (certtrain/cost.py, after the timed rounds): gflop_per_step counts one step's matmuls
and convolutions, forward, bound passes and backward (torch's FLOP formulas); matmul_gflops and
conv_gflops are this device's rates measured in the same run (a 1024^3 matmul, a DM-small-shaped
convolution); floor_ms = the step's FLOPs at the matmul rate; fraction_of_matmul_rate = floor_ms /
ms_per_step. peak_step_mb: the most memory one step holds allocated beyond what was allocated
before it (profiler allocation events on a CPU, the allocator's peak on CUDA). --no-cost skips them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from certtrain.cost import conv_gflops, count_flops, matmul_gflops, peak_step_bytes
from certtrain.losses import RobustContext
from certtrain.methods import get_method, training_loss
from certtrain.models import build_model

# bench key -> (training method, gm.estimator, method.loss_fusion)
VARIANTS = {
    "standard": ("standard", "all", False),
    "ibp": ("ibp", "all", False),
    "crown_ibp": ("crown_ibp", "all", False),
    "gm_crown_ibp": ("gm_crown_ibp", "all", False),
    "gm_crown_ibp_sampled": ("gm_crown_ibp", "sampled", False),
    "crown_ibp_fused": ("crown_ibp", "all", True),
    "gm_crown_ibp_sampled_fused": ("gm_crown_ibp", "sampled", True),
    "sabr": ("sabr", "all", False),
    "mtl_ibp": ("mtl_ibp", "all", False),
    "cc_ibp": ("cc_ibp", "all", False),
    "exp_ibp": ("exp_ibp", "all", False),
}
METHODS = tuple(VARIANTS)


def _method_config(method: str, attack_steps: int | None):
    """The method's default config; the attack methods with --attack-steps when it is given."""
    config = get_method(method).defaults()
    if attack_steps is not None and hasattr(config, "attack_steps"):
        config.attack_steps = attack_steps
    return config


def make_step(model, optimizer, variant: str, eps: float, gm_n: int, attack_steps: int | None = None):
    """One training step of `variant` at radius eps with kappa = 0 (pure robust loss, beta = 1)."""
    method, estimator, fused = VARIANTS[variant]
    generator = torch.Generator().manual_seed(0)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        context = RobustContext(
            model,
            x,
            y,
            eps=eps,
            beta=1.0,
            gm_n=gm_n if method.startswith("gm_") else None,
            gm_estimator=estimator,
            loss_fusion=fused,
            generator=generator,
            method=_method_config(method, attack_steps),
        )
        loss, _ = training_loss(method, context, kappa=0.0)
        loss.backward()
        optimizer.step()

    return step


def time_methods(model, methods, x, y, args) -> dict[str, float]:
    """Median ms per step of each method. The methods take turns, one step each per round, so a
    machine that speeds up or slows down during the run (other load, clocks) shifts every
    method alike and the ratios stay comparable; every method is warmed up first (compiling)."""
    steps = {
        m: make_step(model, torch.optim.Adam(model.parameters(), lr=1e-4), m, args.eps, args.gm_n, args.attack_steps)
        for m in methods
    }
    for _ in range(args.warmup):
        for step in steps.values():
            step(x, y)
    times = {m: [] for m in methods}
    for _ in range(args.steps):
        for method, step in steps.items():
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(x, y)
            if x.is_cuda:
                torch.cuda.synchronize()
            times[method].append(time.perf_counter() - start)
    return {m: round(1000 * statistics.median(t), 1) for m, t in times.items()}


def step_costs(model, methods, x, y, args) -> dict:
    """FLOPs and peak memory of one step of each method, and the device's rates (untimed).
    Every peak is taken before any FLOP count: a step run under a dispatch mode (the FLOP
    count) leaves torch.compile's kernels falling back to eager code for the rest of the process."""
    steps = {
        m: make_step(model, torch.optim.Adam(model.parameters(), lr=1e-4), m, args.eps, args.gm_n, args.attack_steps)
        for m in methods
    }
    costs = {"gflop_per_step": {}, "peak_step_mb": {}}
    for method, step in steps.items():
        step(x, y)  # warm-up: optimiser state and compiled kernels exist before anything is measured
        costs["peak_step_mb"][method] = round(peak_step_bytes(lambda: step(x, y), x.device) / 2**20, 1)
    for method, step in steps.items():
        costs["gflop_per_step"][method] = round(count_flops(lambda: step(x, y)) / 1e9, 3)
    costs["matmul_gflops"] = round(matmul_gflops(x.device), 1)
    costs["conv_gflops"] = round(conv_gflops(x.device, batch=x.shape[0]), 1)
    return costs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dm_small")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--gm-n", type=int, default=4)
    parser.add_argument(
        "--attack-steps",
        type=int,
        default=None,
        help="training attack steps of sabr, mtl_ibp, ... (default: their configs')",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--no-cost", action="store_true", help="skip the FLOP floor and the peak memory")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(args.model, args.dataset).to(device).train()
    shape = (3, 32, 32) if args.dataset == "cifar10" else (1, 28, 28)
    x = torch.rand(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    ms = time_methods(model, methods, x, y, args)
    for method, value in ms.items():
        print(f"{method:>26}: {value:8.1f} ms/step", file=sys.stderr)
    ratios = {
        f"{key}/{base}": round(ms[key] / ms[base], 3)
        for key, base in (
            ("gm_crown_ibp_sampled", "crown_ibp"),
            ("gm_crown_ibp", "crown_ibp"),
            ("crown_ibp_fused", "ibp"),
            ("crown_ibp", "ibp"),
            ("gm_crown_ibp_sampled_fused", "ibp"),
            ("sabr", "ibp"),
            ("mtl_ibp", "ibp"),
            ("cc_ibp", "ibp"),
            ("exp_ibp", "ibp"),
        )
        if key in ms and base in ms
    }
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "batch": args.batch,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "ms_per_step": ms,
        "ratios": ratios,
    }
    if not args.no_cost:
        costs = step_costs(model, methods, x, y, args)
        floor = {m: round(1e3 * gflop / costs["matmul_gflops"], 1) for m, gflop in costs["gflop_per_step"].items()}
        result.update(costs, floor_ms=floor, fraction_of_matmul_rate={m: round(floor[m] / ms[m], 3) for m in ms})
        for method in methods:
            print(
                f"{method:>26}: {costs['gflop_per_step'][method]:7.2f} GFLOP, floor {floor[method]:7.1f} ms "
                f"({100 * floor[method] / ms[method]:.0f}% of the matmul rate), peak {costs['peak_step_mb'][method]:.0f} MB",
                file=sys.stderr,
            )
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
