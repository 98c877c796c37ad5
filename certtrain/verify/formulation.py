"""Walk the network once: tighten each ReLU layer's bounds at the requested level, then encode it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from certtrain.verify.encoding import Milp, SolverOptions
from certtrain.verify.network import Affine, MaxPool, Relu, Step
from certtrain.verify.perturbations import InputDomain
from certtrain.verify.tightening import LEVELS, tighten_neurons


@dataclass
class Formulation:
    milp: Milp
    logits: tuple[sp.csr_matrix, np.ndarray]  # output expression (A, c) over the columns
    bounds: list  # the bounds used for every step's input
    tightening_solves: int = 0
    unstable_per_layer: list[int] = field(default_factory=list)

    @property
    def binaries(self) -> int:
        return self.milp.num_binaries


def build_formulation(
    steps: list[Step],
    domain: InputDomain,
    bounds: list,
    level: str,
    options: SolverOptions,
    time_per_solve: float,
    deadline: float,
) -> Formulation:
    """The MILP of the whole network over `domain`, starting from engine `bounds` (per step input).

    With level lp or mip every ReLU that is still unstable is tightened by solves over the model
    of the layers before it, before its own constraints are added.
    """
    milp = Milp(domain, options)
    expr, const = milp.input_expr
    used = list(bounds)
    solves = 0
    unstable = []
    depth = LEVELS.index(level)
    for index, step in enumerate(steps):
        op = step.op
        if isinstance(op, Affine):
            expr, const = (op.weight @ expr).tocsr(), op.weight @ const + op.bias
            continue
        if not isinstance(op, (Relu, MaxPool)):
            continue
        lower, upper = used[index]
        box_lower, box_upper = milp.expression_box(expr, const)
        lower, upper = np.maximum(lower, box_lower), np.minimum(upper, box_upper)
        # Over a box, the interval of an expression of the input columns alone is already exact.
        exact_already = domain.is_box and (expr.nnz == 0 or expr.indices.max() < len(milp.input_cols))
        if isinstance(op, Relu) and depth >= LEVELS.index("lp") and not exact_already:
            lower, upper, n = tighten_neurons(milp, expr, const, lower, upper, False, time_per_solve, deadline)
            solves += n
            if level == "mip":
                lower, upper, n = tighten_neurons(milp, expr, const, lower, upper, True, time_per_solve, deadline)
                solves += n
        used[index] = (lower, upper)
        if isinstance(op, Relu):
            unstable.append(int(np.sum((lower < 0) & (upper > 0))))
            expr, const = milp.relu(expr, const, lower, upper)
        else:
            expr, const = milp.maxpool(expr, const, lower, upper, op.windows)
    return Formulation(milp, (expr.tocsr(), const), used, solves, unstable)
