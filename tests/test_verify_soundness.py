"""Answers on networks too large for brute force: witnesses are real, robust answers survive PGD,
and no tightening setting contradicts another."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from certtrain.attacks import pgd_attack
from certtrain.verify import VerifyOptions, verify

LEVELS = ("ibp", "crown", "lp", "mip")


def mlp(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    with torch.no_grad():  # larger weights than the default init, so small radii already matter
        for p in net.parameters():
            p.mul_(3)
    return net


def conv_maxpool(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).eval()


def assert_witness(net, x, label, eps, r):
    assert r.adversarial is not None and r.witness_verified
    adv = r.adversarial.double()
    assert float((adv - x.double()).abs().max()) <= eps
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    logits = copy.deepcopy(net).double()(adv)[0]
    assert logits.argmax().item() != label


def survives_pgd(net, x, label, eps) -> bool:
    _, found = pgd_attack(
        net, x, torch.tensor([label]), eps, steps=60, restarts=5, generator=torch.Generator().manual_seed(1)
    )
    return not bool(found[0])


@pytest.mark.parametrize(
    "build,shape,seeds,radii",
    [
        pytest.param(mlp, (1, 6), range(4), (0.15, 0.3), marks=pytest.mark.slow),
        (conv_maxpool, (1, 1, 4, 4), range(2), (0.05, 0.2)),
    ],
)
def test_answers_agree_and_hold_up(build, shape, seeds, radii):
    statuses = []
    for seed in seeds:
        net = build(seed)
        x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
        label = int(net(x).argmax())
        for eps in radii:
            answers = {}
            for level in LEVELS:
                r = verify(net, x, label, VerifyOptions(eps=eps, tightening=level, pgd_steps=0, time_limit=60))
                answers[level] = r.status
                if r.status == "adversarial":
                    assert_witness(net, x, label, eps, r)
            decided = {s for s in answers.values() if s in ("robust", "adversarial")}
            assert len(decided) <= 1, answers  # no setting contradicts another
            if "robust" in decided:
                assert survives_pgd(net, x, label, eps), (seed, eps, answers)
            statuses.extend(answers.values())
    assert "robust" in statuses and "adversarial" in statuses  # both kinds of answer were exercised


def test_default_settings_return_a_checked_witness():
    net = mlp(1)
    x = torch.rand((1, 6), generator=torch.Generator().manual_seed(1))
    label = int(net(x).argmax())
    r = verify(net, x, label, VerifyOptions(eps=0.3, time_limit=30))
    assert r.status == "adversarial"
    assert_witness(net, x, label, 0.3, r)


def test_misclassified_sample_needs_no_solver():
    net = mlp(1)
    x = torch.rand((1, 6), generator=torch.Generator().manual_seed(2))
    wrong = (int(net(x).argmax()) + 1) % 4
    r = verify(net, x, wrong, VerifyOptions(eps=0.1))
    assert r.status == "misclassified" and r.predicted != wrong and r.distortion == 0.0


def test_targeted_witness_is_classified_as_the_target():
    net = mlp(2)
    x = torch.rand((1, 6), generator=torch.Generator().manual_seed(3))
    label = int(net(x).argmax())
    seen = set()
    for target in [k for k in range(4) if k != label]:
        r = verify(net, x, label, VerifyOptions(eps=0.6, targets=[target], time_limit=30))
        seen.add(r.status)
        if r.status == "adversarial":
            assert copy.deepcopy(net).double()(r.adversarial.double()).argmax().item() == target
        else:
            assert r.status == "robust"
    untargeted = verify(net, x, label, VerifyOptions(eps=0.6, pgd_steps=0, time_limit=30)).status
    assert untargeted == ("adversarial" if "adversarial" in seen else "robust")


def test_blur_witness_is_a_blur_of_the_input():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
    statuses = []
    for seed in range(6):
        x = torch.rand((1, 1, 4, 4), generator=torch.Generator().manual_seed(seed))
        label = int(net(x).argmax())
        r = verify(
            net,
            x,
            label,
            VerifyOptions(eps=None, perturbation="blur", blur_kernel_size=3, objective="min_distortion", time_limit=30),
        )
        statuses.append(r.status)
        if r.status == "adversarial":
            assert copy.deepcopy(net).double()(r.adversarial).argmax().item() != label
            # a blurred image is a convex combination of neighbours (and zero padding)
            padded = torch.nn.functional.pad(x.double(), (1, 1, 1, 1))
            windows = padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(1, 1, 4, 4, 9)
            assert (r.adversarial >= windows.min(-1).values - 1e-9).all()
            assert (r.adversarial <= windows.max(-1).values + 1e-9).all()
            assert r.bound <= r.distortion + 1e-9
        else:
            kernels = torch.distributions.Dirichlet(torch.ones(9)).sample((500,)).double()
            blurred = torch.nn.functional.conv2d(x.double(), kernels.reshape(500, 1, 3, 3), padding=1)
            preds = copy.deepcopy(net).double()(blurred.reshape(500, 1, 4, 4)).argmax(1)
            assert r.status == "robust" and (preds == label).all()
    assert set(statuses) <= {"adversarial", "robust"}


def test_min_distortion_bound_matches_the_robustness_threshold():
    """Just below the minimum L-inf distortion the ball is robust, just above it is not."""
    net = conv_maxpool(0)
    x = torch.rand((1, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    label = int(net(x).argmax())
    r = verify(
        net, x, label, VerifyOptions(eps=None, perturbation="unrestricted", objective="min_distortion", time_limit=60)
    )
    assert r.status == "adversarial" and np.isfinite(r.distortion)
    below = verify(net, x, label, VerifyOptions(eps=r.bound * 0.98, pgd_steps=0, time_limit=60))
    above = verify(net, x, label, VerifyOptions(eps=min(1.0, r.distortion * 1.02), pgd_steps=0, time_limit=60))
    assert (below.status, above.status) == ("robust", "adversarial")


def test_float64_models_get_float64_witnesses_inside_the_ball():
    net = mlp(1).double()
    x = torch.rand((1, 6), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    label = int(net(x).argmax())
    r = verify(net, x, label, VerifyOptions(eps=0.3, time_limit=30))
    assert r.status == "adversarial" and r.adversarial.dtype == torch.float64
    assert float((r.adversarial - x).abs().max()) <= 0.3  # exactly, in float64
    assert net(r.adversarial).argmax().item() != label


def test_maxpool_networks_get_crown_bounds_through_the_pooling():
    # The engine bounds max-pooling itself (DeepPoly's relaxation): the layers after the pool get
    # CROWN bounds inside the interval ones, and tighter somewhere.
    from certtrain.verify.network import network_steps
    from certtrain.verify.perturbations import make_domain
    from certtrain.verify.tightening import engine_bounds

    net = conv_maxpool(1)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    domain = make_domain(x, "linf", 0.1, 3)
    steps = network_steps(net, domain.shape)
    ibp = engine_bounds(steps, domain.box_lower, domain.box_upper, "ibp")
    crown = engine_bounds(steps, domain.box_lower, domain.box_upper, "crown")
    pool = next(i for i, layer in enumerate(net) if isinstance(layer, nn.MaxPool2d))
    for (il, iu), (cl, cu) in zip(ibp, crown):
        assert (cl >= il - 1e-9).all() and (cu <= iu + 1e-9).all()
    after = [(iu - il).sum() - (cu - cl).sum() for (il, iu), (cl, cu) in zip(ibp[pool + 2 :], crown[pool + 2 :])]
    assert max(after) > 1e-3
