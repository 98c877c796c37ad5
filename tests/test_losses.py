"""Robust losses: margin padding, radius grid and weights, N = 1 equals the local loss,
uniform weights give the mean, CROWN-IBP mixing, the method registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certtrain import losses
from certtrain.losses import (
    RobustContext,
    global_robust_loss,
    input_box,
    margin_lower_bounds,
    radius_grid,
    radius_weights,
    robust_cross_entropy,
    stack_radii_by_default,
)
from certtrain.methods import METHODS, Method, MethodConfig, get_method, training_loss

bounds = pytest.importorskip("certtrain.bounds", reason="the bound engine (certtrain.bounds) is not installed")

SCHEMES = ["inverse", "uniform", "inverse_square", "linear_decreasing", "increasing"]


def small_net(seed=0, batch_norm=False):
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(12, 16)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)]
    return nn.Sequential(*layers)


def batch(seed=1, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(size, 1, 3, 4, generator=g), torch.randint(0, 5, (size,), generator=g)


def context(model, x, y, eps, n=1, weights="inverse", beta=0.0):
    return RobustContext(model, x, y, eps, beta, n, weights, num_classes=5)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_weights_are_normalised(n, scheme):
    w = radius_weights(n, scheme)
    assert w.shape == (n,)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (w > 0).all()


def test_weight_shapes_follow_their_names():
    inverse = radius_weights(4, "inverse")
    assert torch.allclose(inverse, torch.tensor([12.0, 6.0, 4.0, 3.0]) / 25)  # c_i proportional to 1 / i
    assert torch.allclose(radius_weights(4, "uniform"), torch.full((4,), 0.25))
    assert torch.allclose(radius_weights(3, "inverse_square"), torch.tensor([36.0, 9.0, 4.0]) / 49)
    assert torch.allclose(radius_weights(3, "linear_decreasing"), torch.tensor([3.0, 2.0, 1.0]) / 6)
    assert torch.allclose(radius_weights(3, "increasing"), torch.tensor([1.0, 2.0, 3.0]) / 6)


def test_bad_gm_settings_name_the_fix():
    with pytest.raises(ValueError, match="gm.n >= 1"):
        radius_weights(0, "inverse")
    with pytest.raises(ValueError, match="choose one of"):
        radius_weights(3, "harmonic")


def test_radius_grid_is_i_over_n_eps():
    r = radius_grid(0.3, 4)
    assert torch.allclose(r, torch.tensor([0.075, 0.15, 0.225, 0.3]))
    assert r[-1].item() == pytest.approx(0.3)


def test_robust_ce_pads_zero_at_the_true_class():
    # At eps = 0 the margins are exact: m_j = f_y - f_j, and CE(-m, y) equals the clean CE.
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    spec = bounds.margin_spec(y, 5)
    margins = torch.einsum("bsk,bk->bs", spec, logits)
    assert torch.allclose(robust_cross_entropy(margins, y), F.cross_entropy(logits, y, reduction="none"), atol=1e-6)


def test_local_loss_matches_a_direct_computation():
    model, (x, y) = small_net(), batch()
    eps = 0.1
    direct_lower = bounds.lower_bounds(
        model, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1), bounds.margin_spec(y, 5), "ibp"
    )
    expected = robust_cross_entropy(direct_lower, y).mean()
    assert torch.allclose(get_method("ibp").robust_loss(context(model, x, y, eps)), expected, atol=1e-6)


@pytest.mark.parametrize("method,beta", [("ibp", 0.0), ("crown_ibp", 1.0), ("crown_ibp", 0.3)])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_n_equal_one_is_exactly_the_local_loss(method, beta, scheme):
    model, (x, y) = small_net(), batch()
    local = get_method(method).robust_loss(context(model, x, y, 0.07, beta=beta))
    gm = global_robust_loss(context(model, x, y, 0.07, n=1, weights=scheme), beta=beta)
    assert torch.equal(local, gm)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_uniform_weights_give_the_mean_of_local_losses(beta):
    model, (x, y) = small_net(), batch()
    eps, n = 0.2, 4
    gm = global_robust_loss(context(model, x, y, eps, n=n, weights="uniform"), beta=beta)
    method = "ibp" if beta == 0.0 else "crown_ibp"
    per_radius = [get_method(method).robust_loss(context(model, x, y, eps * i / n, beta=beta)) for i in range(1, n + 1)]
    assert gm.item() == pytest.approx(torch.stack(per_radius).mean().item(), rel=1e-5)


def test_inverse_weights_favour_small_radii():
    model, (x, y) = small_net(), batch()
    inverse = global_robust_loss(context(model, x, y, 0.3, n=4, weights="inverse"), beta=0.0)
    increasing = global_robust_loss(context(model, x, y, 0.3, n=4, weights="increasing"), beta=0.0)
    # the robust CE grows with the radius, so weighting small radii gives the smaller loss
    assert inverse < increasing


def test_robust_loss_bounds_the_clean_loss_and_grows_with_eps():
    model, (x, y) = small_net(), batch()
    clean = F.cross_entropy(model(x), y)
    values = [get_method("ibp").robust_loss(context(model, x, y, eps)).item() for eps in (0.0, 0.05, 0.1, 0.2)]
    assert values[0] == pytest.approx(clean.item(), rel=1e-5)
    assert values == sorted(values) and values[-1] > values[0]


def test_crown_ibp_mixes_the_two_bounds_and_skips_crown_at_beta_zero(monkeypatch):
    model, (x, y) = small_net(), batch()
    lo, hi = input_box(x, 0.1)
    ibp = margin_lower_bounds(model, x, y, lo, hi, beta=0.0, num_classes=5)
    crown = margin_lower_bounds(model, x, y, lo, hi, beta=1.0, num_classes=5)
    mixed = margin_lower_bounds(model, x, y, lo, hi, beta=0.25, num_classes=5)
    assert torch.allclose(mixed, 0.25 * crown + 0.75 * ibp, atol=1e-6)
    calls = []
    real = bounds.lower_bounds
    monkeypatch.setattr(
        losses, "lower_bounds", lambda *a, method, **k: calls.append(method) or real(*a, method=method, **k)
    )
    get_method("crown_ibp").robust_loss(context(model, x, y, 0.1, beta=0.0))
    assert calls == ["ibp"]


@pytest.mark.parametrize("stack_radii", [True, False])
def test_global_loss_stacks_radii_or_not_alike_and_supports_batch_norm(monkeypatch, stack_radii):
    model, (x, y) = small_net(batch_norm=True), batch()
    model.train()
    calls = []
    real = bounds.lower_bounds
    monkeypatch.setattr(losses, "lower_bounds", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    loss = global_robust_loss(
        context(model, x, y, 0.1, n=3, beta=1.0, weights="inverse"), beta=1.0, stack_radii=stack_radii
    )
    # stacked: the three radii in one call along the batch; otherwise one call per radius
    assert calls == ([3 * len(x)] if stack_radii else [len(x)] * 3)
    other = global_robust_loss(
        context(model, x, y, 0.1, n=3, beta=1.0, weights="inverse"), beta=1.0, stack_radii=not stack_radii
    )
    assert loss.item() == pytest.approx(other.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_radii_stack_on_accelerators_only():
    assert not stack_radii_by_default(torch.device("cpu"))
    assert stack_radii_by_default(torch.device("cuda"))


def test_training_loss_mixes_clean_and_robust_terms():
    model, (x, y) = small_net(), batch()
    ctx = context(model, x, y, 0.1)
    clean = F.cross_entropy(model(x), y)
    robust = get_method("ibp").robust_loss(ctx)
    loss, parts = training_loss("ibp", ctx, kappa=0.25)
    assert loss.item() == pytest.approx((0.25 * clean + 0.75 * robust).item(), rel=1e-6)
    assert set(parts) == {"clean_ce", "robust_ce"}
    plain, _ = training_loss("ibp", ctx, kappa=1.0)
    assert plain.item() == pytest.approx(clean.item())
    standard, _ = training_loss("standard", ctx, kappa=0.5)
    assert standard.item() == pytest.approx(clean.item())


def test_kappa_zero_keeps_the_clean_pass_out_of_the_backward_pass():
    model, (x, y) = small_net(), batch()
    logits = model(x)
    reached = []
    logits.register_hook(lambda grad: reached.append(grad))
    loss, parts = training_loss("ibp", context(model, x, y, 0.1), kappa=0.0, logits=logits)
    assert loss.item() == pytest.approx(parts["robust_ce"].item(), rel=1e-6)
    loss.backward()
    assert reached == []  # no backward through f(x) for a term of weight 0
    assert all(p.grad is not None for p in model.parameters())


def test_registry_accepts_new_methods_and_rejects_unknown_names(monkeypatch):
    monkeypatch.setitem(METHODS, "constant", Method("constant", MethodConfig, lambda ctx: torch.tensor(2.0), "a toy"))
    model, (x, y) = small_net(), batch()
    loss, _ = training_loss("constant", context(model, x, y, 0.1), kappa=0.5)
    assert loss.item() == pytest.approx(0.5 * F.cross_entropy(model(x), y).item() + 1.0, rel=1e-6)
    with pytest.raises(ValueError, match="unknown method"):
        get_method("lipschitz_typo")
