"""What one step costs and what the machine could do: floating-point operations, the device's own
matmul and convolution rates, and the peak memory a step allocates.

    flops = count_flops(lambda: step(x, y))         # matmuls and convolutions, forward and backward
    rate = matmul_gflops(torch.device("cpu"))        # this machine, now
    floor_ms = 1e3 * flops / (rate * 1e9)            # the step at the machine's matmul rate
    peak = peak_step_bytes(lambda: step(x, y), x.device)

Only torch is imported here (the peer benchmark scripts/bench_auto_lirpa.py loads this file by
its path to measure auto_LiRPA the same way without importing certtrain).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class _FlopCount(TorchDispatchMode):
    """Counts with torch's own FLOP formulas (torch.utils.flop_counter.flop_registry). Not
    FlopCounterMode itself: its per-module tracker hooks break torch.autograd.grad on a leaf
    inside the counted code (the training attacks of SABR and MTL-IBP)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn) -> int:
    """Floating-point operations of fn()'s matrix products and convolutions (transposed ones and
    the backward passes included), by torch's FLOP formulas; elementwise work, which no matmul
    unit speeds up, is not counted."""
    with _FlopCount() as counter:
        fn()
    return counter.total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, flops: int, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel choice)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


def matmul_gflops(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an (n x n) @ (n x n) float32 matmul on `device` with the current thread count."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return _rate(lambda: a @ b, 2 * n**3, device, repeats)


def conv_gflops(device: torch.device, batch: int = 256, repeats: int = 5) -> float:
    """GFLOP/s of a convolution shaped like DM-small's second layer (16 -> 32 channels, 4x4,
    stride 2, 14x14 input), forward, float32."""
    x = torch.randn(batch, 16, 14, 14, device=device)
    w = torch.randn(32, 16, 4, 4, device=device)
    flops = 2 * batch * 32 * 7 * 7 * 16 * 4 * 4
    return _rate(lambda: F.conv2d(x, w, stride=2, padding=1), flops, device, repeats)


def peak_step_bytes(fn, device: torch.device) -> int:
    """The most bytes fn() holds allocated at once beyond what was allocated when it started.

    CUDA: the caching allocator's peak statistics. CPU: torch's profiler records every
    allocation (by the op that made it) and every free; the running sum's maximum is the peak.
    An op's temporaries freed before it returns are not seen (its net allocation is), so the CPU
    figure is a lower bound of the true peak by at most one op's scratch space.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage) for event in prof.events() if event.self_cpu_memory_usage
    )
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return int(peak)
