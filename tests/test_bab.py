"""Branch and bound (certtrain.bab): sound bounds on every split sub-domain, complete against the
exact MILP, and bad input refused with the fix."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from certtrain.bab import BabOptions, robustness_bab
from certtrain.bab.bounding import SplitBounder
from certtrain.bab.search import _leaf_lp
from certtrain.bounds import UnsupportedLayerError
from certtrain.bounds.graph import build_ops
from certtrain.bounds.ops import ReLUOp
from certtrain.layers import Normalize
from certtrain.verify import VerifyOptions, verify

DT = torch.float64


def _mlp(seed, widths=(2, 12, 12, 3)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(DT)


def _conv_net(seed):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    net = nn.Sequential(
        Normalize(0.4, 0.3),
        nn.Conv2d(1, 3, 3, padding=1),
        bn,
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )
    return net.to(DT).eval()


def _pre_activations(ops, x):
    """{ReLU op index: (N, n) its input at x}."""
    values = {}
    for index, op in enumerate(ops):
        if isinstance(op, ReLUOp):
            values[index] = x.flatten(1)
        x = op.forward(x)
    return values, x


def _points(x_L, x_U, count, generator):
    inside = x_L + (x_U - x_L) * torch.rand(count, *x_L.shape[1:], generator=generator, dtype=DT)
    corners = torch.where(torch.rand(count, *x_L.shape[1:], generator=generator) < 0.5, x_L, x_U)
    return torch.cat((inside, corners))


@pytest.mark.parametrize("make", [_mlp, _conv_net], ids=["mlp", "conv-bn-pool"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("refine", [True, False], ids=["refined", "root-bounds"])
def test_every_sub_domain_bound_holds_at_points_inside_it(make, seed, refine):
    net = make(seed)
    shape = (1, 2) if make is _mlp else (1, 1, 6, 6)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=DT)
    x_L, x_U = x - 0.3, x + 0.3
    ops, _, out_shape = build_ops(net, None, x_L)
    c = torch.zeros(out_shape[0], dtype=DT)
    c[0], c[1] = 1.0, -1.0
    bounder = SplitBounder(ops, x_L, x_U, c, iterations=15, refine=refine)
    points = _points(x_L, x_U, 4000, gen)
    # Sub-domains from the sign patterns of sampled points on random subsets of the neurons, so
    # each holds at least one sample; 6 domains bounded in one batch. Points near the picked
    # ones (steps of 0.01) fill each sub-domain beyond its seed.
    picks = torch.randint(len(points), (6,), generator=gen)
    near = points[picks].repeat_interleave(200, 0)
    near = torch.min(torch.max(near + 0.01 * torch.randn(near.shape, generator=gen, dtype=DT), x_L), x_U)
    points = torch.cat((points, near))
    values, out = _pre_activations(ops, points)
    truth = (out * c).sum(1)
    splits = bounder.empty_splits(6)
    for i in bounder.relus:
        chosen = torch.rand(6, values[i].shape[1], generator=gen) < 0.5
        splits[i] = torch.where(chosen, torch.where(values[i][picks] >= 0, 1, -1), 0).to(torch.int8)
    bounded = bounder.bound(splits)
    checked = 0
    for d in range(6):
        inside = torch.ones(len(points), dtype=torch.bool)
        for i in bounder.relus:
            s = splits[i][d].to(DT)
            inside &= ((values[i] * s) >= 0).all(1)
        assert inside[picks[d]]
        assert bounded.lower[d] <= truth[inside].min() + 1e-9, f"domain {d}: bound above a point inside it"
        checked += int(inside.sum())
        # the sub-domain's intermediate bounds hold there too
        for i in bounder.relus:
            lo, up = bounded.bounds[i]
            assert (values[i][inside] >= lo[d] - 1e-9).all() and (values[i][inside] <= up[d] + 1e-9).all()
    assert checked > 6


def test_beta_reaches_the_lp_optimum_of_a_fully_split_domain():
    """Every unstable ReLU split: the optimised multipliers close the gap to the exact LP."""
    net = _mlp(7, (3, 6, 2))
    x = torch.full((1, 3), 0.5, dtype=DT)
    ops, _, _ = build_ops(net, None, x)
    c = torch.tensor([1.0, -1.0], dtype=DT)
    bounder = SplitBounder(ops, x - 0.5, x + 0.5, c, iterations=300)
    lower, upper = bounder.root[1]
    unstable = (lower[0] < 0) & (upper[0] > 0)
    assert unstable.sum() >= 2
    compared = 0
    free = unstable.nonzero().flatten()
    for pattern in range(2 ** len(free)):
        signs = torch.zeros(6, dtype=torch.int8)
        signs[free] = torch.tensor([1 if (pattern >> k) & 1 else -1 for k in range(len(free))], dtype=torch.int8)
        splits = {1: signs.view(1, -1)}
        value, point, betas = _leaf_lp(bounder, splits, ops, c.view(1, -1))
        if point is None:
            continue  # an empty sub-domain
        unoptimised = bounder.bound(splits, iterations=0).lower[0]
        optimised = bounder.bound(splits).lower[0]
        exact = bounder.bound(splits, betas=betas, iterations=0).lower[0]
        assert unoptimised - 1e-9 <= optimised <= value + 1e-9
        assert exact == pytest.approx(value, abs=1e-7)
        assert optimised == pytest.approx(value, abs=2e-3)
        compared += 1
    assert compared >= 2


def _tiny(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3))


@pytest.mark.parametrize("split", ["relu", "input"])
def test_bab_decides_as_the_milp_does_on_200_random_instances(split):
    verdicts = {}
    for seed in range(200):
        net = _tiny(seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(1, 4, generator=gen)
        label = int(net(x).argmax())
        eps = 0.05 + 0.25 * float(torch.rand(1, generator=gen))
        exact = verify(net, x, label, VerifyOptions(eps=eps, time_limit=30, pgd_steps=0))
        options = VerifyOptions(eps=eps, time_limit=30, method="bab", pgd_steps=0, bab=BabOptions(split=split))
        bab = verify(net, x, label, options)
        assert exact.status in ("robust", "adversarial")
        assert bab.status == exact.status, f"seed {seed}: bab {bab.status}, milp {exact.status} ({bab.stats})"
        if bab.status == "adversarial":
            assert bab.witness_verified
            logits = net.double()(bab.adversarial.double())[0]
            assert logits.argmax() != label and (bab.adversarial - x).abs().max() <= eps + 1e-7
        verdicts[bab.status] = verdicts.get(bab.status, 0) + 1
        stats = bab.stats.get("bab", {})
        branched = stats.get("domains", 0) > 0 if split == "relu" else stats.get("input_rounds", 0) > 1
        verdicts["branched"] = verdicts.get("branched", 0) + branched
    assert verdicts.get("robust", 0) >= 20 and verdicts.get("adversarial", 0) >= 20, verdicts
    assert verdicts["branched"] >= 5, verdicts


def test_a_sub_domain_holding_a_counterexample_is_never_closed():
    """Splits that agree with a real counterexample's signs: the bound stays below its value, and
    branch and bound answers adversarial, never robust."""
    found = 0
    for seed in range(40):
        net = _mlp(seed).float()
        x = torch.rand(1, 2, generator=torch.Generator().manual_seed(seed))
        label = int(net(x).argmax())
        grid = (x - 0.3) + 0.6 * torch.rand(5000, 2, generator=torch.Generator().manual_seed(seed))
        wrong = net(grid).argmax(1) != label
        if not wrong.any():
            continue
        witness = grid[wrong][:1].double()
        target = int(net(witness.float()).argmax())
        ops, _, _ = build_ops(net.double(), None, witness)
        c = torch.zeros(3, dtype=DT)
        c[label], c[target] = 1.0, -1.0
        bounder = SplitBounder(ops, x.double() - 0.3, x.double() + 0.3, c)
        values, out = _pre_activations(ops, witness)
        splits = {i: torch.where(values[i] >= 0, 1, -1).to(torch.int8) for i in bounder.relus}
        assert bounder.bound(splits).lower[0] <= (out * c).sum() + 1e-9
        outcome = robustness_bab(
            net,
            x - 0.3,
            x + 0.3,
            label,
            [j for j in range(3) if j != label],
            BabOptions(),
            time.perf_counter() + 20,
            lambda p: p if net.double()(p.double()).argmax() != label else None,
        )
        assert outcome.status == "adversarial"
        found += 1
    assert found >= 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch=0), "batch"),
        (dict(branching="random"), "branching rule"),
        (dict(iterations=-1), "iterations"),
        (dict(split="neurons"), "choose one of"),
    ],
)
def test_bad_bab_options_name_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BabOptions(**kwargs)


def test_bad_verify_method_names_the_choices():
    with pytest.raises(ValueError, match="milp"):
        VerifyOptions(method="beta")
    with pytest.raises(ValueError, match="method=milp"):
        VerifyOptions(method="bab", objective="min_distortion")
    with pytest.raises(ValueError, match="bab_share"):
        VerifyOptions(method="bab-milp", bab_share=0)


def test_zero_time_and_unsplittable_layers_are_refused():
    net = _tiny(0)
    x = torch.rand(1, 4)
    check = lambda p: None  # noqa: E731
    with pytest.raises(ValueError, match="time limit"):
        robustness_bab(net, x - 0.1, x + 0.1, 0, [1, 2], BabOptions(), time.perf_counter() - 1, check)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    image = torch.rand(1, 1, 6, 6)
    with pytest.raises(UnsupportedLayerError, match=r"layer 1 \(MaxPool"):
        robustness_bab(pooled, image - 0.1, image + 0.1, 0, [1, 2], BabOptions(), time.perf_counter() + 5, check)


def test_bab_then_milp_hands_over_what_branch_and_bound_leaves():
    """bab-milp with almost no time for branch and bound still ends with the MILP's exact answer."""
    net = _tiny(3)
    x = torch.rand(1, 4, generator=torch.Generator().manual_seed(3))
    label = int(net(x).argmax())
    exact = verify(net, x, label, VerifyOptions(eps=0.2, time_limit=30))
    both = verify(net, x, label, VerifyOptions(eps=0.2, time_limit=30, method="bab-milp", bab_share=1e-6))
    assert both.status == exact.status
    assert both.resolved_by != "bab" or both.status == "adversarial"


