"""The two questions asked of a formulation: robustness, and minimum adversarial distortion.

Both split the misclassification disjunction into one problem per class j (the target):
untargeted misclassification is "f_j > f_y for some j"; a targeted one additionally needs
f_t >= f_k for every other k. Each class is first tried on the LP relaxation (cheap proofs and
lower bounds), then as a MIP. Robustness is a feasibility question: minimise f_y - f_j with a
cutoff at 0 and stop at the first point below it (an adversarial candidate) or when none exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from certtrain.verify.encoding import INF, widen
from certtrain.verify.formulation import Formulation
from certtrain.verify.perturbations import InputDomain
from certtrain.verify.witness import distortion, witness_from_vars

NORMS = ("linf", "l1")


@dataclass
class Outcome:
    status: str  # robust | adversarial | timeout | unresolved
    witness: np.ndarray | None = None
    resolved_by: str = ""
    distortion: float | None = None
    bound: float | None = None
    per_class: dict = field(default_factory=dict)


def _margin(form: Formulation, label: int, j: int):
    """(cost row, offset) of f_label - f_j."""
    expr, const = form.logits
    return expr[label] - expr[j], const[label] - const[j]


def _target_rows(form: Formulation, label: int, target: int | None):
    """Rows of f_t - f_k >= 0 for k not in {t, label}: 'classified as t' beyond beating label."""
    if target is None:
        return None
    expr, const = form.logits
    others = [k for k in range(expr.shape[0]) if k not in (target, label)]
    if not others:
        return None
    rows = sp.vstack([expr[target] - expr[k] for k in others], format="csr")
    return form.milp.add_rows(rows, np.array([const[k] - const[target] for k in others]), np.full(len(others), INF))


def _release(form: Formulation, rows) -> None:
    if rows is not None and len(rows):
        form.milp.relax_rows(rows)


def robustness(form, net, domain, label, classes, targeted, deadline, like, exact=True) -> Outcome:
    """Is some input of the set classified as one of `classes` (beating `label`)?

    exact=False stops after the LP relaxation: status "open" when it decides nothing.
    """
    milp = form.milp
    inputs = milp.input_cols
    open_classes, lp_values = [], {}
    milp.set_integral(False)
    for j in classes:
        rows = _target_rows(form, label, j if targeted else None)
        cost, offset = _margin(form, label, j)
        sol = milp.minimize(cost, offset, max(deadline - time.perf_counter(), 1e-3), cutoff=0.0)
        _release(form, rows)
        if sol.status in ("infeasible", "cutoff") or (sol.status == "optimal" and sol.value >= 0):
            continue
        if sol.z is not None:
            found = witness_from_vars(net, domain, sol.z[inputs], label, like, j if targeted else None)
            if found is not None:
                return Outcome("adversarial", found, "lp")
        open_classes.append(j)
        lp_values[j] = sol.value if sol.value is not None else -INF
    if not open_classes:
        return Outcome("robust", resolved_by="lp")
    if not exact:
        return Outcome("open")
    milp.set_integral(True)
    verdicts = {}
    for j in sorted(open_classes, key=lambda k: lp_values[k]):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            verdicts[j] = "timeout"
            continue
        rows = _target_rows(form, label, j if targeted else None)
        cost, offset = _margin(form, label, j)
        sol = milp.minimize(cost, offset, remaining, cutoff=0.0, first_solution=True)
        if sol.status == "solution_limit" and sol.value is not None and sol.value >= 0:
            # HiGHS may skip the cutoff (e.g. when presolve solves the model): finish the solve instead.
            sol = milp.minimize(cost, offset, max(deadline - time.perf_counter(), 1e-3), cutoff=0.0)
        _release(form, rows)
        if sol.status == "infeasible" or (sol.bound is not None and sol.bound >= 0):
            verdicts[j] = "robust"
        elif sol.z is not None and sol.value is not None and sol.value < 0:
            found = witness_from_vars(net, domain, sol.z[inputs], label, like, j if targeted else None)
            if found is not None:
                return Outcome("adversarial", found, "mip", per_class=verdicts)
            verdicts[j] = "unresolved"
        elif sol.status == "time_limit":
            verdicts[j] = "timeout"
        else:
            verdicts[j] = "unresolved"
    milp.set_integral(False)
    if all(v == "robust" for v in verdicts.values()):
        return Outcome("robust", resolved_by="mip", per_class=verdicts)
    status = "unresolved" if "unresolved" in verdicts.values() else "timeout"
    return Outcome(status, resolved_by="mip", per_class=verdicts)


def _distortion_columns(form: Formulation, domain: InputDomain, norm: str):
    """Columns and rows measuring ||x' - x|| (L-inf: one t; L1: one p per input); returns the cost."""
    milp = form.milp
    expr, offset = milp.input_expr
    n = expr.shape[0]
    if norm == "linf":
        (t,) = milp.add_cols([0.0], [1.0])
        stacked = sp.hstack([widen(expr, t), sp.csr_matrix(np.ones((n, 1)))], format="csr")
        flipped = sp.hstack([widen(expr, t), sp.csr_matrix(-np.ones((n, 1)))], format="csr")
        milp.add_rows(
            sp.vstack([stacked, flipped]),
            np.concatenate([domain.x - offset, np.full(n, -INF)]),
            np.concatenate([np.full(n, INF), domain.x - offset]),
        )
        return sp.csr_matrix(([1.0], ([0], [t])), shape=(1, milp.num_cols))
    cols = milp.add_cols(np.zeros(n), np.ones(n))
    eye = sp.csr_matrix((np.ones(n), (np.arange(n), cols)), shape=(n, milp.num_cols))
    milp.add_rows(
        sp.vstack([eye - widen(expr, milp.num_cols), eye + widen(expr, milp.num_cols)]),
        np.concatenate([offset - domain.x, domain.x - offset]),
        np.full(2 * n, INF),
    )
    return sp.csr_matrix((np.ones(n), (np.zeros(n, dtype=np.int64), cols)), shape=(1, milp.num_cols))


