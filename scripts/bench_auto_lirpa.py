"""Peer benchmark: training-step time of auto_LiRPA on the DM-small MNIST net.

This script is only a benchmark of a PEER library (auto_LiRPA 0.7.1); it does
not import certtrain and none of auto_LiRPA's code is part of certtrain. It
uses auto_LiRPA's public API (BoundedModule, BoundedTensor,
PerturbationLpNorm, compute_bounds) and runs in its own virtual environment:

    git clone <auto_LiRPA git mirror> /work/peer/auto_LiRPA   # v0.7.1
    python3 -m venv /work/peer/venv
    /work/peer/venv/bin/pip install torch==2.13.0             # local CPU wheel
    /work/peer/venv/bin/pip install --no-deps -e /work/peer/auto_LiRPA
    /work/peer/venv/bin/pip install numpy packaging appdirs pyyaml tqdm graphviz

(--no-deps because auto_LiRPA's setup.py pins torch<2.9 and wants torchvision,
pytest, pylint, ninja, which it does not need to import or run on CPU.)
Run it from a directory other than /work/peer, or the repository folder
shadows the installed package:

    /work/peer/venv/bin/python scripts/bench_auto_lirpa.py --steps 5 --threads 1

One timed step = zero_grad, bounds, loss, backward, Adam step. The loss is
CE(-lb, y), where lb holds the lower bounds of the margins z_y - z_j (j != y)
and 0 at the true class. Prints one JSON line with median ms per step and, measured as
scripts/bench.py measures certtrain (certtrain/cost.py, loaded by its file path: it imports only
torch), each step's GFLOP, its peak memory and the machine's matmul rate (--no-cost skips them).
"""

import argparse
import importlib.util
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")
import auto_LiRPA  # noqa: E402
from auto_LiRPA import BoundedModule, BoundedTensor  # noqa: E402
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402


def _cost_module():
    """certtrain/cost.py by path (only torch): the same FLOP count and peak memory as bench.py."""
    path = Path(__file__).resolve().parent.parent / "certtrain" / "cost.py"
    spec = importlib.util.spec_from_file_location("step_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dm_small():
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def margin_spec(y, n_classes=10):
    """C of shape (B, n-1, n): rows e_y - e_j for every j != y."""
    eye = torch.eye(n_classes, dtype=torch.float32)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, n, n)
    keep = y.unsqueeze(1) != torch.arange(n_classes).unsqueeze(0)
    return c[keep].view(y.shape[0], n_classes - 1, n_classes), keep


def worst_case_ce(lb, keep, y):
    """CE of worst-case logits: -lb at j != y, 0 at the true class."""
    z = torch.zeros(keep.shape, dtype=lb.dtype)
    z = z.masked_scatter(keep, -lb.reshape(-1))
    return F.cross_entropy(z, y)


def make_step(method, bmodel, opt, x, y, eps):
    c, keep = margin_spec(y)
    ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    bx = BoundedTensor(x, ptb)

    def step():
        opt.zero_grad()
        if method == "standard":
            loss = F.cross_entropy(bmodel(x), y)
        elif method == "ibp":
            lb, _ = bmodel.compute_bounds(x=(bx,), C=c, method="IBP", bound_upper=False)
            loss = worst_case_ce(lb, keep, y)
        elif method == "crown_ibp":
            lb, _ = bmodel.compute_bounds(x=(bx,), C=c, method="CROWN-IBP", bound_upper=False)
            loss = worst_case_ce(lb, keep, y)
        else:
            raise ValueError(method)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="0: torch default")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--methods", default="standard,ibp,crown_ibp")
    p.add_argument("--no-cost", action="store_true", help="skip GFLOP and peak memory")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.rand(a.batch, 1, 28, 28)
    y = torch.randint(0, 10, (a.batch,))

    result, gflop, peak = {}, {}, {}
    cost = None if a.no_cost else _cost_module()
    for method in a.methods.split(","):
        net = dm_small()
        bmodel = BoundedModule(net, torch.zeros(1, 1, 28, 28))
        opt = torch.optim.Adam(bmodel.parameters(), lr=1e-3)
        step = make_step(method, bmodel, opt, x, y, a.eps)
        for _ in range(a.warmup):
            step()
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        result[method] = round(statistics.median(times), 2)
        if cost is not None:  # the peak first, as bench.py does (a FLOP count disturbs compiled code)
            peak[method] = round(cost.peak_step_bytes(step, x.device) / 2**20, 1)
            gflop[method] = round(cost.count_flops(step) / 1e9, 3)
    extra = {}
    if cost is not None:
        extra = {
            "gflop_per_step": gflop,
            "peak_step_mb": peak,
            "matmul_gflops": round(cost.matmul_gflops(x.device), 1),
        }

    print(
        json.dumps(
            {
                "peer": "auto_LiRPA",
                "version": auto_LiRPA.__version__,
                "model": "dm_small",
                "batch": a.batch,
                "threads": torch.get_num_threads(),
                "ms_per_step": result,
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
