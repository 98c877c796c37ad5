"""SABR, MTL-IBP, CC-IBP and EXP-IBP: closed forms on a two-layer network, the alpha = 1 and
lambda = 1 limits, the small box, the training attack's modes, GM over each, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certtrain.attacks import training_attack
from certtrain.config import ConfigError, check_config, structured_config
from certtrain.losses import RobustContext, gm_loss, input_box, robust_cross_entropy
from certtrain.methods import get_method, training_loss
from certtrain.methods.expressive import attack_margins
from certtrain.methods.sabr import small_box
from certtrain.models import build_model
from certtrain.models.zoo import ibp_init_

ATTACK_METHODS = ("sabr", "mtl_ibp", "cc_ibp", "exp_ibp")
EXPRESSIVE = ("mtl_ibp", "cc_ibp", "exp_ibp")
CLASSES = 4


def two_layer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, CLASSES))


def batch(seed=1, size=5):
    generator = torch.Generator().manual_seed(seed)
    # Inside [0.3, 0.7]: boxes of radius <= 0.1 are not clipped, so the closed forms hold as written.
    x = 0.3 + 0.4 * torch.rand(size, 6, generator=generator)
    return x, torch.randint(0, CLASSES, (size,), generator=generator)


def context(model, x, y, eps, method, n=1, **options):
    config = get_method(method).defaults(**options)
    return RobustContext(model, x, y, eps, 0.0, gm_n=n, gm_weights="uniform", num_classes=CLASSES, method=config)


def ibp_margins_by_hand(model, x, y, r):
    """IBP of Linear-ReLU-Linear written out: the first layer's interval, then the margin rows
    c = e_y - e_j folded into the last layer (|c^T W2| times the radius)."""
    first, last = model[1], model[3]
    centre, radius = F.linear(x, first.weight, first.bias), r * first.weight.abs().sum(1)
    low, high = F.relu(centre - radius), F.relu(centre + radius)
    mid, half = (low + high) / 2, (high - low) / 2
    rows = []
    for j in range(CLASSES):
        c = F.one_hot(y, CLASSES).float() - F.one_hot(torch.full_like(y, j), CLASSES).float()
        w, b = c @ last.weight, c @ last.bias
        rows.append((w * mid).sum(1) + b - (w.abs() * half).sum(1))
    margins = torch.stack(rows, 1)  # (B, K), 0 at the true class
    keep = torch.arange(CLASSES)[None, :] != y[:, None]
    return margins[keep].view(len(y), CLASSES - 1)


def fgsm_by_hand(model, x, y, r):
    """One step of the training attack from the clean point: x + r sign(grad CE), inside the box."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return (x + r * grad.sign()).detach()


@pytest.mark.parametrize("method", EXPRESSIVE)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_expressive_losses_match_their_closed_forms(method, alpha):
    model, (x, y) = two_layer(), batch()
    r = 0.05
    loss = get_method(method).robust_loss(context(model, x, y, r, method, alpha=alpha, attack_steps=1))
    m_ibp = ibp_margins_by_hand(model, x, y, r)
    logits_adv = model(fgsm_by_hand(model, x, y, r))
    l_ibp = robust_cross_entropy(m_ibp, y)
    l_adv = F.cross_entropy(logits_adv, y, reduction="none")
    true = logits_adv.gather(1, y[:, None])
    m_adv = torch.stack([true[b, 0] - logits_adv[b, j] for b in range(len(y)) for j in range(CLASSES) if j != y[b]])
    expected = {
        "mtl_ibp": alpha * l_ibp + (1 - alpha) * l_adv,
        "cc_ibp": robust_cross_entropy(alpha * m_ibp + (1 - alpha) * m_adv.view(len(y), -1), y),
        "exp_ibp": l_ibp**alpha * l_adv ** (1 - alpha),
    }[method].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_sabr_matches_its_closed_form():
    model, (x, y) = two_layer(), batch()
    r, lam = 0.08, 0.25
    loss = get_method("sabr").robust_loss(context(model, x, y, r, "sabr", small_box=lam, attack_steps=1))
    x_adv = fgsm_by_hand(model, x, y, r)  # a corner of the box
    # The small box of radius lam r at the corner, moved in until it fits: centre x + (1 - lam) r sign.
    centre = x + (1 - lam) * (x_adv - x)
    expected = F.cross_entropy(_worst_logits(model, centre, y, lam * r), y)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def _worst_logits(model, centre, y, r):
    margins = ibp_margins_by_hand(model, centre, y, r)
    worst = torch.zeros(len(y), CLASSES)
    keep = torch.arange(CLASSES)[None, :] != y[:, None]
    worst[keep] = -margins.flatten()
    return worst


