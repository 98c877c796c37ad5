"""The MILP answer equals an independent brute force over all activation patterns (one LP each).

For a fixed pattern a ReLU network is affine on the polytope where every pre-activation has the
pattern's sign, so min margin / min distortion over the set is the minimum over patterns of an LP
(scipy's linprog here, not the verifier's HiGHS model).
"""

from __future__ import annotations

import copy
import functools
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from certtrain.verify import VerifyOptions, verify
from certtrain.verify.encoding import SolverOptions

TOL = 1e-6


def random_net(seed: int, sizes=(3, 4, 4, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double().float()


def _feasible(A, b, bounds) -> bool:
    return linprog(np.zeros(A.shape[1]), A_ub=A, b_ub=b, bounds=bounds, method="highs").status == 0


def pattern_regions(net: nn.Sequential, box_lower, box_upper):
    """Yield (A_ub, b_ub, G, g) per non-empty activation pattern: region A_ub x <= b_ub, logits G x + g.

    Patterns are extended layer by layer; a prefix whose region is empty is not extended.
    """
    linears = [m for m in net if isinstance(m, nn.Linear)]
    weights = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in linears]
    bounds = list(zip(box_lower, box_upper))

    def extend(layer, G, g, A, b):
        if layer == len(weights) - 1:
            w, bias = weights[-1]
            yield A, b, w @ G, w @ g + bias
            return
        w, bias = weights[layer]
        P, p = w @ G, w @ g + bias
        for bits in itertools.product((0, 1), repeat=w.shape[0]):
            active = np.array(bits, dtype=bool)
            # active: P x + p >= 0  <=>  -P x <= p ;  inactive: P x + p <= 0
            A_next = np.vstack([A, np.where(active[:, None], -P, P)])
            b_next = np.concatenate([b, np.where(active, p, -p)])
            if _feasible(A_next, b_next, bounds):
                yield from extend(layer + 1, P * active[:, None], p * active, A_next, b_next)

    n = len(box_lower)
    yield from extend(0, np.eye(n), np.zeros(n), np.zeros((0, n)), np.zeros(0))


def brute_min_margin(net, box_lower, box_upper, label):
    best = np.inf
    bounds = list(zip(box_lower, box_upper))
    for A, b, G, g in pattern_regions(net, box_lower, box_upper):
        for j in range(G.shape[0]):
            if j == label:
                continue
            res = linprog(G[label] - G[j], A_ub=A, b_ub=b, bounds=bounds, method="highs")
            if res.status == 0:
                best = min(best, res.fun + g[label] - g[j])
    return best


def brute_min_distortion(net, x0, box_lower, box_upper, label, norm):
    """min ||x - x0|| over x in the box with f_j(x) >= f_label(x) for some j."""
    n = len(x0)
    best = np.inf
    for A, b, G, g in pattern_regions(net, box_lower, box_upper):
        for j in range(G.shape[0]):
            if j == label:
                continue
            margin_row = G[label] - G[j]  # f_label - f_j <= 0
            if norm == "linf":  # variables (x, t)
                cost = np.r_[np.zeros(n), 1.0]
                A_ub = np.vstack(
                    [
                        np.c_[A, np.zeros(len(A))],
                        np.r_[margin_row, 0.0],
                        np.c_[np.eye(n), -np.ones(n)],
                        np.c_[-np.eye(n), -np.ones(n)],
                    ]
                )
                b_ub = np.r_[b, g[j] - g[label], x0, -x0]
                bounds = list(zip(box_lower, box_upper)) + [(0, None)]
            else:  # variables (x, p)
                cost = np.r_[np.zeros(n), np.ones(n)]
                A_ub = np.vstack(
                    [
                        np.c_[A, np.zeros((len(A), n))],
                        np.r_[margin_row, np.zeros(n)],
                        np.c_[np.eye(n), -np.eye(n)],
                        np.c_[-np.eye(n), -np.eye(n)],
                    ]
                )
                b_ub = np.r_[b, g[j] - g[label], x0, -x0]
                bounds = list(zip(box_lower, box_upper)) + [(0, None)] * n
            res = linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
            if res.status == 0:
                best = min(best, res.fun)
    return best


# Seeds whose 3-4-4-3 network changes its class somewhere in [0, 1]^3 (most random ones do not).
SEEDS = (9, 11, 18, 20, 23, 39)


def _case(seed):
    net = random_net(seed)
    x = torch.rand(1, 3, generator=torch.Generator().manual_seed(100 + seed))
    return net, x, int(net(x).argmax())


@functools.lru_cache(maxsize=None)
def _min_linf(seed):
    net, x, label = _case(seed)
    return brute_min_distortion(net, x.double().numpy()[0], np.zeros(3), np.ones(3), label, "linf")


@functools.lru_cache(maxsize=None)
def _min_margin(seed, eps):
    net, x, label = _case(seed)
    x64 = x.double().numpy()[0]
    return brute_min_margin(net, np.clip(x64 - eps, 0, 1), np.clip(x64 + eps, 0, 1), label)


def _solver(name: str) -> SolverOptions:
    """HiGHS always; SCIP and Gurobi where their extras are installed."""
    pytest.importorskip({"highs": "highspy", "scip": "pyscipopt", "gurobi": "gurobipy"}[name])
    return SolverOptions(name=name)


# Every solver on the cases that need MIP solves (tightening=mip, and the MIP after the LP).
SOLVER_CASES = [("highs", t) for t in ("ibp", "crown", "lp", "mip")] + [
    (s, t) for s in ("scip", "gurobi") for t in ("lp", "mip")
]


@pytest.mark.parametrize("seed", (9, 11, 20, 39))
@pytest.mark.parametrize("solver, tightening", SOLVER_CASES)
def test_robustness_matches_brute_force(seed, solver, tightening):
    """Radii just inside and just outside the minimum distortion, decided by the brute force too."""
    solver = _solver(solver)
    net, x, label = _case(seed)
    radius = _min_linf(seed)
    assert np.isfinite(radius)
    for eps in (0.9 * radius, 1.1 * radius):
        if eps > 1:
            continue
        truth = _min_margin(seed, eps)
        assert (truth > TOL) == (eps < radius)
        options = VerifyOptions(eps=float(eps), tightening=tightening, pgd_steps=0, time_limit=30, solver=solver)
        r = verify(net, x, label, options)
        assert r.status == ("robust" if truth > 0 else "adversarial"), (eps, truth, r)
        if r.status == "adversarial":
            assert r.adversarial is not None and r.witness_verified


def test_mip_decides_where_the_lp_relaxation_cannot():
    net, x, label = _case(11)
    r = verify(net, x, label, VerifyOptions(eps=1.1 * _min_linf(11), tightening="lp", pgd_steps=0, time_limit=30))
    assert (r.status, r.resolved_by) == ("adversarial", "mip")


@pytest.mark.parametrize("seed", SEEDS[:4])
@pytest.mark.parametrize("norm", ["linf", "l1"])
@pytest.mark.parametrize("solver", ["highs", "scip", "gurobi"])
def test_min_distortion_matches_brute_force(seed, norm, solver):
    solver = _solver(solver)
    net, x, label = _case(seed)
    x64 = x.double().numpy()[0]
    truth = brute_min_distortion(net, x64, np.zeros(3), np.ones(3), label, norm)
    assert np.isfinite(truth)
    r = verify(
        net,
        x,
        label,
        VerifyOptions(
            eps=None, perturbation="unrestricted", objective="min_distortion", norm=norm, time_limit=30, solver=solver
        ),
    )
    assert r.status == "adversarial"
    assert r.bound == pytest.approx(truth, rel=1e-3, abs=1e-5)
    assert truth - 1e-6 <= r.distortion <= truth * (1 + 2e-3) + 1e-5
    delta = (r.adversarial.double() - x.double()).abs()
    measured = float(delta.max() if norm == "linf" else delta.sum())
    assert measured == pytest.approx(r.distortion, rel=1e-6, abs=1e-9)
    assert copy.deepcopy(net).double()(r.adversarial.double()).argmax() != label


def test_min_distortion_inside_a_ball_without_adversarial_is_robust():
    net, x, label = _case(SEEDS[0])
    eps = 0.5 * _min_linf(SEEDS[0])
    r = verify(net, x, label, VerifyOptions(eps=eps, objective="min_distortion", time_limit=30))
    assert r.status == "robust" and r.adversarial is None and r.bound == pytest.approx(eps)


@pytest.mark.slow
def test_larger_net_both_objectives_match_brute_force():
    """4-5-5-3 (1,024 activation patterns)."""
    net = random_net(13, sizes=(4, 5, 5, 3))
    x = torch.rand(1, 4, generator=torch.Generator().manual_seed(7))
    label = int(net(x).argmax())
    x64 = x.double().numpy()[0]
    truth = brute_min_distortion(net, x64, np.zeros(4), np.ones(4), label, "linf")
    r = verify(
        net, x, label, VerifyOptions(eps=None, perturbation="unrestricted", objective="min_distortion", time_limit=60)
    )
    assert r.bound == pytest.approx(truth, rel=1e-3, abs=1e-5)
    for eps in (0.5 * truth, 1.5 * truth):
        r = verify(net, x, label, VerifyOptions(eps=float(eps), pgd_steps=0, time_limit=60))
        assert r.status == ("robust" if eps < truth else "adversarial")


def test_the_verifier_proves_with_float64_bounds_by_default(monkeypatch):
    import certtrain.verify.api as api

    seen = []
    real = api.engine_bounds

    def recording(steps, lower, upper, method, dtype=torch.float64, *args, **kwargs):
        seen.append((method, dtype))
        return real(steps, lower, upper, method, dtype, *args, **kwargs)

    monkeypatch.setattr(api, "engine_bounds", recording)
    net = random_net(3)
    x = torch.rand(1, 3, generator=torch.Generator().manual_seed(0))
    verify(net, x, int(net(x).argmax()), VerifyOptions(eps=0.5, tightening="crown"))
    crown = [dtype for method, dtype in seen if method == "crown"]
    assert crown and all(dtype == torch.float64 for dtype in crown), seen
