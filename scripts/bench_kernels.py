"""Time the bound engine's fast kernels against the plain PyTorch they replace, in one run.

    python scripts/bench_kernels.py [--batch 256] [--rows 9] [--repeats 10]

Shapes are those of the CROWN-IBP step of dm_small on MNIST: spec rows x batch through the ReLU
after the first convolution (16 x 14 x 14) and back through that convolution to the 28 x 28
input. Each line is forward + backward, best of --repeats; the last line is JSON.
It also times the step's largest single cost, the transposed convolution back through layer 2,
and reports its rate in GFLOP/s beside a plain 2048 x 2048 matmul's: the floor under the step.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from certtrain.bounds import kernels


def best_ms(fn, repeats: int) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return round(1000 * best, 1)


def forward_backward(fn, inputs):
    def run():
        outputs = fn(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])

    return run


def conv_transpose(A, weight):
    return F.conv_transpose2d(A, weight, None, 2, 1)


def fold_transpose(A, weight):
    columns = weight.reshape(weight.shape[0], -1).t().matmul(A.reshape(A.shape[0], weight.shape[0], -1))
    return F.fold(columns, (28, 28), weight.shape[2:], 1, 1, 2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rows", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    batch, rows = args.batch, args.rows

    lower = (torch.randn(batch, 16 * 14 * 14) - 0.3).requires_grad_()
    upper = (lower.detach() + torch.rand_like(lower)).requires_grad_()
    A = torch.randn(batch, rows, 16 * 14 * 14, requires_grad=True)
    relu_inputs = (A, lower, upper)
    os.environ[kernels.COMPILE_ENV] = "1"
    results = {
        "relu_rule_eager": best_ms(forward_backward(kernels.relu_rule, relu_inputs), args.repeats),
        "relu_rule_compiled": best_ms(forward_backward(kernels.fused_relu_rule, relu_inputs), args.repeats),
    }

    weight = torch.randn(16, 1, 4, 4, requires_grad=True)
    A_conv = torch.randn(batch * rows, 16, 14, 14, requires_grad=True)
    transpose_inputs = (A_conv, weight)
    results["transpose_conv_transpose2d"] = best_ms(forward_backward(conv_transpose, transpose_inputs), args.repeats)
    results["transpose_fold"] = best_ms(forward_backward(fold_transpose, transpose_inputs), args.repeats)
    results["transpose_to_one_channel"] = best_ms(
        forward_backward(
            lambda A, w: kernels.transpose_to_one_channel(A, w, (2, 2), (1, 1), (1, 1), (28, 28)), transpose_inputs
        ),
        args.repeats,
    )
    # The floor under a CROWN-IBP step: the transposed convolution back through layer 2
    # (32 x 7 x 7 -> 16 x 14 x 14, 4 x 4 kernel, stride 2), against this CPU's matmul rate.
    A_layer2 = torch.randn(batch * rows, 32, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight2 = torch.randn(32, 16, 4, 4, requires_grad=True)
    results["transpose_layer2"] = best_ms(forward_backward(conv_transpose, (A_layer2, weight2)), args.repeats)
    # forward, gradient in A, gradient in W: three times the multiply-adds of the forward pass
    layer2_gflop = 3 * 2 * batch * rows * 32 * 7 * 7 * 16 * 4 * 4 / 1e9
    square = torch.randn(2048, 2048)
    matmul_ms = best_ms(lambda: square @ square, args.repeats)
    rates = {
        "transpose_layer2_gflop": round(layer2_gflop, 2),
        "transpose_layer2_gflops": round(layer2_gflop / results["transpose_layer2"] * 1000, 1),
        "matmul_2048_gflops": round(2 * 2048**3 / 1e9 / matmul_ms * 1000, 1),
    }
    for name, ms in results.items():
        print(f"{name:>28}: {ms:8.1f} ms (forward + backward)")
    for name, value in rates.items():
        print(f"{name:>28}: {value:8.1f}")
    print(json.dumps({"batch": batch, "rows": rows, "threads": torch.get_num_threads(), "ms": results, **rates}))
    return results


if __name__ == "__main__":
    main()
