"""Soundness of the bound engine on random networks of every supported layer kind."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from certtrain.bounds import (
    FLOAT32_SLACK,
    UnsupportedLayerError,
    certified,
    compute_bounds,
    intermediate_bounds,
    lower_bounds,
    margin_spec,
)
from certtrain.layers import GroupSort
from tests.bounds_nets import KINDS, init_random, random_conv_net

METHODS = ("ibp", "crown-ibp", "crown")
TOL = 1e-5


def random_case(kind, seed, batch=4):
    gen = torch.Generator().manual_seed(seed)
    model, shape = random_conv_net(kind, gen)
    init_random(model, gen)
    model.eval()
    center = torch.rand(batch, *shape, generator=gen)
    radius = torch.rand(batch, 1, generator=gen).view(batch, *([1] * len(shape))) * 0.3
    return model, center - radius, center + radius, gen


def extreme_points(model, C, x_L, x_U, steps=30):
    """Points of the box found by signed-gradient ascent/descent on every spec row."""
    points = []
    for sign in (1.0, -1.0):
        for row in range(C.shape[1]):
            x = ((x_L + x_U) / 2).clone().requires_grad_(True)
            for _ in range(steps):
                value = sign * (C[:, row] * model(x)).sum()
                (grad,) = torch.autograd.grad(value, x)
                with torch.no_grad():
                    x = torch.minimum(torch.maximum(x + 0.1 * (x_U - x_L) * grad.sign(), x_L), x_U)
                x.requires_grad_(True)
            points.append(x.detach())
    return points


def sample_points(x_L, x_U, gen, count=64):
    points = [x_L + torch.rand(x_L.shape, generator=gen) * (x_U - x_L) for _ in range(count)]
    flat = x_L.flatten(1).shape[1]
    if flat <= 12:  # every corner of small boxes
        for bits in itertools.product((0.0, 1.0), repeat=flat):
            mask = torch.tensor(bits).view(1, *x_L.shape[1:])
            points.append(x_L + mask * (x_U - x_L))
    else:
        points += [torch.where(torch.rand(x_L.shape, generator=gen) < 0.5, x_L, x_U) for _ in range(count)]
    return points


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_bounds_contain_network_values(kind, seed):
    model, x_L, x_U, gen = random_case(kind, seed)
    num_classes = model(x_L).shape[1]
    y = torch.randint(0, num_classes, (x_L.shape[0],), generator=gen)
    C = margin_spec(y, num_classes)
    bounds = {m: compute_bounds(model, x_L, x_U, C=C, method=m) for m in METHODS}
    logit_bounds = {m: compute_bounds(model, x_L, x_U, method=m) for m in METHODS}
    with torch.no_grad():
        points = sample_points(x_L, x_U, gen)
    points += extreme_points(model, C, x_L, x_U)
    with torch.no_grad():
        for x in points:
            logits = model(x)
            margins = torch.einsum("bsk,bk->bs", C, logits)
            for method in METHODS:
                lower, upper = bounds[method]
                assert (margins >= lower - TOL).all(), (method, (lower - margins).max())
                assert (margins <= upper + TOL).all(), (method, (margins - upper).max())
                lower, upper = logit_bounds[method]
                assert (logits >= lower - TOL).all() and (logits <= upper + TOL).all(), method


@pytest.mark.parametrize("kind", KINDS)
def test_lower_bounds_equal_compute_bounds(kind):
    model, x_L, x_U, gen = random_case(kind, 7)
    C = margin_spec(torch.zeros(x_L.shape[0], dtype=torch.long), model(x_L).shape[1])
    for method in METHODS:
        torch.testing.assert_close(
            lower_bounds(model, x_L, x_U, C, method=method), compute_bounds(model, x_L, x_U, C=C, method=method)[0]
        )


def test_crown_ibp_is_at_least_as_tight_as_ibp_on_the_linear_part():
    # For a network without activations both backward methods are exact, IBP is not.
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 6), nn.Linear(6, 3))
    init_random(model, gen)
    x = torch.rand(3, 5, generator=gen)
    x_L, x_U = x - 0.2, x + 0.2
    ibp = compute_bounds(model, x_L, x_U, method="ibp")
    crown = compute_bounds(model, x_L, x_U, method="crown")
    assert (crown[0] >= ibp[0] - 1e-6).all() and (crown[1] <= ibp[1] + 1e-6).all()
    assert (crown[0] > ibp[0] + 1e-4).any()


@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
def test_linear_network_bound_is_the_exact_closed_form(method):
    gen = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Linear(6, 9), nn.Flatten(), nn.Linear(9, 4), nn.Linear(4, 4))
    init_random(model, gen)
    model = model.double()
    x = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    radius = 0.1
    weight = model[3].weight @ model[2].weight @ model[0].weight
    bias = model[3].weight @ (model[2].weight @ model[0].bias + model[2].bias) + model[3].bias
    center = x @ weight.T + bias
    reach = radius * weight.abs().sum(1)
    lower, upper = compute_bounds(model, x - radius, x + radius, method=method)
    torch.testing.assert_close(lower, center - reach, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(upper, center + reach, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_bounds_stay_within_the_documented_slack_of_float64(kind):
    model, x_L, x_U, _ = random_case(kind, 5, batch=6)
    model64 = copy.deepcopy(model).double()
    C = margin_spec(torch.arange(6) % 3, model(x_L).shape[1])
    for method in METHODS:
        lower32, upper32 = compute_bounds(model, x_L, x_U, C=C, method=method)
        lower64, upper64 = compute_bounds(model64, x_L.double(), x_U.double(), C=C.double(), method=method)
        assert ((lower32.double() - lower64).abs() <= FLOAT32_SLACK * (1 + lower64.abs())).all(), method
        assert ((upper32.double() - upper64).abs() <= FLOAT32_SLACK * (1 + upper64.abs())).all(), method
        # A float32 certificate implies a positive float64 bound.
        assert (lower64[certified(lower32)] > 0).all()


@pytest.mark.parametrize("method", ("crown-ibp", "crown", "alpha-crown"))
def test_maxpool_relaxation_is_exact_on_a_point_box(method):
    # A zero-width box: every window has a dominating input, so max-pooling is linear there and
    # the backward bound must equal the network's value.
    model, x_L, _, _ = random_case("maxpool", 2)
    model = model.double()
    x = x_L.double()
    lower, upper = compute_bounds(model, x, x, method=method)
    with torch.no_grad():
        torch.testing.assert_close(lower, model(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(upper, model(x), rtol=1e-10, atol=1e-10)


def test_maxpool_backward_bound_is_tighter_than_intervals_on_small_boxes():
    model, x_L, x_U, _ = random_case("maxpool", 1)
    center = (x_L + x_U) / 2
    x_L, x_U = center - 0.02, center + 0.02  # at large radii CROWN may be looser than IBP
    ibp = compute_bounds(model, x_L, x_U, method="ibp")
    crown = compute_bounds(model, x_L, x_U, method="crown")
    assert (crown[1] - crown[0]).mean() < (ibp[1] - ibp[0]).mean()


def test_certified_requires_every_margin_above_the_slack():
    lower = torch.tensor([[0.5, 1.0], [0.5, -0.1], [1e-7, 2.0]])
    assert certified(lower).tolist() == [True, False, False]


def test_stacked_radii_equal_separate_calls():
    model, x_L, x_U, _ = random_case("conv", 2)
    center = (x_L + x_U) / 2
    C = margin_spec(torch.tensor([0, 1, 2, 3]), 5)
    boxes = [(center - r, center + r) for r in (0.01, 0.05, 0.2)]
    stacked_L = torch.cat([b[0] for b in boxes])
    stacked_U = torch.cat([b[1] for b in boxes])
    for method in METHODS:
        together = lower_bounds(model, stacked_L, stacked_U, C.repeat(3, 1, 1), method=method)
        apart = torch.cat([lower_bounds(model, lo, up, C, method=method) for lo, up in boxes])
        torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
        # Larger radius, looser bound.
        per_radius = together.view(3, 4, -1)
        assert (per_radius[0] >= per_radius[1] - 1e-5).all() and (per_radius[1] >= per_radius[2] - 1e-5).all()


def test_training_mode_batchnorm_uses_the_clean_batch_statistics():
    model, x_L, x_U, gen = random_case("batchnorm", 4, batch=8)
    model.train()
    for layer in model:
        if isinstance(layer, nn.Dropout):
            layer.eval()  # a random network has no bounds; this test is about BatchNorm
    x = (x_L + x_U) / 2
    with pytest.raises(ValueError, match="pass the clean batch as x="):
        compute_bounds(model, x_L, x_U, method="ibp")
    running = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bounds = {m: compute_bounds(model, x_L, x_U, method=m, x=x) for m in METHODS}
    # The engine must not touch running statistics.
    assert all(
        torch.equal(a, m.running_mean)
        for a, m in zip(running, [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    )
    # Reference: the same network with the clean batch's statistics frozen into eval-mode BatchNorm.
    frozen = random_case("batchnorm", 4, batch=8)[0]
    activation = x
    with torch.no_grad():
        for layer_train, layer_frozen in zip(model, frozen):
            if isinstance(layer_train, nn.modules.batchnorm._BatchNorm):
                dims = [0] + list(range(2, activation.dim()))
                layer_frozen.running_mean.copy_(activation.mean(dims))
                layer_frozen.running_var.copy_(activation.var(dims, unbiased=False))
            activation = layer_frozen.eval()(activation)
    frozen.eval()
    with torch.no_grad():
        for point in sample_points(x_L, x_U, gen, count=32):
            logits = frozen(point)
            for method, (lower, upper) in bounds.items():
                assert (logits >= lower - TOL).all() and (logits <= upper + TOL).all(), method
    for method in METHODS:
        torch.testing.assert_close(
            bounds[method][0], compute_bounds(frozen, x_L, x_U, method=method)[0], rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("method", METHODS)
def test_bounds_are_differentiable_in_the_parameters(method):
    model, x_L, x_U, _ = random_case("batchnorm", 1, batch=4)
    C = margin_spec(torch.tensor([0, 1, 2, 3]), 4)
    lower = lower_bounds(model, x_L, x_U, C, method=method)
    lower.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_groupsort_interval_is_exact_sorting_of_bounds():
    model = nn.Sequential(GroupSort(3))
    x_L = torch.tensor([[3.0, -1.0, 0.0, 1.0, 2.0, 3.0]])
    x_U = torch.tensor([[4.0, 5.0, 0.5, 1.5, 2.5, 3.5]])
    lower, upper = compute_bounds(model, x_L, x_U, method="ibp")
    assert lower.tolist() == [[-1.0, 0.0, 3.0, 1.0, 2.0, 3.0]]
    assert upper.tolist() == [[0.5, 4.0, 5.0, 1.5, 2.5, 3.5]]


def test_intermediate_bounds_cover_every_layer_input():
    model, x_L, x_U, _ = random_case("batchnorm", 0)
    for method in ("ibp", "crown"):
        bounds = intermediate_bounds(model, x_L, x_U, method=method)
        assert len(bounds) == len(model) + 1
        activation = (x_L + x_U) / 2
        for index, layer in enumerate(model):
            lower, upper = bounds[index]
            assert lower.shape == activation.shape
            assert (activation >= lower - TOL).all() and (activation <= upper + TOL).all()
            activation = layer(activation)
        assert (activation >= bounds[-1][0] - TOL).all()
    ibp = intermediate_bounds(model, x_L, x_U, method="ibp")
    crown = intermediate_bounds(model, x_L, x_U, method="crown")
    relu_inputs = [i for i, layer in enumerate(model) if isinstance(layer, nn.ReLU)]
    assert any((crown[i][0] > ibp[i][0] + 1e-6).any() for i in relu_inputs)


def test_unsupported_layer_is_named_with_its_index():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"layer 2 \(Tanh\)"):
        compute_bounds(model, torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(UnsupportedLayerError, match="nn.Sequential"):
        compute_bounds(nn.Linear(4, 2), torch.zeros(1, 4), torch.ones(1, 4))


def test_bad_boxes_and_methods_are_rejected():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="x_L must be <= x_U"):
        compute_bounds(model, torch.ones(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="unknown bound method"):
        compute_bounds(model, torch.zeros(1, 4), torch.ones(1, 4), method="deeppoly")
    with pytest.raises(ValueError, match="C must be"):
        compute_bounds(model, torch.zeros(2, 4), torch.ones(2, 4), C=torch.ones(2, 2, 5))
    train_dropout = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()
    with pytest.raises(UnsupportedLayerError, match="Dropout"):
        compute_bounds(train_dropout, torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="labels must lie"):
        margin_spec(torch.tensor([3]), 3)


@pytest.mark.parametrize("kind", ["conv", "batchnorm", "groupsort"])
def test_refining_only_unstable_neurons_is_sound_and_inside_the_interval_bounds(kind):
    model, x_L, x_U, gen = random_case(kind, 9)
    refined = intermediate_bounds(model, x_L, x_U, method="crown", only_unstable=True)
    ibp = intermediate_bounds(model, x_L, x_U, method="ibp")
    tighter = False
    with torch.no_grad():
        points = sample_points(x_L, x_U, gen, count=16)
        for index in range(len(model) + 1):
            lower, upper = refined[index]
            assert (lower >= ibp[index][0] - TOL).all() and (upper <= ibp[index][1] + TOL).all()
            tighter |= bool((lower > ibp[index][0] + 1e-6).any())
            for point in points:
                value = model[:index](point)
                assert (value >= lower - TOL).all() and (value <= upper + TOL).all(), index
    if kind == "conv":  # two stacked convolutions: the backward relaxation beats intervals there
        assert tighter