@pytest.mark.parametrize("method", EXPRESSIVE)
def test_alpha_one_is_exactly_the_ibp_loss(method):
    model, (x, y) = two_layer(), batch()
    loss = get_method(method).robust_loss(context(model, x, y, 0.05, method, alpha=1.0))
    ibp = get_method("ibp").robust_loss(context(model, x, y, 0.05, "ibp"))
    assert torch.equal(loss, ibp)


def test_lambda_one_is_the_ibp_loss():
    model, (x, y) = two_layer(), batch()
    x = torch.cat([x, torch.zeros(1, 6), torch.ones(1, 6)])  # boxes clipped at 0 and 1 too
    y = torch.cat([y, torch.tensor([0, 1])])
    sabr = get_method("sabr").robust_loss(context(model, x, y, 0.05, "sabr", small_box=1.0))
    ibp = get_method("ibp").robust_loss(context(model, x, y, 0.05, "ibp"))
    torch.testing.assert_close(sabr, ibp, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.7, 1.0])
def test_the_small_box_lies_inside_the_eps_box_and_the_pixel_range(lam):
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(400, 6, generator=generator)
    x[:50] = x[:50].round()  # pixels at 0 and 1, where the eps box is clipped
    radius = 0.3 * torch.rand(400, 1, generator=generator)
    lower, upper = input_box(x, radius)
    x_adv = lower + torch.rand(x.shape, generator=generator) * (upper - lower)
    box_lower, box_upper = small_box(x_adv, lower, upper, lam * radius)
    assert (box_lower >= lower).all() and (box_upper <= upper).all() and (box_lower <= box_upper).all()
    assert (box_lower >= 0).all() and (box_upper <= 1).all()
    # Where the eps box is wide enough the small box has its full width and holds the attack point.
    wide = (upper - lower) >= 2 * lam * radius
    width = box_upper - box_lower
    torch.testing.assert_close(width[wide], (2 * lam * radius).expand_as(width)[wide])
    assert ((box_lower <= x_adv) & (x_adv <= box_upper))[wide].all()


def test_the_training_attack_runs_batchnorm_in_eval_mode_and_restores_each_layers_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[4].eval()  # a layer the caller put in eval mode stays so
    seen = []
    model[2].register_forward_hook(lambda module, inputs, output: seen.append(module.training))
    running = model[2].running_mean.clone()
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    lower, upper = input_box(x, 0.1)
    x_adv = training_attack(model, x, y, lower, upper, 0.1, steps=3)
    assert seen == [False, False, False]
    assert torch.equal(model[2].running_mean, running)  # no statistics from attack points
    assert [m.training for m in model] == [True, True, True, True, False, True]
    assert ((x_adv >= lower) & (x_adv <= upper)).all() and not x_adv.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ATTACK_METHODS)
def test_gm_with_one_radius_is_exactly_the_local_loss_and_two_radii_their_mean(method):
    model, (x, y) = two_layer(), batch()
    record, eps = get_method(method), 0.06
    options = {"small_box": 0.4} if method == "sabr" else {"alpha": 0.4}
    local = record.robust_loss(context(model, x, y, eps, method, **options))
    assert torch.equal(local, record.robust_loss(context(model, x, y, eps, method, n=1, **options)))
    assert record.gm_n(None) == 1 and record.gm_n(4) == 4  # gm.n unset: the local loss
    two = record.robust_loss(context(model, x, y, eps, method, n=2, **options))
    halves = [record.robust_loss(context(model, x, y, r, method, **options)) for r in (eps / 2, eps)]
    torch.testing.assert_close(two, (halves[0] + halves[1]) / 2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ATTACK_METHODS)
