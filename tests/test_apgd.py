"""APGD-CE + APGD-T (certtrain.apgd): at least PGD's strength at an equal budget, points in the
ball and misclassified, the paper's checkpoints, the grey-image floor, eval.attack in the config."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torch import nn

from certtrain.apgd import apgd_attack, checkpoints, dlr_targeted_loss
from certtrain.attacks import pgd_attack
from certtrain.config import ConfigError, check_config
from certtrain.data import Split, load_mnist5k, to_float
from certtrain.evaluate import evaluate
from tests.test_config import compose_config


@pytest.fixture(scope="module")
def digits():
    """An MLP trained for 5 epochs on 1,000 real digits (under a second) and 64 digits it never saw."""
    torch.manual_seed(0)
    train = load_mnist5k("train")  # one load: the held-out digits are the last 64 of its 4,000
    x_train, y_train = to_float(train.images[:1000]), train.labels[:1000]
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    optimiser = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(5):
        for i in range(0, 1000, 100):
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(x_train[i : i + 100]), y_train[i : i + 100]).backward()
            optimiser.step()
    return net.eval(), to_float(train.images[-64:]), train.labels[-64:]


def _seeded():
    return torch.Generator().manual_seed(0)


def test_apgd_finds_at_least_what_pgd_finds_with_the_same_budget(digits):
    net, x, y = digits
    eps, steps, targets = 0.08, 10, 3  # APGD 34, PGD 31 (40 steps or 4 x 10), clean 12 of 64
    budget = steps * (1 + targets)  # APGD-CE, then one APGD-T run per target: 40 gradient steps
    _, apgd = apgd_attack(net, x, y, eps, steps=steps, targets=targets, generator=_seeded())
    _, pgd_long = pgd_attack(net, x, y, eps, steps=budget, generator=_seeded())
    _, pgd_restarts = pgd_attack(net, x, y, eps, steps=steps, restarts=1 + targets, generator=_seeded())
    clean = (net(x).argmax(1) != y).sum().item()
    # A radius where the comparison means something: PGD breaks some samples, not all.
    assert clean < pgd_long.sum().item() < len(y)
    assert apgd.sum().item() >= max(pgd_long.sum().item(), pgd_restarts.sum().item())


@pytest.mark.parametrize("eps", [0.0, 0.03, 0.1, 0.3])
def test_points_lie_in_the_ball_and_the_found_ones_are_misclassified(digits, eps):
    net, x, y = digits
    x_adv, found = apgd_attack(net, x, y, eps, steps=10, targets=2, restarts=2, generator=_seeded())
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    with torch.no_grad():
        wrong = net(x_adv).argmax(1) != y
    assert found.any()
    assert torch.equal(found & wrong, found)  # every point claimed adversarial is misclassified
    if eps == 0:
        assert torch.equal(found, net(x).argmax(1) != y)


def _checkpoints_by_fractions(steps: int) -> list[int]:
    """The rule in exact rationals: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return sorted({math.ceil(q * steps) for q in p if math.ceil(q * steps) <= steps})


def test_checkpoints_follow_the_paper():
    # By hand for N = 100: p = 0, .22, .41 (+.19), .57 (+.16), .70 (+.13), .80 (+.10), .87 (+.07),
    # .93 (+.06, the floor), .99, then 1.05 > 1.
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]  # ceil(2.2) = 3, ceil(4.1) = 5, ...
    for steps in (1, 5, 20, 37, 50, 100, 250, 1000):
        assert checkpoints(steps) == _checkpoints_by_fractions(steps)


def test_the_grey_image_floor(digits):
    # The uniform grey image lies in every L-inf ball of radius 0.5 clipped to [0, 1], so every
    # sample whose label differs from the prediction at grey has an adversarial point.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 10))
    _, x, y = digits
    grey = torch.full_like(x[:1], 0.5)
    assert ((grey - x).abs() <= 0.5).all()
    with torch.no_grad():
        grey_class = net(grey).argmax(1).item()
    floor = y != grey_class
    _, found = apgd_attack(net, x, y, 0.5, steps=10, targets=3, generator=_seeded())
    assert found.float().mean().item() >= floor.float().mean().item()
    assert torch.equal(found | ~floor, torch.ones_like(found))  # each such sample, not just as many


def _decoy(pixels: int) -> nn.Sequential:
    """Three logits on [0, 1]^pixels with m = mean |x_i - 0.5|: z0 = 1, z1 = 20 relu(0.1 - m),
    z2 = m. Class 0 wins everywhere except near the grey image (z1 = 2 there); the gradient of
    the cross-entropy of class 0 points away from grey (z2 rises with m; z1 is flat outside)."""
    first = nn.Linear(pixels, 2 * pixels)
    second = nn.Linear(2 * pixels, 3)
    third = nn.Linear(3, 3)
    with torch.no_grad():
        eye = torch.eye(pixels)
        first.weight.copy_(torch.cat((eye, -eye)))
        first.bias.copy_(torch.cat((torch.full((pixels,), -0.5), torch.full((pixels,), 0.5))))
        second.weight.zero_()
        second.weight[1].fill_(-1 / pixels)
        second.weight[2].fill_(1 / pixels)
        second.bias.copy_(torch.tensor([1.0, 0.1, 0.0]))
        third.weight.copy_(torch.diag(torch.tensor([1.0, 20.0, 1.0])))
        third.bias.zero_()
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), second, nn.ReLU(), third)


