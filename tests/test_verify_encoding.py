"""The formulation itself: binaries only for unstable ReLUs, and max-pooling equal to its ReLU form."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from certtrain.verify import VerifyOptions, verify
from certtrain.verify.encoding import Milp, SolverOptions
from certtrain.verify.perturbations import linf_ball
from certtrain.verify.solvers import SOLVERS


def test_binaries_only_for_unstable_relus():
    milp = Milp(linf_ball(torch.full((1, 4), 0.5), 0.5), SolverOptions())
    expr, const = sp.identity(4, format="csr"), np.zeros(4)
    lower = np.array([-1.0, 0.2, -3.0, -0.5])
    upper = np.array([-0.1, 2.0, 1.0, 0.5])  # inactive, active, unstable, unstable
    out, out_const = milp.relu(expr, const, lower, upper)
    assert milp.num_binaries == 2
    assert milp.solver.num_rows == 3 * 2  # three rows per unstable ReLU (y >= 0 is a bound)
    dense = out.toarray()
    assert not dense[0].any()  # inactive: constant zero
    np.testing.assert_array_equal(dense[1, :4], [0, 1, 0, 0])  # active: the input passes through
    assert dense[2, :4].sum() == 0 and dense[2].sum() == 1  # unstable: a fresh y variable


@pytest.mark.parametrize("solver", SOLVERS)
def test_encoded_relu_is_exact_at_its_vertices(solver):
    """Fixing the binary gives y = relu(x) on both sides of 0 (each solver; a row pins x)."""
    pytest.importorskip({"highs": "highspy", "scip": "pyscipopt", "gurobi": "gurobipy"}[solver])
    milp = Milp(linf_ball(torch.full((1, 1), 0.5), 0.5), SolverOptions(name=solver))
    out, _ = milp.relu(sp.csr_matrix([[2.0]]), np.array([-1.0]), np.array([-1.0]), np.array([1.0]))
    milp.set_integral(True)
    pin = np.zeros(0, dtype=np.int64)
    for x_value in (0.1, 0.4, 0.7, 0.95):
        milp.relax_rows(pin)
        pin = milp.add_rows(sp.csr_matrix(([1.0], ([0], [0])), shape=(1, milp.num_cols)), [x_value], [x_value])
        low = milp.minimize(out, 0.0, 10).value
        high = -milp.minimize(-out, 0.0, 10).value
        assert low == pytest.approx(max(2 * x_value - 1, 0), abs=1e-7)
        assert high == pytest.approx(max(2 * x_value - 1, 0), abs=1e-7)


def _pool_pair():
    """A conv + 1x2 max-pool net and the same function written with ReLUs only:
    max(a, b) = relu(a - b) + relu(b) for b >= 0."""
    torch.manual_seed(6)  # a seed whose classes change inside [0, 1]^8
    conv, head = nn.Conv2d(1, 2, (2, 1)), nn.Linear(4, 3)
    pooled = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d((1, 2)), nn.Flatten(), head).eval()
    basis = torch.eye(8).reshape(8, 1, 2, 4)
    with torch.no_grad():
        dense = (conv(basis) - conv(torch.zeros(1, 1, 2, 4))).reshape(8, 8).T
        bias = conv(torch.zeros(1, 1, 2, 4)).reshape(8)
    first = nn.Linear(8, 8)
    pairs = nn.Linear(8, 8, bias=False)
    sums = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        first.weight.copy_(dense)
        first.bias.copy_(bias)
        pairs.weight.zero_()
        sums.weight.zero_()
        for out in range(4):  # pooled output (channel c, position k) takes conv positions 2k, 2k+1
            c, k = divmod(out, 2)
            a, b = c * 4 + 2 * k, c * 4 + 2 * k + 1
            pairs.weight[2 * out, a], pairs.weight[2 * out, b], pairs.weight[2 * out + 1, b] = 1, -1, 1
            sums.weight[out, 2 * out] = sums.weight[out, 2 * out + 1] = 1
    relus = nn.Sequential(nn.Flatten(), first, nn.ReLU(), pairs, nn.ReLU(), sums, head).eval()
    return pooled, relus


@pytest.mark.parametrize("seed", range(3))
def test_maxpool_encoding_matches_its_relu_form(seed):
    pooled, relus = _pool_pair()
    x = torch.rand(1, 1, 2, 4, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(pooled(x), relus(x))
    label = int(pooled(x).argmax())
    a = verify(
        pooled,
        x,
        label,
        VerifyOptions(eps=None, perturbation="unrestricted", objective="min_distortion", time_limit=60),
    )
    b = verify(
        relus, x, label, VerifyOptions(eps=None, perturbation="unrestricted", objective="min_distortion", time_limit=60)
    )
    assert a.status == b.status == "adversarial"
    assert a.bound == pytest.approx(b.bound, rel=1e-3, abs=1e-6)
    assert a.stats["unstable_final"] > 0 and b.stats["unstable_final"] > 0


def test_unknown_or_missing_solvers_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown MIP solver 'cplex'; choose one of"):
        VerifyOptions(solver="cplex")
    monkeypatch.setitem(sys.modules, "pyscipopt", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"pip install 'certtrain\[scip\]'"):
        VerifyOptions(solver="scip")
    assert VerifyOptions(solver="highs").solver.name == "highs"
