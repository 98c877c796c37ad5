"""MIP solvers behind one small interface: HiGHS (the default, always installed), SCIP
(`pip install certtrain[scip]`, pyscipopt) and Gurobi (`pip install certtrain[gurobi]`, gurobipy;
its pip licence is limited to small models, a full licence lifts that).

A backend holds columns with bounds, rows lower <= A z <= upper (appended in order, relaxed by
index), the integrality of chosen columns, and minimises a linear cost with an optional cutoff
(only points with a value below it count) and a first-solution stop. `solve` returns
encoding.Solution with the statuses the objectives read: optimal | infeasible (no point, or none
below the cutoff) | cutoff | time_limit | solution_limit | error.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from certtrain.verify.encoding import SolverOptions

log = logging.getLogger(__name__)

SOLVERS = ("highs", "scip", "gurobi")
_EXTRA = {"scip": ("pyscipopt", "certtrain[scip]"), "gurobi": ("gurobipy", "certtrain[gurobi]")}


def check_solver(name: str) -> None:
    """A one-line error naming the fix: an unknown solver, or a known one not installed."""
    if name not in SOLVERS:
        raise ValueError(f"unknown MIP solver {name!r}; choose one of {SOLVERS}")
    if name in _EXTRA:
        module, extra = _EXTRA[name]
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(
                f"solver={name} needs {module}, which is not installed: pip install '{extra}' (or solver=highs)"
            ) from err


def new_backend(options: SolverOptions):
    check_solver(options.name)
    return {"highs": HighsBackend, "scip": ScipBackend, "gurobi": GurobiBackend}[options.name](options)


@dataclass
class Solution:
    status: str  # optimal | infeasible | cutoff | time_limit | solution_limit | error
    value: float | None  # objective of the best point found
    bound: float | None  # proved lower bound on the minimum
    z: np.ndarray | None


def _solution(status, value=None, bound=None, z=None):
    return Solution(status, value, bound, z)


class HighsBackend:
    def __init__(self, options: SolverOptions):
        import highspy

        self.highspy = highspy
        self.highs = highspy.Highs()
        self.highs.setOptionValue("output_flag", False)
        self.highs.setOptionValue("threads", int(options.threads))
        self.highs.setOptionValue("primal_feasibility_tolerance", options.primal_feasibility_tolerance)
        self.highs.setOptionValue("dual_feasibility_tolerance", options.dual_feasibility_tolerance)
        self.highs.setOptionValue("mip_feasibility_tolerance", options.mip_feasibility_tolerance)
        self.highs.setOptionValue("mip_rel_gap", options.mip_rel_gap)
        self.highs.setOptionValue("mip_abs_gap", options.mip_abs_gap)
        self.cost_cols = np.zeros(0, dtype=np.int32)

    @property
    def num_rows(self) -> int:
        return self.highs.getNumRow()

    def add_cols(self, lower: np.ndarray, upper: np.ndarray) -> None:
        self.highs.addVars(len(lower), lower, upper)

    def add_rows(self, matrix: sp.csr_matrix, lower: np.ndarray, upper: np.ndarray) -> None:
        matrix.sort_indices()
        self.highs.addRows(
            matrix.shape[0],
            lower,
            upper,
            matrix.nnz,
            matrix.indptr.astype(np.int32),
            matrix.indices.astype(np.int32),
            matrix.data,
        )

    def relax_rows(self, rows: np.ndarray) -> None:
        n = len(rows)
        self.highs.changeRowsBounds(n, rows.astype(np.int32), np.full(n, -np.inf), np.full(n, np.inf))

    def set_integrality(self, cols: np.ndarray, integral: bool) -> None:
        kinds = self.highspy.HighsVarType
        kind = kinds.kInteger if integral else kinds.kContinuous
        self.highs.changeColsIntegrality(len(cols), cols.astype(np.int32), np.array([kind] * len(cols)))

    def solve(self, cost: sp.csr_matrix, offset, time_limit, cutoff, first_solution, is_mip):
        highs = self.highs
        if len(self.cost_cols):
            highs.changeColsCost(len(self.cost_cols), self.cost_cols, np.zeros(len(self.cost_cols)))
        cols = cost.indices.astype(np.int32)
        highs.changeColsCost(len(cols), cols, cost.data.astype(np.float64))
        self.cost_cols = cols
        highs.changeObjectiveOffset(float(offset))
        highs.setOptionValue("time_limit", max(float(time_limit), 1e-3))
        highs.setOptionValue("objective_bound", float(cutoff))
        highs.setOptionValue("mip_max_improving_sols", 1 if first_solution else 2147483647)
        highs.run()
        status = highs.getModelStatus()
        info = highs.getInfo()
        names = self.highspy.HighsModelStatus
        has_point = info.primal_solution_status == self.highspy.kSolutionStatusFeasible
        z = np.asarray(highs.getSolution().col_value, dtype=np.float64) if has_point else None
        value = info.objective_function_value if has_point else None
        if status == names.kOptimal:
            bound = info.mip_dual_bound if is_mip else value
            return _solution("optimal", value, min(bound, value) if value is not None else bound, z)
        if status == names.kInfeasible:
            return _solution("infeasible", None, np.inf)
        if status == names.kObjectiveBound:
            return _solution("cutoff", value, None, z)
        if status in (names.kSolutionLimit, names.kInterrupt):
            return _solution("solution_limit", value, info.mip_dual_bound if is_mip else None, z)
        if status in (names.kTimeLimit, names.kIterationLimit):
            bound = info.mip_dual_bound if is_mip else None
            return _solution("time_limit", value, bound if bound is not None and np.isfinite(bound) else None, z)
        log.warning("HiGHS returned model status %s", highs.modelStatusToString(status))
        return _solution("error", value, None, z)

    def version(self) -> str:
        return "highs " + self.highs.version()


class ScipBackend:
    """SCIP through pyscipopt. Rows are built term by term in Python (pyscipopt has no bulk sparse
    row call), so building a model costs about a second per 10^5 nonzeros."""

    def __init__(self, options: SolverOptions):
        import pyscipopt

        self.scip = pyscipopt
        self.model = pyscipopt.Model()
        self.model.hideOutput()
        self.model.setParam("numerics/feastol", options.primal_feasibility_tolerance)
        self.model.setParam("numerics/dualfeastol", options.dual_feasibility_tolerance)
        self.model.setParam("limits/gap", options.mip_rel_gap)
        self.model.setParam("limits/absgap", options.mip_abs_gap)
        self.vars, self.rows = [], []

    def _editable(self) -> None:
        # SCIP allows changes to the problem only before solving starts or after freeTransform().
        if self.model.getStage() != self.scip.SCIP_STAGE.PROBLEM:
            self.model.freeTransform()

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def add_cols(self, lower: np.ndarray, upper: np.ndarray) -> None:
        self._editable()
        for lo, up in zip(lower, upper):
            self.vars.append(self.model.addVar(lb=lo if np.isfinite(lo) else None, ub=up if np.isfinite(up) else None))

    def add_rows(self, matrix: sp.csr_matrix, lower: np.ndarray, upper: np.ndarray) -> None:
        self._editable()
        quicksum, variables = self.scip.quicksum, self.vars
        for r in range(matrix.shape[0]):
            start, stop = matrix.indptr[r], matrix.indptr[r + 1]
            expr = quicksum(
                float(v) * variables[j] for j, v in zip(matrix.indices[start:stop], matrix.data[start:stop])
            )
            lo, up = lower[r], upper[r]
            row = self.scip.scip.ExprCons(
                expr, lhs=float(lo) if np.isfinite(lo) else None, rhs=float(up) if np.isfinite(up) else None
            )
            self.rows.append(self.model.addCons(row))

    def relax_rows(self, rows: np.ndarray) -> None:
        self._editable()
        for r in rows:
            self.model.chgLhs(self.rows[r], None)
            self.model.chgRhs(self.rows[r], None)

    def set_integrality(self, cols: np.ndarray, integral: bool) -> None:
        self._editable()
        for c in cols:
            self.model.chgVarType(self.vars[c], "I" if integral else "C")

    def solve(self, cost: sp.csr_matrix, offset, time_limit, cutoff, first_solution, is_mip):
        self._editable()
        model = self.model
        objective = self.scip.quicksum(float(v) * self.vars[j] for j, v in zip(cost.indices, cost.data))
        model.setObjective(objective + float(offset), "minimize")
        model.setObjlimit(float(cutoff) if np.isfinite(cutoff) else model.infinity())
        model.setParam("limits/time", max(float(time_limit), 1e-3))
        model.setParam("limits/solutions", 1 if first_solution else -1)
        model.optimize()
        status = model.getStatus()
        has_point = model.getNSols() > 0
        z, value = None, None
        if has_point:
            best = model.getBestSol()
            z = np.array([model.getSolVal(best, v) for v in self.vars], dtype=np.float64)
            value = model.getSolObjVal(best)
        bound = model.getDualbound()
        bound = float(bound) if abs(bound) < model.infinity() else None
        if status in ("optimal", "gaplimit"):
            return _solution("optimal", value, min(bound, value) if bound is not None else value, z)
        if status == "infeasible":  # with an objective limit: no point below the cutoff
            return _solution("infeasible", None, np.inf)
        if status in ("sollimit", "bestsollimit", "userinterrupt"):
            return _solution("solution_limit", value, bound if is_mip else None, z)
        if status in ("timelimit", "nodelimit", "totalnodelimit", "stallnodelimit"):
            return _solution("time_limit", value, bound if is_mip else None, z)
        log.warning("SCIP returned status %s", status)
        return _solution("error", value, None, z)

    def version(self) -> str:
        return f"scip {self.model.version()}"


class GurobiBackend:
    def __init__(self, options: SolverOptions):
        import gurobipy

        self.grb = gurobipy
        env = gurobipy.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
        self.model = gurobipy.Model(env=env)
        params = self.model.Params
        params.Threads = int(options.threads)
        params.FeasibilityTol = max(options.primal_feasibility_tolerance, 1e-9)
        params.OptimalityTol = max(options.dual_feasibility_tolerance, 1e-9)
        params.IntFeasTol = max(options.mip_feasibility_tolerance, 1e-9)
        params.MIPGap = options.mip_rel_gap
        params.MIPGapAbs = options.mip_abs_gap
        self.vars = []
        self.rows = []  # per row: its constraints (a >= and / or a <= one)

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def add_cols(self, lower: np.ndarray, upper: np.ndarray) -> None:
        inf = self.grb.GRB.INFINITY
        added = self.model.addMVar(len(lower), lb=np.maximum(lower, -inf), ub=np.minimum(upper, inf))
        self.vars.extend(added.tolist())

    def add_rows(self, matrix: sp.csr_matrix, lower: np.ndarray, upper: np.ndarray) -> None:
        columns = self.grb.MVar.fromlist(self.vars)
        parts = []
        for bounds, sense in ((lower, ">"), (upper, "<")):
            finite = np.flatnonzero(np.isfinite(bounds))
            added = (
                self.model.addMConstr(matrix[finite], columns, sense, bounds[finite]).tolist() if len(finite) else []
            )
            parts.append(dict(zip(finite.tolist(), added)))
        for r in range(matrix.shape[0]):
            self.rows.append([part[r] for part in parts if r in part])

    def relax_rows(self, rows: np.ndarray) -> None:
        inf = self.grb.GRB.INFINITY
        for r in rows:
            for constraint in self.rows[r]:
                constraint.RHS = -inf if constraint.Sense == ">" else inf

    def set_integrality(self, cols: np.ndarray, integral: bool) -> None:
        for c in cols:
            self.vars[c].VType = "I" if integral else "C"

    def solve(self, cost: sp.csr_matrix, offset, time_limit, cutoff, first_solution, is_mip):
        grb, model = self.grb, self.model
        objective = grb.LinExpr(cost.data.tolist(), [self.vars[j] for j in cost.indices]) + float(offset)
        model.setObjective(objective, grb.GRB.MINIMIZE)
        model.Params.TimeLimit = max(float(time_limit), 1e-3)
        model.Params.Cutoff = float(cutoff) if np.isfinite(cutoff) else grb.GRB.INFINITY
        model.Params.SolutionLimit = 1 if first_solution else 2000000000
        model.optimize()
        status, codes = model.Status, grb.GRB.Status
        has_point = model.SolCount > 0
        z = np.array(model.getAttr("X", self.vars), dtype=np.float64) if has_point else None
        value = model.ObjVal if has_point else None
        bound = value
        if is_mip and model.IsMIP:
            try:
                bound = model.ObjBound
            except grb.GurobiError:  # no bound was proved (e.g. stopped before the root)
                bound = None
        if bound is not None and not np.isfinite(bound):
            bound = None
        if status == codes.OPTIMAL:
            return _solution("optimal", value, min(bound, value) if bound is not None else value, z)
        if status in (codes.INFEASIBLE, codes.INF_OR_UNBD, codes.CUTOFF):  # CUTOFF: none below the cutoff
            return _solution("infeasible", None, np.inf)
        if status in (codes.SOLUTION_LIMIT, codes.INTERRUPTED):
            return _solution("solution_limit", value, bound if is_mip else None, z)
        if status in (codes.TIME_LIMIT, codes.ITERATION_LIMIT, codes.NODE_LIMIT):
            return _solution("time_limit", value, bound if is_mip else None, z)
        log.warning("Gurobi returned status %s", status)
        return _solution("error", value, None, z)

    def version(self) -> str:
        return "gurobi " + ".".join(map(str, self.grb.gurobi.version()))
