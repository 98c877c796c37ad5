"""Branch and bound over the input box, for networks with few inputs (tabular, monotonic).

ReLU splitting pays off when the input is wide and the unstable neurons few; with a handful of
features, halving the input box is cheaper and works on any layer the bound engine handles
(GroupSort included). Each round bounds the `batch` open boxes with the lowest bounds by CROWN
intersected with IBP (one engine call, float64), closes the boxes whose every row is positive,
tries the centre of each open box as a counterexample, and halves the others along the input
whose width times the gradient of the worst row at the centre is largest.
"""

from __future__ import annotations

import time

import torch

from certtrain.bounds import tight_crown_lower

INPUT_SPLIT_MAX_INPUTS = 16  # split="auto" splits inputs up to this many features


def input_split_bab(net, x_L, x_U, C, deadline, check, batch: int = 256) -> tuple[str, torch.Tensor | None, dict]:
    """Decide C f(x) > 0 (every row) on [x_L, x_U] (batch 1, float64 net).

    Returns (robust | adversarial | timeout, witness, stats). check(x) -> confirmed point or None.
    """
    lows, highs = x_L.clone(), x_U.clone()
    closed, rounds = 0, 0
    started = time.perf_counter()
    while len(lows):
        if time.perf_counter() >= deadline:
            return "timeout", None, _stats(closed, rounds, len(lows), started)
        rounds += 1
        take = min(batch, len(lows))
        lo, hi = lows[:take], highs[:take]
        rest_lo, rest_hi = lows[take:], highs[take:]
        rows = C.expand(take, *C.shape)  # C: (rows, K), the same for every box
        with torch.no_grad():
            bound = tight_crown_lower(net, lo, hi, rows)
        open_ = (bound <= 0).any(1)
        closed += int((~open_).sum())
        lo, hi, bound = lo[open_], hi[open_], bound[open_]
        if len(lo) == 0:
            lows, highs = rest_lo, rest_hi
            continue
        centre = ((lo + hi) / 2).requires_grad_(True)
        with torch.enable_grad():
            margins = torch.einsum("bk,brk->br", net(centre).flatten(1), rows[: len(lo)])
            worst = margins.min(1).values
            (gradient,) = torch.autograd.grad(worst.sum(), centre)
        for k in torch.argsort(worst).tolist()[:8]:  # the most promising centres
            if worst[k] <= 0:
                witness = check(centre[k : k + 1].detach())
                if witness is not None:
                    return "adversarial", witness, _stats(closed, rounds, len(lows), started)
        width = (hi - lo).flatten(1)
        score = width * (gradient.flatten(1).abs() + 1e-12)  # width alone where the gradient vanishes
        dim = score.argmax(1)
        middle = ((lo + hi) / 2).flatten(1).gather(1, dim[:, None]).squeeze(1)
        left_hi, right_lo = hi.flatten(1).clone(), lo.flatten(1).clone()
        rows_ = torch.arange(len(lo), device=lo.device)
        left_hi[rows_, dim] = middle
        right_lo[rows_, dim] = middle
        shape = lo.shape
        children_lo = torch.cat((lo, right_lo.reshape(shape)))
        children_hi = torch.cat((left_hi.reshape(shape), hi))
        # lowest bounds first next round: the children inherit their parent's bound
        order = torch.argsort(bound.min(1).values.repeat(2))
        lows = torch.cat((children_lo[order], rest_lo))
        highs = torch.cat((children_hi[order], rest_hi))
    return "robust", None, _stats(closed, rounds, 0, started)


def _stats(closed, rounds, left, started):
    return {
        "input_boxes_closed": closed,
        "input_rounds": rounds,
        "input_boxes_open": left,
        "seconds": time.perf_counter() - started,
    }
