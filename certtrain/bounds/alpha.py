"""alpha-CROWN: CROWN's backward relaxation with the lower slopes of the unstable ReLUs optimised.

Any lower line a x with a in [0, 1] lies below relu(x) on an interval l < 0 < u, so the bound
of every choice of slopes is sound; CROWN picks a in {0, 1} by a rule of thumb (a = 1 when
u > -l). alpha-CROWN treats the slopes as parameters, one per neuron and specification row
(the bound of each row is then optimised on its own), and maximises the sum of the lower
bounds by projected Adam steps, keeping for every row the best bound of any iterate. The first
iterate is CROWN's own choice. Intermediate bounds are CROWN's intersected with IBP's
(`crown_intermediate_pass(only_unstable=True)`; CROWN's own where a non-ReLU activation is
present), then fixed, and the result is at least the IBP bound of each row. Never looser than
method="crown" in every test (random networks of every layer kind, the shared network), though
with CROWN's adaptive slopes tighter intermediate bounds are not a theorem of tighter output
bounds. on IBP-trained networks CROWN alone is often far looser than IBP
(measured in results/alpha_crown/). The model's parameters get no gradient: alpha-CROWN is a
certifier, not a training loss.
"""

from __future__ import annotations

import torch

from certtrain.bounds.backward import backward_lower, crown_intermediate_pass, unstable_rows
from certtrain.bounds.interval import interval_with_spec
from certtrain.bounds.ops import AffineOp, ReLUOp

# Measured beside auto_LiRPA 0.7.1's CROWN-Optimized (50 iterations, its lr 0.5) on a DM-small
# MNIST network (results/alpha_crown/README.md): 20 iterations at lr 0.1 left 64 of 144 rows
# looser than the peer's; 100 at lr 0.5 (early stop after 10 without gain) none beyond float32
# rounding, at 1/30 of the peer's time. An lr decay of 0.98 per iteration was looser.
ITERATIONS = 100
LEARNING_RATE = 0.5
# Stop when the summed bound improved by less than this (relative) over PATIENCE iterations.
TOLERANCE = 1e-5
PATIENCE = 10


def alpha_crown_lower(
    ops, C, x_L, x_U, iterations=ITERATIONS, lr=LEARNING_RATE, optimise_intermediate=False, shared_slopes=False
):
    """Best lower bounds of C ops(x) over the box, (B, S), from optimised ReLU lower slopes.

    shared_slopes: one slope per neuron for all spec rows (optimising their summed bound)
    instead of one per neuron and row; measured: the same verified error on wk17a and the IBP
    DM-small model, at about the same cost (results/alpha_crown/README.md).

    optimise_intermediate: also tighten the input bounds of every ReLU after the first by the
    same optimisation (one spec row per unstable neuron and side, layer by layer), before the
    output's; the result is at least the bound without it (optimise_intermediate=False) on every
    row. Measured beside auto_LiRPA 0.7.1's CROWN-Optimized (results/alpha_crown/README.md): as
    tight on every row of a DM-small and a five-layer MLP network, where the bound without it is
    looser on most rows of the MLP.
    """
    # CROWN's intermediate bounds intersected with IBP's where every activation is a ReLU (the
    # refinement picks the neurons a ReLU relaxes); other activations get CROWN's own.
    relu_only = all(isinstance(op, (ReLUOp, AffineOp)) for op in ops)
    with torch.no_grad():
        in_bounds = crown_intermediate_pass(ops[:-1], x_L, x_U, only_unstable=relu_only)
    in_bounds = [(lo.detach(), up.detach()) for lo, up in in_bounds]
    C = C.detach()
    with torch.no_grad():
        floor = interval_with_spec(ops[-1], *in_bounds[len(ops) - 1], C)[0]  # IBP on these bounds
    if optimise_intermediate and relu_only:
        # alpha-CROWN on the unoptimised bounds first (it starts at CROWN (tight)): the result
        # stays above it, so the full variant is never looser than the fast one on any row
        output_only = _optimise_slopes(ops, C, in_bounds, x_L, x_U, iterations, lr, floor, shared_slopes)
        in_bounds = _optimised_intermediate_bounds(ops, in_bounds, x_L, x_U, iterations, lr)
        with torch.no_grad():
            floor = torch.maximum(output_only, interval_with_spec(ops[-1], *in_bounds[len(ops) - 1], C)[0])
    return _optimise_slopes(ops, C, in_bounds, x_L, x_U, iterations, lr, floor, shared_slopes)


