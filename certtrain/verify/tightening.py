"""Progressive bound tightening: interval (IBP) -> CROWN (the bound engine) -> LP -> MIP.

Tighter pre-activation bounds make more ReLUs stable (no binary) and the remaining big-M
constraints tighter. The first two levels come from `certtrain.bounds.intermediate_bounds`
over the whole network (max-pooling included: its input gets CROWN bounds and the pooling
DeepPoly's relaxation, certtrain.bounds.ops.MaxPoolOp). The LP and MIP levels solve, for every ReLU still unstable, max and
min of its input over the relaxation (LP) or the exact model (MIP) of the layers before it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from certtrain.bounds import FLOAT32_SLACK, intermediate_bounds
from certtrain.verify.encoding import Milp
from certtrain.verify.network import Relu, Step

LEVELS = ("ibp", "crown", "lp", "mip")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"unknown tightening {level!r}; choose one of {LEVELS}")
    return level


def _padded(bound: torch.Tensor, direction: float) -> np.ndarray:
    """Float32 engine bounds widened by the engine's documented float32-vs-float64 slack."""
    value = bound.double().reshape(-1).numpy()
    if bound.dtype == torch.float64:
        return value
    return value + direction * FLOAT32_SLACK * (1.0 + np.abs(value))


def engine_bounds(
    steps: list[Step], box_lower: np.ndarray, box_upper: np.ndarray, method: str, dtype: torch.dtype = torch.float64
):
    """Flat float64 (lower, upper) of the input of every step, and of the output last.

    dtype=torch.float32 runs the engine in float32 (about twice as fast for CROWN on convolutions)
    and widens every bound by FLOAT32_SLACK * (1 + |b|), the gap to the float64 bound that the
    engine's tests guarantee.
    """
    shape = (1, *steps[0].in_shape)
    x_L = torch.from_numpy(box_lower.reshape(shape)).to(dtype)
    x_U = torch.from_numpy(box_upper.reshape(shape)).to(dtype)
    with torch.no_grad():
        # The MILP intersects CROWN with interval bounds anyway: refining only the
        # interval-unstable neurons gives the same or tighter bounds at a fraction of the cost.
        result = intermediate_bounds(
            nn.Sequential(*[s.layer for s in steps]), x_L, x_U, method=method, only_unstable=method == "crown"
        )
    return [(_padded(low, -1.0), _padded(up, 1.0)) for low, up in result]


def intersect(first, second):
    """Elementwise tighter of two lists of bounds."""
    return [(np.maximum(a[0], b[0]), np.minimum(a[1], b[1])) for a, b in zip(first, second)]


def count_unstable(steps: list[Step], bounds) -> int:
    """ReLUs whose input bounds straddle zero (the binaries the MILP needs)."""
    total = 0
    for step, (lower, upper) in zip(steps, bounds):
        if isinstance(step.op, Relu):
            total += int(np.sum((lower < 0) & (upper > 0)))
    return total


def _pad(value: float, padding: float) -> float:
    return padding * (1.0 + abs(value))


def tighten_neurons(milp: Milp, expr, const, lower, upper, exact: bool, time_per_solve: float, deadline: float):
    """Max and min of every unstable row of (expr, const) over the model built so far.

    exact=False solves the LP relaxation, exact=True the MIP (its proved dual bound is used when a
    solve hits its time limit). Each solve stops early once the neuron is proved stable.
    Returns new (lower, upper) and the number of solves.
    """
    milp.set_integral(exact)
    padding = milp.options.bound_padding
    lower, upper = lower.copy(), upper.copy()
    solves = 0
    for i in np.flatnonzero((lower < 0) & (upper > 0)):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        row = expr[i]
        # max f = -min(-f); a proved min(-f) >= 0 means the ReLU is never active.
        top = milp.minimize(-row, -const[i], min(time_per_solve, remaining), cutoff=0.0)
        solves += 1
        if top.status in ("infeasible", "cutoff"):
            upper[i] = min(upper[i], 0.0)
            continue
        proved = top.bound  # the LP optimum, or a MIP's proved dual bound
        if proved is not None:
            upper[i] = min(upper[i], -proved + _pad(proved, padding))
        if upper[i] <= 0:
            continue
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        bottom = milp.minimize(row, const[i], min(time_per_solve, remaining), cutoff=0.0)
        solves += 1
        if bottom.status in ("infeasible", "cutoff"):
            lower[i] = max(lower[i], 0.0)
            continue
        proved = bottom.bound
        if proved is not None:
            lower[i] = max(lower[i], proved - _pad(proved, padding))
    milp.set_integral(False)
    return lower, upper, solves