def test_the_bab_certifier_proves_what_crown_proves_and_more_and_only_what_holds():
    from certtrain.attacks import pgd_attack
    from certtrain.bab.certifier import bab_certifier
    from certtrain.evaluate import CERTIFIERS

    torch.manual_seed(5)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4))
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = net(x).argmax(1)  # every sample correct: the certificates decide
    eps = 0.15
    crown = CERTIFIERS["crown"](net, x, y, eps, 4)
    bab = bab_certifier(seconds=10)(net, x, y, eps, 4)
    assert (bab | ~crown).all(), "a sample CROWN proves is not proved by branch and bound"
    assert bab.sum() > crown.sum(), "the instances should hold samples only branch and bound proves"
    _, broken = pgd_attack(net, x, y, eps, steps=50, restarts=3, generator=torch.Generator().manual_seed(0))
    assert broken.any() and not (bab & broken).any()
    for i in (~bab).nonzero().flatten().tolist():  # what bab leaves is exactly what the MILP finds attackable
        exact = verify(net.double(), x[i : i + 1].double(), int(y[i]), VerifyOptions(eps=eps, time_limit=30))
        net.float()
        assert exact.status == "adversarial", f"sample {i}: bab gave up on a robust sample ({exact.status})"
    with pytest.raises(ValueError, match="positive time"):
        bab_certifier(seconds=0)