def test_the_grey_image_floor_holds_where_gradients_lead_away_from_grey():
    net = _decoy(16)
    x = torch.randint(0, 2, (64, 1, 4, 4), generator=_seeded()).float()
    y = torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        assert (net(x).argmax(1) == 0).all() and net(torch.full_like(x[:1], 0.5)).argmax(1).item() == 1
    _, found = apgd_attack(net, x, y, 0.5, steps=20, restarts=2, generator=_seeded())
    assert found.all(), f"{int((~found).sum())} of 64 samples whose ball holds the grey image left unbroken"
    _, found = apgd_attack(net, x, y, 0.3, steps=20, generator=_seeded())  # grey is outside these balls
    assert not found.any()


class Bowl(nn.Module):
    """Two logits, [0, -||x - c||^2]: for label 0 the cross-entropy peaks inside the ball, at c."""

    def __init__(self, centre: torch.Tensor):
        super().__init__()
        self.centre = centre

    def forward(self, x):
        depth = -((x - self.centre) ** 2).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(depth), depth], 1)


def test_halving_the_step_converges_to_an_interior_maximum():
    # Signed steps of a fixed size oscillate around c; the checkpoints halve the step from 0.6 down
    # to 0.6 / 2^8 by step 100, so the best point (returned: no sample is broken) closes in on c.
    centre = 0.5 + torch.tensor([0.1234, -0.0777, 0.2011, 0.0421])
    x, y = torch.full((2, 4), 0.5), torch.zeros(2, dtype=torch.long)
    x_adv, found = apgd_attack(Bowl(centre), x, y, 0.3, steps=100, generator=_seeded())
    assert not found.any()
    assert (x_adv - centre).abs().max().item() < 0.01  # 0.002 here; 0.05 without condition 1


def test_dlr_targeted_loss_is_shift_and_scale_invariant():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(3))
    y, target = logits.argmax(1), logits.argsort(1, descending=True)[:, 1]
    loss = dlr_targeted_loss(logits, y, target)
    assert torch.allclose(dlr_targeted_loss(3.0 * logits + 7.0, y, target), loss, atol=1e-5)
    assert (loss < 0).all()  # correctly classified: z_y > z_t


def test_model_mode_and_batchnorm_statistics_are_left_as_they_were():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    net[4].eval()  # a layer in its own mode must keep it
    x = torch.rand(5, 1, 4, 4, generator=_seeded())
    y = torch.arange(5) % 4
    stats = net[2].running_mean.clone()
    apgd_attack(net, x, y, 0.1, steps=5, targets=2, generator=_seeded())
    assert net.training and net[2].training and not net[4].training
    assert torch.equal(net[2].running_mean, stats)  # the attack ran on running statistics
    assert all(p.grad is None for p in net.parameters())


def test_evaluate_reports_apgd_beside_pgd(digits):
    net, x, y = digits
    split = Split((x[:24] * 255).round().to(torch.uint8), y[:24], "test digits")
    plain = evaluate(net, split, [0.05], bounds=["ibp"], pgd_steps=5)
    both = evaluate(net, split, [0.05], bounds=["ibp"], pgd_steps=5, attack="apgd", apgd_steps=10)
    assert "apgd_err" not in plain
    assert both["pgd_err"] == plain["pgd_err"]  # APGD draws from its own stream
    assert plain["pgd_err"]["0.05"] <= both["apgd_err"]["0.05"] <= both["verified_err"]["ibp"]["0.05"]
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(net, split, [0.05], bounds=[], attack="fgsm")


def test_a_run_with_eval_attack_apgd_writes_apgd_err_beside_pgd_err(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from certtrain.training import train

    overrides = ["dataset=mnist", f"data_dir={data_dir}", "dataset.train_size=64", "dataset.test_size=16"]
    overrides += ["model=mlp", "epochs=2", "batch_size=32", "eps=0.1", "eval.eps_grid=[0.05,0.1]", "device=cpu"]
    overrides += ["eval.every=1", "eval.subset=8", "eval.pgd_steps=2", "eval.attack=apgd", "eval.apgd_steps=5"]
    train(compose_config(*overrides), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["apgd_err"]) == set(metrics["pgd_err"]) == {"0.05", "0.1"}
    for eps, err in metrics["apgd_err"].items():
        assert metrics["pgd_err"][eps] <= err <= metrics["verified_err"]["best"][eps]
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"val/apgd_err/eps_0.05", "val/pgd_err/eps_0.05"} <= set(events.Tags()["scalars"])


def test_eval_attack_composes_and_bad_values_name_the_fix():
    cfg = compose_config("eval.attack=apgd", "eval.apgd_steps=50", "eval.apgd_restarts=2")
    check_config(cfg)
    assert compose_config().eval.attack == "pgd"
    with pytest.raises(ConfigCompositionException) as err:  # the typed schema: before anything loads
        compose_config("eval.attack=autoattack")
    assert "expected one of" in str(err.value.__cause__ or err.value)
    untyped = OmegaConf.create(OmegaConf.to_container(compose_config()))
    untyped.eval.attack = "autoattack"  # a config that bypassed the schema still fails the check
    with pytest.raises(ConfigError, match="eval.attack='autoattack' is not known; choose one of pgd, apgd"):
        check_config(untyped)


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("eval.apgd_steps=0", "eval.apgd_steps=0 must be at least 1"),
        ("eval.apgd_restarts=0", "eval.apgd_restarts=0 must be at least 1"),
        ("eval.pgd_restarts=0", "eval.pgd_restarts=0 must be at least 1"),
        ("eval.pgd_steps=-1", "eval.pgd_steps >= 0"),
    ],
)
def test_zero_steps_or_restarts_raise_config_error(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        check_config(compose_config("eval.attack=apgd", override))
