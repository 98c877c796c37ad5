"""MonotonicWrapper: monotone where promised, far outside any training range."""

import functools

import pytest
import torch
from torch import nn

from certtrain.lipschitz import MonotonicWrapper, attach_projection, lipschitz_bound
from certtrain.lipschitz.zoo import lipschitz_stack

SIGNS = [1, -1, 0, 1, 0]


@functools.cache
def _trained_wrapper(mode: str, lam: float = 1.5) -> MonotonicWrapper:
    """A wrapper fitted to an anti-monotone target, so g pushes against the constraint."""
    torch.manual_seed(0)
    net = nn.Sequential(*lipschitz_stack([5, 16, 16, 1], "inf", lam, first_kind="one-inf", mode=mode))
    model = MonotonicWrapper(net, lam, SIGNS).double()
    x = torch.rand(256, 5, dtype=torch.float64)
    target = -3 * x[:, :1] + 3 * x[:, 1:2] + torch.sin(6 * x[:, 2:3])  # wrong direction on purpose
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    if mode == "project":
        attach_projection(opt, model)
    for _ in range(120):
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        opt.step()
    return model


@pytest.mark.parametrize("mode", ["direct", "project"])
def test_monotone_by_autograd_far_outside_training_range(mode):
    model = _trained_wrapper(mode)
    x = (torch.randn(4000, 5, dtype=torch.float64) * 100).requires_grad_(True)  # training data was in [0, 1]
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert (grad[:, 0] >= -1e-9).all() and (grad[:, 3] >= -1e-9).all()
    assert (grad[:, 1] <= 1e-9).all()
    # the constraint binds: somewhere the slope in a +1 feature is close to zero
    assert grad[:, 0].min() < 0.5


@pytest.mark.parametrize("mode", ["direct", "project"])
def test_monotone_by_finite_differences(mode):
    model = _trained_wrapper(mode)
    x = torch.randn(2000, 5, dtype=torch.float64) * 50
    with torch.no_grad():
        base = model(x)
        for feature, sign in enumerate(SIGNS):
            if sign == 0:
                continue
            for step in (1e-3, 1.0, 100.0):
                moved = x.clone()
                moved[:, feature] += step
                assert (sign * (model(moved) - base) >= -1e-9).all(), (feature, step)


def test_free_feature_is_not_constrained():
    model = _trained_wrapper("direct")
    x = torch.rand(500, 5, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert grad[:, 2].min() < -0.1  # a 0 feature may decrease, unlike the +1 features


def test_bound_of_the_wrapper():
    net = nn.Sequential(*lipschitz_stack([5, 8, 1], "inf", 1.5, first_kind="one-inf"))
    model = MonotonicWrapper(net, 1.5, SIGNS)
    assert lipschitz_bound(model, "one-inf") <= 1.5 * 2 * (1 + 1e-5)
    assert lipschitz_bound(model, "inf") <= lipschitz_bound(net, "inf") + 1.5 * 3 + 1e-6


def test_raises_when_the_net_can_exceed_lambda():
    with pytest.raises(ValueError, match="not guaranteed.*lipschitz_stack"):
        MonotonicWrapper(nn.Sequential(nn.Linear(5, 1)), 1e-6, SIGNS)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1))  # unconstrained weights
    with pytest.raises(ValueError, match="feature 0"):
        MonotonicWrapper(plain, 0.05, SIGNS)


def test_per_feature_lambdas_and_free_features():
    torch.manual_seed(0)
    net = nn.Sequential(*lipschitz_stack([5, 8, 1], "inf", 1.0, first_kind="one-inf"))
    # feature 2 is free (sign 0): its partial derivative may exceed its lambda
    model = MonotonicWrapper(net, [1.0, 2.0, 1e-9, 1.0, 3.0], SIGNS)
    x = torch.rand(300, 5, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(model.double()(x).sum(), x)
    assert (grad[:, 0] >= 0).all() and (grad[:, 1] <= 0).all() and (grad[:, 3] >= 0).all()
    with pytest.raises(ValueError, match="one per feature"):
        MonotonicWrapper(net, [1.0, 2.0], SIGNS)
    with pytest.raises(ValueError, match="feature 1"):
        MonotonicWrapper(net, [1.0, 1e-3, 1.0, 1.0, 1.0], SIGNS)


def test_monotone_in_float32_as_users_run_it():
    model = _trained_wrapper("direct").float()
    torch.manual_seed(1)
    x = torch.rand(2000, 5) * 4 - 2  # standardised features: |x| of order 1
    for feature, sign in ((0, 1), (1, -1), (3, 1)):
        for step in (1e-2, 0.5):
            moved = x.clone()
            moved[:, feature] += step
            with torch.no_grad():
                change = sign * (model(moved) - model(x))
            assert change.min() >= -1e-5, (feature, step, change.min())


def test_rejects_bad_signs_and_shapes():
    net = nn.Sequential(*lipschitz_stack([5, 8, 1], "inf", 1.0))
    with pytest.raises(ValueError, match="monotone"):
        MonotonicWrapper(net, 1.0, [2, 0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        MonotonicWrapper(net, 1.0, SIGNS)(torch.randn(3, 4))