def test_the_pool_reports_its_worst_bound_after_it_was_emptied_and_refilled():
    from certtrain.bab.search import _Pool

    pool = _Pool([1])
    domain = dict(splits={1: torch.zeros(2, 3)}, slopes={1: torch.zeros(2, 3)}, betas={1: torch.zeros(2, 3)})
    pool.push(**domain, lower=torch.tensor([-1.0, -2.0]), layer=torch.ones(2), neuron=torch.zeros(2))
    pool.pop(2)  # every sub-domain taken: an empty chunk stays
    assert len(pool) == 0 and pool.worst() == float("inf")
    pool.push(**domain, lower=torch.tensor([-0.5, -0.25]), layer=torch.ones(2), neuron=torch.zeros(2))
    assert pool.worst() == -0.5


def test_input_splitting_decides_groupsort_networks_as_dense_sampling_does():
    """GroupSort has no ReLU to split: halving the input box decides it (split=auto on 2 inputs)."""
    from certtrain.layers import GroupSort

    verdicts = {}
    for seed in range(30):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(2, 8), GroupSort(2), nn.Linear(8, 8), GroupSort(2), nn.Linear(8, 3))
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(1, 2, generator=gen)
        label = int(net(x).argmax())
        eps = 0.1 + 0.6 * float(torch.rand(1, generator=gen))
        x_L, x_U = x - eps, x + eps
        grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 201)] * 2, indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad():
            attackable = bool((net(x_L + grid * (x_U - x_L)).argmax(1) != label).any())

        def check(point):
            with torch.no_grad():
                return point if int(net(point.float()).argmax()) != label else None

        others = [j for j in range(3) if j != label]
        outcome = robustness_bab(net, x_L, x_U, label, others, BabOptions(), time.perf_counter() + 20, check)
        assert outcome.status in ("robust", "adversarial"), (seed, outcome.stats)
        assert outcome.stats["split"] == "input"
        if attackable:
            assert outcome.status == "adversarial", f"seed {seed}: the grid holds a counterexample"
        if outcome.status == "adversarial":
            w = outcome.witness
            assert ((w >= x_L - 1e-12) & (w <= x_U + 1e-12)).all() and int(net(w.float()).argmax()) != label
        verdicts[outcome.status] = verdicts.get(outcome.status, 0) + 1
        verdicts["split"] = verdicts.get("split", 0) + (outcome.stats["input_rounds"] > 1)
    assert verdicts.get("robust", 0) >= 5 and verdicts.get("adversarial", 0) >= 5 and verdicts["split"] >= 5, verdicts


