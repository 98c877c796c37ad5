"""certtrain/cost.py: the FLOP count and the peak memory that scripts/bench.py reports."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from certtrain.cost import conv_gflops, count_flops, matmul_gflops, peak_step_bytes


def test_flops_of_a_matmul_and_a_convolution_with_their_backward_are_the_closed_forms():
    a = torch.randn(32, 48, requires_grad=True)
    b = torch.randn(48, 16)
    assert count_flops(lambda: a @ b) == 2 * 32 * 48 * 16
    # backward of a @ b with respect to a: one more product of the same size
    assert count_flops(lambda: (a @ b).sum().backward()) == 2 * (2 * 32 * 48 * 16)
    x, w = torch.randn(4, 3, 8, 8), torch.randn(5, 3, 3, 3)
    assert count_flops(lambda: F.conv2d(x, w)) == 2 * 4 * 5 * 6 * 6 * 3 * 3 * 3
    assert count_flops(lambda: (x * 2).relu()) == 0  # elementwise work is not counted


def test_the_peak_is_what_is_alive_at_once_not_what_was_allocated_in_all():
    mb = 2**20

    def step():
        first = torch.ones(mb)  # 4 MB
        second = torch.ones(mb)  # 4 MB: 8 MB alive
        del first, second
        third = torch.ones(2 * mb)  # 8 MB after 8 MB freed: never more than 8 MB at once
        return third.sum()

    peak = peak_step_bytes(step, torch.device("cpu"))
    assert 8 * mb <= peak < 12 * mb


def test_the_rates_are_measured():
    device = torch.device("cpu")
    assert matmul_gflops(device, n=128, repeats=2) > 0
    assert conv_gflops(device, batch=4, repeats=2) > 0
