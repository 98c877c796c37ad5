"""Loss fusion: the fused upper bound of the worst-case CE is never below the CE at random, corner
and PGD-found points of the box, on random networks of every layer kind and the shared network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from certtrain.bounds import ce_upper_bound, lower_bounds, margin_spec
from certtrain.bounds.fusion import exp_chord
from certtrain.data import load_split, to_float
from certtrain.losses import robust_cross_entropy
from certtrain.models import build_model
from tests.bounds_nets import KINDS
from tests.conftest import shared_path
from tests.test_bounds_soundness import random_case, sample_points

TOL = 1e-5


def ce_ascent_points(model, y, x_L, x_U, steps=40):
    """Points of the box found by signed-gradient ascent on the CE (PGD from the centre and a corner)."""
    points = []
    for start in ((x_L + x_U) / 2, x_U):
        x = start.clone().requires_grad_(True)
        for _ in range(steps):
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x + 0.1 * (x_U - x_L) * grad.sign(), x_L), x_U)
            x.requires_grad_(True)
        points.append(x.detach())
    return points


def worst_ce_found(model, y, points):
    with torch.no_grad():
        return torch.stack([F.cross_entropy(model(p), y, reduction="none") for p in points]).amax(0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
def test_fused_bound_is_above_the_ce_everywhere_in_the_box(kind, seed, method):
    model, x_L, x_U, gen = random_case(kind, seed)
    num_classes = model(x_L).shape[1]
    y = torch.randint(0, num_classes, (x_L.shape[0],), generator=gen)
    fused, ibp = ce_upper_bound(model, x_L, x_U, y, method=method, with_ibp=True)
    with torch.no_grad():
        points = sample_points(x_L, x_U, gen)
    found = worst_ce_found(model, y, points + ce_ascent_points(model, y, x_L, x_U))
    assert (fused >= found - TOL * (1 + found)).all(), (fused - found).min()
    assert (fused <= ibp + 1e-6).all()  # the interval bound of the sum is kept where it is smaller


def test_ibp_method_is_the_ce_of_the_ibp_margins():
    model, x_L, x_U, gen = random_case("conv", 2)
    y = torch.randint(0, 5, (x_L.shape[0],), generator=gen)
    margins = lower_bounds(model, x_L, x_U, margin_spec(y, 5), method="ibp")
    torch.testing.assert_close(ce_upper_bound(model, x_L, x_U, y, method="ibp"), robust_cross_entropy(margins, y))


def test_fused_bound_at_a_zero_radius_is_the_clean_ce():
    model, x_L, _, gen = random_case("mlp", 4)
    y = torch.randint(0, 5, (x_L.shape[0],), generator=gen)
    clean = F.cross_entropy(model(x_L), y, reduction="none")
    torch.testing.assert_close(ce_upper_bound(model, x_L, x_L, y), clean, rtol=1e-5, atol=1e-5)


def test_fused_bound_is_differentiable_in_the_parameters():
    model, x_L, x_U, gen = random_case("batchnorm", 1)
    model.train()  # BatchNorm from the clean batch, as in training
    for layer in model:
        if isinstance(layer, torch.nn.Dropout):
            layer.eval()
    y = torch.randint(0, 4, (x_L.shape[0],), generator=gen)
    ce_upper_bound(model, x_L, x_U, y, x=(x_L + x_U) / 2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_exp_chord_lies_above_exp_for_wide_and_tiny_intervals():
    lower = torch.tensor([-30.0, -3.0, -1.0, -1e-6, -2.0, -5.0])
    upper = torch.tensor([0.0, -1.0, -1.0 + 1e-7, 0.0, -2.0, -5.0 + 5e-4])
    slope, intercept = exp_chord(lower.double(), upper.double())
    t = torch.linspace(0, 1, 101, dtype=torch.float64).unsqueeze(1)
    z = lower.double() + t * (upper - lower).double()
    assert (slope * z + intercept >= z.exp() - 1e-15).all()


def test_no_unit_of_the_shared_network_has_a_bound_below_its_pgd_ce():
    weights = shared_path("models", "wk17a_linf0.1.pth")
    test = load_split("mnist", "test", shared_path("data")).subset(64)
    model = build_model("wk17a")
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    x, y = to_float(test.images), test.labels
    for eps in (0.1, 0.3):
        x_L, x_U = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        fused = ce_upper_bound(model, x_L, x_U, y).detach()
        found = worst_ce_found(model, y, ce_ascent_points(model, y, x_L, x_U))
        assert (fused >= found - TOL * (1 + found)).all(), eps
