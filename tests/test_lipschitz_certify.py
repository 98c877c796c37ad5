"""Lipschitz certificates: sound (no PGD counter-example), per-pair tighter than whole-map."""

import pytest
import torch
from torch import nn

from certtrain.attacks import pgd_attack
from certtrain.bounds import FLOAT32_SLACK
from certtrain.lipschitz import certified_radius, lipschitz_bound, lipschitz_certified, margin_sensitivities
from certtrain.lipschitz.certify import lipschitz_margin_lower_bounds
from certtrain.lipschitz.losses import binary_hinge, multiclass_hinge, temperature_cross_entropy
from certtrain.lipschitz.zoo import lipschitz_mlp


def _blobs(n=300, seed=0):
    """Three well-separated classes of 4x4 'images' in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([0.2, 0.5, 0.8])[y]
    x = (centres[:, None] + 0.05 * torch.randn(n, 16, generator=g)).clamp(0, 1)
    x[:, :4] = torch.rand(n, 4, generator=g)  # some nuisance pixels
    return x.view(n, 1, 4, 4), y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = lipschitz_mlp(in_channels=1, in_size=4, num_classes=3, width=16, depth=3, lipschitz_const=4.0)
    x, y = _blobs()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(200):
        opt.zero_grad()
        multiclass_hinge(model(x), y, margin=0.5).backward()
        opt.step()
    return model.eval(), x, y


def test_certified_samples_have_no_pgd_adversarial_example(trained):
    model, x, y = trained
    eps = 0.05
    certified = lipschitz_certified(model, x, y, eps)
    assert certified.sum() >= 30, "the toy model should certify a good share of the samples"
    _, found = pgd_attack(model, x[certified], y[certified], eps, steps=40, restarts=2)
    assert not found.any()


def test_radius_agrees_with_certification(trained):
    model, x, y = trained
    radius = certified_radius(model, x, y)
    for eps in (0.01, 0.05, 0.1):
        certified = lipschitz_certified(model, x, y, eps)
        assert (radius[certified] > eps).all()  # certified -> the radius reaches beyond eps
        # The converse holds except where the margin bound lies within the certifier's float32
        # slack of 0: both read the same sensitivities.
        with torch.no_grad():
            lower = lipschitz_margin_lower_bounds(model, model(x), y, eps).min(dim=1).values
        clear = lower.abs() > FLOAT32_SLACK * (1 + lower.abs())
        assert ((radius > eps) == certified)[clear].all()


def test_per_pair_sensitivity_is_at_most_whole_map(trained):
    model, _, _ = trained
    sens = margin_sensitivities(model, 3)
    whole = 2 * lipschitz_bound(model, "inf")
    off_diagonal = sens[~torch.eye(3, dtype=torch.bool)]
    assert (off_diagonal <= whole + 1e-6).all() and (off_diagonal < whole).any()


def test_margin_change_within_sensitivity(trained):
    model, x, y = trained
    sens = margin_sensitivities(model, 3)
    eps = 0.1
    moved = x + eps * (2 * torch.rand_like(x) - 1)
    with torch.no_grad():
        logits, logits2 = model(x), model(moved)
    for j in range(3):
        change = ((logits[:, y] - logits[:, j]).diagonal() - (logits2[:, y] - logits2[:, j]).diagonal()).abs()
        assert (change <= sens[y, j] * eps + 1e-5).all()


def test_model_without_final_linear_uses_the_whole_map_rule():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    sens = margin_sensitivities(model, 3)
    assert torch.allclose(sens, torch.full((3, 3), 2 * lipschitz_bound(model, "inf")))


def test_hinge_losses():
    logits = torch.tensor([[2.0, 0.5, 0.0], [0.0, 0.2, 0.1]])
    y = torch.tensor([0, 0])
    # margins: 1.5 (beyond 1 -> 0) and -0.2 (-> 1.2); mean 0.6
    assert multiclass_hinge(logits, y, 1.0).item() == pytest.approx(0.6)
    assert multiclass_hinge(logits, y, torch.tensor([2.0, 0.0])).item() == pytest.approx((0.5 + 0.2) / 2)
    assert binary_hinge(torch.tensor([0.3, -2.0]), torch.tensor([1, 0]), 1.0).item() == pytest.approx(0.35)


def test_temperature_cross_entropy_limits():
    logits = torch.tensor([[0.3, 0.1], [0.2, 0.4]])
    y = torch.tensor([0, 0])
    plain = nn.functional.cross_entropy(logits, y)
    assert temperature_cross_entropy(logits, y, 1.0).item() == pytest.approx(plain.item())
    # at high temperature it approaches the hinge-like mean of relu(-margin)
    assert temperature_cross_entropy(logits, y, 1000.0).item() == pytest.approx(0.2 / 2, abs=1e-3)


def test_margin_lower_bounds_follow_the_spec_order_and_hold(trained):
    from certtrain.bounds import certified
    from certtrain.lipschitz.certify import lipschitz_margin_lower_bounds

    model, x, y = trained
    eps = 0.05
    with torch.no_grad():
        logits = model(x)
        lower = lipschitz_margin_lower_bounds(model, logits, y, eps)
        assert torch.equal(certified(lower), lipschitz_certified(model, x, y, eps))
        moved = x + eps * (2 * torch.rand_like(x) - 1)
        logits2 = model(moved)
    others = [[j for j in range(3) if j != label] for label in y.tolist()]
    true_margins = torch.stack([logits2[i, y[i]] - logits2[i, others[i]] for i in range(len(y))])
    assert (true_margins >= lower - 1e-5).all()
