"""The mixed-integer formulation of a ReLU network, built with sparse matrices in bulk and solved
by a backend of certtrain.verify.solvers (HiGHS by default, SCIP or Gurobi on request).

Values are kept as affine expressions A z + c over the solver's columns z (the perturbation's
variables, then one y and one binary per unstable ReLU, ...): an affine layer maps the
expression (W A, W c + b) and adds no rows; a stable ReLU passes the expression on (active) or
zero (inactive); an unstable one (l < 0 < u) adds y in [0, u], a binary a and the rows
  y >= x,   y <= x - l (1 - a),   y <= u a      (y >= 0 is y's lower bound).
Max-pooling uses the tight encoding of Tjeng et al.: inputs that can never be the maximum are
dropped; the rest get one binary each, sum a_i = 1, y >= x_i, y <= x_i + (U_i - l_i)(1 - a_i).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from certtrain.verify.perturbations import InputDomain
from certtrain.verify.solvers import Solution, check_solver, new_backend

log = logging.getLogger(__name__)
INF = np.inf


@dataclass
class SolverOptions:
    """The MIP solver and its settings; tolerances are absolute, as each solver reads them."""

    name: str = "highs"  # highs | scip | gurobi (certtrain.verify.solvers.SOLVERS)
    threads: int = 1
    primal_feasibility_tolerance: float = 1e-7
    dual_feasibility_tolerance: float = 1e-7
    mip_feasibility_tolerance: float = 1e-6
    mip_rel_gap: float = 1e-4  # min_distortion: the proved bound is within this of the optimum
    mip_abs_gap: float = 1e-6
    # Bounds read from LP / MIP solves are widened by this much before they enter the model, so
    # a solver tolerance cannot turn an unstable ReLU into a wrongly stable one.
    bound_padding: float = 1e-6

    def __post_init__(self):
        check_solver(self.name)


def widen(expr: sp.csr_matrix, num_cols: int) -> sp.csr_matrix:
    """The same expression over a longer column vector (new columns get coefficient 0)."""
    if expr.shape[1] == num_cols:
        return expr
    return sp.csr_matrix((expr.data, expr.indices, expr.indptr), shape=(expr.shape[0], num_cols))


class Milp:
    """One solver model that grows layer by layer; binaries stay continuous until `set_integral`."""

    def __init__(self, domain: InputDomain, options: SolverOptions):
        self.options = options
        self.solver = new_backend(options)
        self.col_lower = np.zeros(0)
        self.col_upper = np.zeros(0)
        self.binaries = np.zeros(0, dtype=np.int64)
        self.integral = False
        self.input_cols = self.add_cols(domain.var_lower, domain.var_upper)
        if domain.rows is not None:
            self.add_rows(domain.rows, domain.row_lower, domain.row_upper)
        self.input_expr = (widen(domain.matrix.tocsr(), self.num_cols), domain.offset.copy())

    @property
    def num_cols(self) -> int:
        return len(self.col_lower)

    @property
    def num_binaries(self) -> int:
        return len(self.binaries)

    def add_cols(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        first = self.num_cols
        if len(lower):
            self.solver.add_cols(lower, upper)
        self.col_lower = np.concatenate([self.col_lower, lower])
        self.col_upper = np.concatenate([self.col_upper, upper])
        return np.arange(first, first + len(lower))

    def add_rows(self, matrix: sp.spmatrix, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        matrix = widen(sp.csr_matrix(matrix), self.num_cols)
        first = self.solver.num_rows
        if matrix.shape[0]:
            lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
            self.solver.add_rows(matrix, lower, upper)
        return np.arange(first, first + matrix.shape[0])

    def expression_box(self, expr: sp.csr_matrix, const: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interval of A z + c over the column bounds (exact for the first affine layer of a box)."""
        expr = widen(expr, self.num_cols)
        pos, neg = expr.maximum(0), expr.minimum(0)
        return (
            const + pos @ self.col_lower + neg @ self.col_upper,
            const + pos @ self.col_upper + neg @ self.col_lower,
        )

    def relu(self, expr, const, lower, upper):
        """Encode ReLU of every row of (expr, const) given its bounds; returns the output expression."""
        expr = widen(expr, self.num_cols)
        active = lower >= 0
        unstable = np.flatnonzero((lower < 0) & (upper > 0))
        k = len(unstable)
        y_cols = self.add_cols(np.zeros(k), upper[unstable])
        a_cols = self.add_cols(np.zeros(k), np.ones(k))
        self.binaries = np.concatenate([self.binaries, a_cols])
        if k:
            pre = widen(expr[unstable], self.num_cols)
            eye_y = sp.csr_matrix((np.ones(k), (np.arange(k), y_cols)), shape=(k, self.num_cols))
            diag_a = lambda values: sp.csr_matrix((values, (np.arange(k), a_cols)), shape=(k, self.num_cols))
            c = const[unstable]
            low, up = lower[unstable], upper[unstable]
            rows = sp.vstack([eye_y - pre, eye_y - pre + diag_a(-low), eye_y + diag_a(-up)], format="csr")
            row_lower = np.concatenate([c, np.full(k, -INF), np.full(k, -INF)])
            row_upper = np.concatenate([np.full(k, INF), c - low, np.zeros(k)])
            self.add_rows(rows, row_lower, row_upper)
        out = sp.csr_matrix(sp.diags(active.astype(np.float64)) @ widen(expr, self.num_cols))
        out = out + sp.csr_matrix((np.ones(k), (unstable, y_cols)), shape=out.shape)
        return out.tocsr(), np.where(active, const, 0.0)

    def maxpool(self, expr, const, lower, upper, windows):
        """Tight max-pooling encoding; windows[o] = flat input indices of output o (-1 = padding)."""
        expr = widen(expr, self.num_cols)
        out_rows, out_const = [], np.zeros(len(windows))
        for o, window in enumerate(windows):
            window = window[window >= 0]
            floor = lower[window].max()
            alive = window[upper[window] >= floor]
            if len(alive) == 1:
                out_rows.append(("expr", alive[0]))
                out_const[o] = const[alive[0]]
                continue
            top = upper[alive].max()
            (y,) = self.add_cols([floor], [top])
            picks = self.add_cols(np.zeros(len(alive)), np.ones(len(alive)))
            self.binaries = np.concatenate([self.binaries, picks])
            n = self.num_cols
            pre = widen(expr[alive], n)
            eye_y = sp.csr_matrix(
                (np.ones(len(alive)), (np.arange(len(alive)), np.full(len(alive), y))), shape=(len(alive), n)
            )
            others_top = np.array([np.max(np.delete(upper[alive], i)) for i in range(len(alive))])
            big = others_top - lower[alive]
            pick = sp.csr_matrix((big, (np.arange(len(alive)), picks)), shape=(len(alive), n))
            total = sp.csr_matrix((np.ones(len(alive)), (np.zeros(len(alive), dtype=np.int64), picks)), shape=(1, n))
            c = const[alive]
            self.add_rows(
                sp.vstack([eye_y - pre, eye_y - pre + pick, total], format="csr"),
                np.concatenate([c, np.full(len(alive), -INF), [1.0]]),
                np.concatenate([np.full(len(alive), INF), c + big, [1.0]]),
            )
            out_rows.append(("col", y))
        n = self.num_cols
        expr = widen(expr, n)
        pieces = []
        for kind, ref in out_rows:
            pieces.append(expr[ref] if kind == "expr" else sp.csr_matrix(([1.0], ([0], [ref])), shape=(1, n)))
        return sp.vstack(pieces, format="csr"), out_const

    def relax_rows(self, rows: np.ndarray) -> None:
        """Drop rows from the model (their bounds become -inf, inf); indices stay valid."""
        if len(rows):
            self.solver.relax_rows(np.asarray(rows))

    def set_integral(self, integral: bool) -> None:
        self.integral = integral
        if self.num_binaries:
            self.solver.set_integrality(self.binaries, integral)

    def minimize(
        self, cost: sp.csr_matrix, offset: float, time_limit: float, cutoff: float = INF, first_solution: bool = False
    ) -> Solution:
        """Minimise cost z + offset. cutoff: only points below it count (also stops the dual simplex
        once its bound passes it); first_solution: stop a MIP at its first improving point."""
        cost = widen(sp.csr_matrix(cost), self.num_cols)
        cost.sum_duplicates()
        is_mip = self.integral and self.num_binaries > 0
        return self.solver.solve(cost, offset, time_limit, cutoff, first_solution, is_mip)