def min_distortion(form, net, domain, label, classes, targeted, norm, deadline, like) -> Outcome:
    """Smallest ||x' - x|| (norm) over the set among inputs classified as one of `classes`."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    milp = form.milp
    cost = _distortion_columns(form, domain, norm)
    inputs = milp.input_cols
    best, witness, lower, timed_out, unresolved = INF, None, {}, False, False
    candidates = {}
    for integral in (False, True):
        milp.set_integral(integral)
        order = sorted(candidates, key=candidates.get) if integral else list(classes)
        for j in order:
            if integral and candidates[j] >= best:
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            rows = _target_rows(form, label, j if targeted else None)
            margin, offset = _margin(form, label, j)
            (row,) = milp.add_rows(-margin, [offset], [INF])  # f_j - f_label >= 0
            cutoff = best if integral else INF
            sol = milp.minimize(cost, 0.0, remaining, cutoff=cutoff)
            _release(form, rows)
            _release(form, np.array([row]))
            if not integral:
                if sol.status == "optimal":
                    candidates[j] = sol.value
                    lower[j] = sol.value
                elif sol.status == "infeasible":
                    lower[j] = INF
                else:
                    candidates[j] = 0.0
                    lower[j] = 0.0
                continue
            if sol.status == "infeasible":
                lower[j] = max(lower[j], cutoff)
                continue
            if sol.bound is not None:
                lower[j] = max(lower[j], sol.bound)
            if sol.status != "optimal":
                timed_out = True
            if sol.z is not None:
                found = witness_from_vars(net, domain, sol.z[inputs], label, like, j if targeted else None)
                if found is not None and distortion(domain, found, norm) < best:
                    best, witness = distortion(domain, found, norm), found
                elif found is None:
                    unresolved = True
    milp.set_integral(False)
    proved = min([best, *lower.values()])
    if witness is None and not (timed_out or unresolved):
        radius = domain.eps if domain.name == "linf" else INF
        return Outcome("robust", resolved_by="mip", bound=float(radius))
    status = "unresolved" if unresolved else "timeout" if timed_out else "adversarial"
    if witness is None:
        return Outcome(status, bound=float(proved), resolved_by="mip")
    return Outcome(status, witness, "mip", distortion=best, bound=float(min(proved, best)))
