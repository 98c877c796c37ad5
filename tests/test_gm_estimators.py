"""GM estimators: the sampled and stratified losses are unbiased estimates of the all-radii loss
(value and gradient), N = 1 is the local loss, draws follow the weights and the seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certtrain.losses import RobustContext, _largest_remainder_counts, global_robust_loss, radius_draw, radius_weights
from tests.bounds_nets import init_random

SCHEMES = ["inverse", "uniform", "inverse_square", "linear_decreasing", "increasing"]


def fixed_net(seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))
    init_random(model, gen)
    return model, gen


def gm_context(model, x, y, estimator, generator=None, n=4, weights="inverse", beta=0.5, fusion=False):
    return RobustContext(
        model,
        x,
        y,
        eps=0.3,
        beta=beta,
        gm_n=n,
        gm_weights=weights,
        num_classes=5,
        gm_estimator=estimator,
        loss_fusion=fusion,
        generator=generator,
    )


def loss_and_grad(model, ctx):
    model.zero_grad()
    loss = global_robust_loss(ctx, beta=ctx.beta)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("estimator", ["sampled", "stratified"])
@pytest.mark.parametrize("fusion", [False, True])
def test_estimators_are_unbiased_in_value_and_gradient(estimator, fusion):
    model, gen = fixed_net()
    x, y = torch.rand(16, 1, 3, 4, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    exact_loss, exact_grad = loss_and_grad(model, gm_context(model, x, y, "all", fusion=fusion))
    draws = torch.Generator().manual_seed(1)
    losses, grads = zip(
        *(loss_and_grad(model, gm_context(model, x, y, estimator, draws, fusion=fusion)) for _ in range(800))
    )
    losses, grads = torch.stack(losses), torch.stack(grads)
    # Within 4 standard errors of the Monte Carlo mean, value and every gradient coordinate.
    loss_se = losses.std() / len(losses) ** 0.5
    assert (losses.mean() - exact_loss).abs() <= 4 * loss_se + 1e-6
    grad_se = grads.std(dim=0) / len(grads) ** 0.5
    assert ((grads.mean(0) - exact_grad).abs() <= 4 * grad_se + 1e-6).float().mean() > 0.99
    # The draws must vary, or the check above says nothing.
    assert loss_se > 0


def test_stratified_has_less_variance_than_sampled():
    model, gen = fixed_net(3)
    x, y = torch.rand(16, 1, 3, 4, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    spread = {}
    for estimator in ("sampled", "stratified"):
        draws = torch.Generator().manual_seed(2)
        values = torch.stack(
            [global_robust_loss(gm_context(model, x, y, estimator, draws), 0.5).detach() for _ in range(300)]
        )
        spread[estimator] = values.var()
    assert spread["stratified"] < spread["sampled"]


@pytest.mark.parametrize("estimator", ["sampled", "stratified"])
def test_one_radius_is_exactly_the_local_loss(estimator):
    model, gen = fixed_net(1)
    x, y = torch.rand(8, 1, 3, 4, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    local = global_robust_loss(gm_context(model, x, y, "all", n=1), 0.5)
    drawn = global_robust_loss(gm_context(model, x, y, estimator, torch.Generator().manual_seed(0), n=1), 0.5)
    assert torch.equal(local, drawn)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sampled_draws_follow_the_weights(scheme):
    weights = radius_weights(5, scheme)
    index, sample_weight = radius_draw(weights, 40_000, "sampled", torch.Generator().manual_seed(0))
    frequency = torch.bincount(index, minlength=5).double() / len(index)
    assert torch.allclose(frequency, weights.double(), atol=0.01), (frequency, weights)
    assert torch.allclose(sample_weight.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_stratified_weights_sum_to_the_radius_weights(scheme):
    weights = radius_weights(4, scheme)
    index, sample_weight = radius_draw(weights, 37, "stratified", torch.Generator().manual_seed(0))
    per_radius = torch.zeros(4).index_add_(0, index, sample_weight)
    assert torch.allclose(per_radius, weights, atol=1e-6)
    assert (torch.bincount(index, minlength=4) >= 1).all()


def test_largest_remainder_counts_sum_and_track_the_weights():
    counts = _largest_remainder_counts(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), 103)
    assert counts.sum() == 103 and (counts >= 1).all()
    assert counts.tolist() == [51, 31, 21]


def test_a_batch_smaller_than_n_is_drawn_as_sampled():
    weights = radius_weights(8, "inverse")
    index, sample_weight = radius_draw(weights, 3, "stratified", torch.Generator().manual_seed(0))
    assert len(index) == 3 and torch.allclose(sample_weight, torch.full((3,), 1 / 3))


def test_the_draw_is_reproducible_from_the_seed():
    weights = radius_weights(4, "inverse")
    a = radius_draw(weights, 64, "sampled", torch.Generator().manual_seed(5))[0]
    b = radius_draw(weights, 64, "sampled", torch.Generator().manual_seed(5))[0]
    c = radius_draw(weights, 64, "sampled", torch.Generator().manual_seed(6))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_estimator_names_the_choices():
    model, gen = fixed_net()
    x, y = torch.rand(4, 1, 3, 4, generator=gen), torch.randint(0, 5, (4,), generator=gen)
    with pytest.raises(ValueError, match="all, sampled, stratified"):
        global_robust_loss(gm_context(model, x, y, "importance"), 0.5)