def test_each_new_method_trains_a_step_with_gradients_and_its_l1_penalty(method):
    model, (x, y) = two_layer(), batch()
    ctx = context(model, x, y, 0.05, method, l1=1e-3)
    loss, parts = training_loss(method, ctx, kappa=0.0)
    l1 = 1e-3 * sum(m.weight.abs().sum() for m in model if isinstance(m, nn.Linear))
    torch.testing.assert_close(parts["penalty"], l1.detach())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_local_losses_ignore_gm_n_and_the_global_ones_default_to_four():
    assert get_method("ibp").gm_n(8) == 1 and get_method("crown_ibp").gm_n(None) == 1
    assert get_method("gm_crown_ibp").gm_n(None) == 4 and get_method("gm_ibp").gm_n(2) == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_the_ibp_initialisation_has_shi_et_al_s_statistics(seed):
    torch.manual_seed(seed)
    model = build_model("dm_small", "cifar10")
    ibp_init_(model)
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            fan_in = layer.weight[0].numel()
            sigma = math.sqrt(2 * math.pi) / fan_in
            w = layer.weight.detach().flatten()
            # the sample sd of n normal draws is within 5 standard errors (sigma / sqrt(2 n)) of sigma
            assert abs(w.std().item() - sigma) < 5 * sigma / math.sqrt(2 * len(w))
            assert abs(w.mean().item()) < 5 * sigma / math.sqrt(len(w))
            assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize(
    ("method", "override", "fragment"),
    [
        ("mtl_ibp", {"alpha": 1.5}, "method.alpha=1.5 must lie in [0, 1]"),
        ("cc_ibp", {"alpha": -0.1}, "method.alpha=-0.1 must lie in [0, 1]"),
        ("sabr", {"small_box": 0.0}, "must lie in (0, 1]"),
        ("sabr", {"small_box": 1.2}, "must lie in (0, 1]"),
        ("exp_ibp", {"attack_steps": 0}, "method.attack_steps >= 1"),
        ("sabr", {"attack_steps": 0}, "method.attack_steps >= 1"),
        ("mtl_ibp", {"attack_eps_factor": 0.0}, "attack_eps_factor=0.0 must be positive"),
        ("sabr", {"l1": -1.0}, "method.l1=-1.0 must be >= 0"),
    ],
)
def test_bad_method_values_are_config_errors_naming_the_fix(method, override, fragment):
    cfg = structured_config(method)
    for key, value in override.items():
        cfg.method[key] = value
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(".", r"\.")):
        check_config(cfg)


def test_a_method_paired_with_a_model_it_cannot_train_names_the_models_that_fit():
    cfg = structured_config("lipschitz")
    cfg.model.name = "dm_small"
    with pytest.raises(
        ConfigError, match="method=lipschitz trains only model=lipschitz_mlp or model=lipschitz_mlp_large"
    ):
        check_config(cfg)


def test_gm_loss_takes_any_per_sample_loss():
    x, y = torch.rand(4, 3), torch.arange(4)
    ctx = RobustContext(None, x, y, 0.4, 0.0, gm_n=4, gm_weights="inverse")
    # L(x, r, y) = r: the global loss is sum_i c_i r_i with c_i ~ 1 / r_i, i.e. N eps / H_N / N = eps / H_4.
    value = gm_loss(ctx, lambda xs, r, ys: torch.as_tensor(r).expand(len(xs)).float(), stack_radii=False)
    harmonic = sum(1 / i for i in range(1, 5))
    assert value.item() == pytest.approx(0.4 / harmonic, rel=1e-6)
    assert torch.equal(attack_margins(torch.eye(4), y), torch.ones(4, 3))


@pytest.mark.slow
@pytest.mark.parametrize("method", ATTACK_METHODS)
def test_each_new_method_trains_from_the_command_line_config_with_gm_over_it(data_dir, tmp_path, method):
    from certtrain.training import train
    from tests.test_training_cli import TINY, compose_config

    # TINY sets gm.n=2: GM over the method, with the sampled estimator as well
    metrics = train(
        compose_config(f"method={method}", *TINY, "gm.estimator=sampled", "model.init=ibp", f"data_dir={data_dir}"),
        run_dir=tmp_path,
    )
    assert metrics["method"] == method and metrics["gm_n"] == 2
    assert set(metrics["verified_err"]) == {"ibp", "crown-ibp", "best"}
    for eps, best in metrics["verified_err"]["best"].items():
        assert (
            metrics["pgd_err"][eps]
            <= best
            <= min(metrics["verified_err"]["ibp"][eps], metrics["verified_err"]["crown-ibp"][eps])
        )
