"""Branch and bound over ReLU splits, bounded by beta-CROWN (certtrain.bab.bounding).

    from certtrain.bab import BabOptions, robustness_bab
    outcome = robustness_bab(model, x_L, x_U, label, classes, BabOptions(), deadline, check)

The property "every margin f_y - f_j, j in classes, is positive on the box" is decided one
margin at a time, the loosest (by alpha-CROWN at the root) first, so a counterexample tends to
be found before time is spent proving the other rows. Bounds run in float64 by default: a
"robust" rests on float64 bounds of every closed sub-domain (the engine's relaxations are sound
in exact arithmetic; float64 rounding is far below the margins decided). A counterexample is
whatever `check` confirms (verify() checks each in float64 on the real network).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from certtrain.bab.bounding import Bounded, SplitBounder, check_relu_network, root_bounds
from certtrain.bab.branching import RULES, check_rule
from certtrain.bab.input_split import INPUT_SPLIT_MAX_INPUTS, input_split_bab
from certtrain.bab.search import RowResult, branch_and_bound_row
from certtrain.bounds.graph import build_ops


def _fields(bounded: Bounded):
    return (bounded.lower, bounded.slopes, bounded.betas, bounded.coefficients, bounded.bounds, bounded.candidates)


def _row(value, k):
    """Row k of a Bounded field (a tensor, a dict of tensors or of pairs), batch kept."""
    if isinstance(value, dict):
        return {i: _row(v, k) for i, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_row(v, k) for v in value)
    return value[k : k + 1]


__all__ = ["RULES", "SPLITS", "BabOptions", "BabOutcome", "robustness_bab"]
SPLITS = ("auto", "relu", "input")


@dataclass(frozen=True)
class BabOptions:
    batch: int = 64  # sub-domains split per engine call (each gives two children)
    branching: str = "fsb"  # fsb | babsr | width (certtrain.bab.branching)
    iterations: int = 20  # alpha/beta steps per batch of children
    root_iterations: int = 50  # alpha steps at the root
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    refine: bool = True  # re-bound later ReLU layers' inputs per sub-domain (tighter, slower on deep nets)
    # relu: split ReLUs; input: halve the input box (any layer, few inputs); auto: input for
    # inputs of at most INPUT_SPLIT_MAX_INPUTS features, relu otherwise
    split: str = "auto"
    dtype: torch.dtype = torch.float64
    # margins in order of their root bound: loosest first finds a counterexample early (bab
    # alone); easiest first proves as many margins as the time allows, so that a solver taking
    # over has fewer left (bab-milp sets it)
    easiest_first: bool = False

    def __post_init__(self):
        if self.batch < 1:
            raise ValueError(f"bab batch={self.batch}: use a batch of at least 1 sub-domain (e.g. 64)")
        check_rule(self.branching)
        if self.iterations < 0 or self.root_iterations < 0:
            raise ValueError("bab iterations and root_iterations must be >= 0")
        if self.split not in SPLITS:
            raise ValueError(f"bab split={self.split!r}: choose one of {SPLITS}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"bab dtype must be torch.float32 or torch.float64, got {self.dtype}")


@dataclass
class BabOutcome:
    status: str  # robust | adversarial | timeout | unknown
    witness: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)
    # the classes j whose margin f_label - f_j > 0 is proved (all of them when robust), so that a
    # solver taking over after a timeout has only the others left to decide
    proved: list = field(default_factory=list)


@torch.enable_grad()  # slopes, betas, the attack and the leaf LP's Jacobian need autograd, even under no_grad
def robustness_bab(model, x_L, x_U, label, classes, options: BabOptions, deadline: float, check) -> BabOutcome:
    """Decide every margin f_label - f_j > 0 (j in classes) over the box [x_L, x_U] (batch 1).

    check(x) -> confirmed counterexample or None; deadline: time.perf_counter() value.
    """
    if not deadline > time.perf_counter():
        raise ValueError("the time limit of branch and bound must be positive seconds")
    net = copy.deepcopy(model).to(options.dtype).eval()
    x_L, x_U = x_L.to(options.dtype), x_U.to(options.dtype)
    ops, layer_index, out_shape = build_ops(net, None, x_L)
    classes = list(classes)
    C = torch.zeros(len(classes), out_shape[0], dtype=options.dtype, device=x_L.device)
    C[:, label] = 1.0
    C[torch.arange(len(classes), device=x_L.device), classes] = -1.0
    split = options.split
    if split == "auto":
        split = "input" if x_L[0].numel() <= INPUT_SPLIT_MAX_INPUTS else "relu"
    if split == "input":
        status, witness, stats = input_split_bab(net, x_L, x_U, C, deadline, check, batch=4 * options.batch)
        return BabOutcome(status, witness, stats={**stats, "split": "input"})
    check_relu_network(ops, layer_index)
    started = time.perf_counter()
    root = root_bounds(ops, x_L, x_U)
    settings = dict(
        iterations=options.iterations,
        lr_alpha=options.lr_alpha,
        lr_beta=options.lr_beta,
        root=root,
        refine=options.refine,
    )
    # All rows at once, each row a sub-domain without splits: CROWN first, alpha-CROWN for the rest.
    everyone = SplitBounder(ops, x_L, x_U, C, **settings)
    crown = everyone.bound(everyone.empty_splits(len(classes)), iterations=0).lower
    stats = {"root_crown": dict(zip(classes, crown.tolist())), "domains": 0, "depth": 0, "leaf_lps": 0}
    rows = []
    open_rows = (crown <= 0).nonzero().flatten().tolist()
    if open_rows:
        some = SplitBounder(ops, x_L, x_U, C[open_rows], **settings)
        alpha = some.bound(some.empty_splits(len(open_rows)), iterations=options.root_iterations)
        stats["root_alpha"] = {classes[r]: float(v) for r, v in zip(open_rows, alpha.lower)}
        for k, r in enumerate(open_rows):
            if alpha.lower[k] <= 0:
                bounder = SplitBounder(ops, x_L, x_U, C[r], **settings)
                start = Bounded(*(_row(field_, k) for field_ in _fields(alpha)))
                rows.append((float(alpha.lower[k]), classes[r], bounder, start))
    outcome = BabOutcome("robust", stats=stats)
    open_classes = {j for _, j, _, _ in rows}
    outcome.proved = [j for j in classes if j not in open_classes]
    for lower, j, bounder, root in sorted(rows, key=lambda row: row[0], reverse=options.easiest_first):
        row: RowResult = branch_and_bound_row(bounder, net, check, deadline, options.batch, options.branching, root)
        stats["domains"] += row.domains
        stats["depth"] = max(stats["depth"], row.depth)
        stats["leaf_lps"] += row.leaf_lps
        if row.status != "robust":
            outcome.status, outcome.witness = row.status, row.witness
            stats.update({f"class_{j}_{k}": v for k, v in row.stats.items()}, open_class=j)
            break
        outcome.proved.append(j)
    stats["seconds"] = time.perf_counter() - started
    return outcome