def _crown_slopes(ops, in_bounds, rows):
    """CROWN's adaptive lower slope (1 where u > -l) of every ReLU, one copy per spec row, as
    leaf tensors the optimiser may move."""
    slopes = {}
    for index, op in enumerate(ops):
        if isinstance(op, ReLUOp):
            lower, upper = in_bounds[index]
            crown_choice = (upper > -lower).to(lower.dtype)
            slopes[index] = crown_choice.unsqueeze(1).expand(-1, rows, *lower.shape[1:]).clone().requires_grad_(True)
    return slopes


def _optimise_slopes(ops, C, in_bounds, x_L, x_U, iterations, lr, floor, shared=False):
    """Projected Adam on the lower slopes, from CROWN's choice; the best bound of any iterate
    per row, at least `floor`. shared: one slope per neuron, broadcast over the rows."""
    slopes = _crown_slopes(ops, in_bounds, 1 if shared else C.shape[1])
    with torch.no_grad():
        best = torch.maximum(backward_lower(ops, C, in_bounds, x_L, x_U, lower_slopes=slopes), floor)
    if not slopes or iterations == 0:
        return best
    optimizer = torch.optim.Adam(list(slopes.values()), lr=lr)
    history = [best.sum().item()]
    for _ in range(iterations):
        with torch.enable_grad():
            lower = backward_lower(ops, C, in_bounds, x_L, x_U, lower_slopes=slopes)
            grads = torch.autograd.grad(-lower.sum(), list(slopes.values()))
        for slope, grad in zip(slopes.values(), grads):
            slope.grad = grad
        optimizer.step()
        with torch.no_grad():
            for slope in slopes.values():
                slope.clamp_(0.0, 1.0)
            best = torch.maximum(best, lower.detach())
        history.append(best.sum().item())
        if len(history) > PATIENCE and history[-1] - history[-1 - PATIENCE] <= TOLERANCE * (1 + abs(history[-1])):
            break
    return best


def _optimised_intermediate_bounds(ops, in_bounds, x_L, x_U, iterations, lr):
    """The input bounds of every ReLU with a ReLU before it, tightened by optimised slopes of
    the ReLUs before it (rows +e_i and -e_i of its unstable neurons), intersected with the given
    ones; affine ops after it get the interval image of the tighter bounds, intersected too."""
    bounds = list(in_bounds)
    relus = [i for i, op in enumerate(ops) if isinstance(op, ReLUOp)]
    for index in relus[1:]:
        lower, upper = (t.flatten(1) for t in bounds[index])
        rows = unstable_rows(lower, upper)
        if len(rows):
            shape, neurons = ops[index].in_shape, lower.shape[1]
            spec = torch.cat(
                (rows.spec(0, len(rows), neurons, x_L.dtype), rows.spec(0, len(rows), neurons, x_L.dtype, -1.0)), dim=1
            )
            spec = spec.reshape(spec.shape[0], 2 * len(rows), *shape)  # shared by the batch, or per sample
            floor = torch.cat((rows.gather(lower), -rows.gather(upper)), dim=1)
            best = _optimise_slopes(ops[:index], spec, bounds, x_L, x_U, iterations, lr, floor)
            lower = rows.write(lower, best[:, : len(rows)])
            upper = rows.write(upper, -best[:, len(rows) :])
            bounds[index] = (lower.view_as(bounds[index][0]), upper.view_as(bounds[index][1]))
        # affine ops up to the next ReLU: the interval image of the tighter bounds, intersected
        for after in range(index, len(ops)):
            if after > index and isinstance(ops[after], ReLUOp):
                break
            image = ops[after].interval(*bounds[after])
            if after + 1 < len(bounds):
                old = bounds[after + 1]
                bounds[after + 1] = (torch.maximum(old[0], image[0]), torch.minimum(old[1], image[1]))
    return bounds
