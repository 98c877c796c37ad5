"""alpha-CROWN: sound at random, corner and PGD points on random networks of every layer kind and
on the shared network, never looser than CROWN, the same bound for the same inputs."""

from __future__ import annotations

import pytest
import torch

from certtrain.bounds import compute_bounds, lower_bounds, margin_spec
from certtrain.data import load_split, to_float
from certtrain.losses import input_box
from certtrain.models import build_model
from tests.bounds_nets import KINDS
from tests.conftest import shared_path
from tests.test_bounds_soundness import extreme_points, random_case, sample_points

TOL = 1e-5


@pytest.mark.parametrize("method", ["alpha-crown", "alpha-crown-full"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_alpha_crown_is_sound_and_never_looser_than_crown(kind, seed, method):
    model, x_L, x_U, gen = random_case(kind, seed)
    num_classes = model(x_L).shape[1]
    y = torch.randint(0, num_classes, (x_L.shape[0],), generator=gen)
    C = margin_spec(y, num_classes)
    lower, upper = compute_bounds(model, x_L, x_U, C=C, method=method)
    crown_lower, crown_upper = compute_bounds(model, x_L, x_U, C=C, method="crown")
    assert (lower >= crown_lower - TOL * (1 + crown_lower.abs())).all()
    assert (upper <= crown_upper + TOL * (1 + crown_upper.abs())).all()
    with torch.no_grad():
        points = sample_points(x_L, x_U, gen)
    points += extreme_points(model, C, x_L, x_U)
    with torch.no_grad():
        for x in points:
            margins = torch.einsum("bsk,bk->bs", C, model(x))
            assert (margins >= lower - TOL).all() and (margins <= upper + TOL).all()


def test_alpha_crown_tightens_some_bound_and_repeats_itself():
    model, x_L, x_U, gen = random_case("mlp", 11, batch=8)
    y = torch.randint(0, 5, (8,), generator=gen)
    C = margin_spec(y, 5)
    alpha = lower_bounds(model, x_L, x_U, C, method="alpha-crown")
    assert torch.equal(alpha, lower_bounds(model, x_L, x_U, C, method="alpha-crown"))
    assert (alpha > lower_bounds(model, x_L, x_U, C, method="crown") + 1e-4).any()


def test_full_alpha_crown_tightens_intermediate_bounds_and_stays_above_tight_crown():
    from certtrain.bounds import tight_crown_lower

    model, x_L, x_U, gen = random_case("mlp", 3, batch=8)
    center = (x_L + x_U) / 2
    x_L, x_U = center - 0.15, center + 0.15  # wide enough for unstable neurons in both hidden layers
    y = torch.randint(0, 5, (8,), generator=gen)
    C = margin_spec(y, 5)
    full = lower_bounds(model, x_L, x_U, C, method="alpha-crown-full")
    assert (full >= tight_crown_lower(model, x_L, x_U, C) - 1e-6).all()
    assert (full > lower_bounds(model, x_L, x_U, C, method="alpha-crown") + 1e-4).any()


def test_alpha_crown_leaves_the_models_gradients_alone():
    model, x_L, x_U, gen = random_case("conv", 1)
    lower_bounds(model, x_L, x_U, margin_spec(torch.zeros(len(x_L), dtype=torch.long), 5), method="alpha-crown")
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_alpha_crown_on_the_shared_network_is_sound_against_pgd():
    from certtrain.attacks import pgd_attack
    from certtrain.evaluate import CERTIFIERS

    model = build_model("wk17a")
    model.load_state_dict(torch.load(shared_path("models", "wk17a_linf0.1.pth"), weights_only=True))
    model.eval()
    test = load_split("mnist", "test", shared_path("data")).subset(40)
    x, y = to_float(test.images), test.labels
    for eps in (0.1, 0.3):
        _, attacked = pgd_attack(model, x, y, eps, steps=50, restarts=2, generator=torch.Generator().manual_seed(0))
        certified = CERTIFIERS["alpha-crown"](model, x, y, eps, 10)
        crown = CERTIFIERS["crown"](model, x, y, eps, 10)
        assert not (certified & attacked).any()
        assert (certified | ~crown).all()  # everything CROWN certifies, alpha-CROWN certifies
        x_L, x_U = input_box(x, eps)
        assert (
            lower_bounds(model, x_L, x_U, margin_spec(y, 10), method="alpha-crown")
            >= lower_bounds(model, x_L, x_U, margin_spec(y, 10), method="crown") - 1e-4
        ).all()