def test_the_milp_after_branch_and_bound_decides_only_the_classes_left_open(monkeypatch):
    """A class branch and bound proved before its time ran out is not solved again by the MILP."""
    import certtrain.verify.api as api
    from certtrain.bab import BabOutcome

    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 5)).to(DT)
    x = torch.rand(1, 4, generator=torch.Generator().manual_seed(5), dtype=DT)
    label = int(net(x).argmax())
    others = [j for j in range(5) if j != label]
    monkeypatch.setattr(api, "robustness_bab", lambda *a, **k: BabOutcome("timeout", proved=others[:2]))
    seen, decide = [], api._decide
    monkeypatch.setattr(api, "_decide", lambda *a, **k: seen.append(list(a[3])) or decide(*a, **k))
    options = VerifyOptions(eps=0.05, time_limit=30, method="bab-milp", bab_share=0.5, pgd_steps=0)
    verify(net, x, label, options)
    assert seen == [others[2:]]


def test_easiest_first_takes_the_margins_in_order_of_their_root_bound(monkeypatch):
    """bab-milp's branch and bound works on the margin with the highest root bound first; alone,
    on the loosest first (a counterexample early). Each row's search is replaced by a recorder."""
    import certtrain.bab as bab
    from certtrain.bab.search import RowResult

    roots = []
    monkeypatch.setattr(bab, "branch_and_bound_row", lambda *a: roots.append(float(a[-1].lower)) or RowResult("robust"))
    torch.manual_seed(0)  # a network and box where alpha-CROWN leaves more than one margin open
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)).to(DT)
    x = torch.rand(1, 8, generator=torch.Generator().manual_seed(0), dtype=DT)
    label = int(net(x).argmax())
    others = [j for j in range(5) if j != label]
    orders = {}
    for easiest_first in (False, True):
        roots.clear()
        options = BabOptions(easiest_first=easiest_first, split="relu")
        robustness_bab(net, x - 0.1, x + 0.1, label, others, options, time.perf_counter() + 30, lambda p: None)
        orders[easiest_first] = list(roots)
    assert len(orders[True]) >= 2, "alpha-CROWN left fewer than two margins open: choose another network"
    assert orders[True] == sorted(orders[True], reverse=True) and orders[False] == sorted(orders[False])
    assert orders[True] != orders[False]
