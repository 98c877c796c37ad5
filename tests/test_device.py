"""Device correctness: every bound method and layer kind, every robust loss (both ways of running
the N radii, every estimator, with and without loss fusion), a full training step, PGD and the
certifiers run with everything on one device other than the CPU.

Without a GPU the device is `meta`: tensors with shapes and no data. A CPU tensor mixed into a
meta computation is an error, as it is on CUDA, and any read of a value back to the host (a
synchronisation per step on a GPU) is an error too. With CERTTRAIN_TEST_DEVICE=cuda the same
tests run on the GPU for real and also compare the values with the CPU's.

    python -m pytest -m device                              # meta
    CERTTRAIN_TEST_DEVICE=cuda python -m pytest -m device   # a real GPU
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from certtrain.attacks import pgd_attack
from certtrain.bounds import ce_upper_bound, compute_bounds, intermediate_bounds, lower_bounds, margin_spec
from certtrain.evaluate import CERTIFIERS
from certtrain.losses import RobustContext, global_robust_loss
from certtrain.methods import METHODS, get_method, training_loss
from certtrain.models import build_model
from tests.bounds_nets import KINDS, init_random, random_conv_net

pytestmark = pytest.mark.device

DEVICE = torch.device(os.environ.get("CERTTRAIN_TEST_DEVICE", "meta"))
REAL = DEVICE.type != "meta"  # values can be read and compared with the CPU's
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("CERTTRAIN_TEST_DEVICE=cuda but no CUDA device is visible", allow_module_level=True)

BOUND_METHODS = ("ibp", "crown-ibp", "crown")


def on_device(model, *tensors):
    return (copy.deepcopy(model).to(DEVICE), *(t.to(DEVICE) for t in tensors))


def same_as_cpu(device_value, cpu_value, rtol=1e-4, atol=1e-5):
    assert device_value.device.type == DEVICE.type
    if REAL:
        torch.testing.assert_close(device_value.cpu(), cpu_value, rtol=rtol, atol=atol)


def case(kind, seed=0, batch=4):
    gen = torch.Generator().manual_seed(seed)
    model, shape = random_conv_net(kind, gen)
    init_random(model, gen)
    model.eval()
    x = torch.rand(batch, *shape, generator=gen)
    num_classes = model(x).shape[1]
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return model, x, y, num_classes


def test_margin_spec_is_built_on_the_labels_device():
    y = torch.tensor([0, 3, 9, 4])
    same_as_cpu(margin_spec(y.to(DEVICE), 10), margin_spec(y, 10))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", BOUND_METHODS)
def test_bounds_of_every_layer_kind(kind, method):
    model, x, y, num_classes = case(kind)
    x_L, x_U = x - 0.05, x + 0.05
    C = margin_spec(y, num_classes)
    expected = compute_bounds(model, x_L, x_U, C=C, method=method)
    d_model, d_L, d_U, d_y = on_device(model, x_L, x_U, y)
    got = compute_bounds(d_model, d_L, d_U, C=margin_spec(d_y, num_classes), method=method)
    for g, e in zip(got, expected):
        same_as_cpu(g, e)
    same_as_cpu(lower_bounds(d_model, d_L, d_U, margin_spec(d_y, num_classes), method=method), expected[0])
    # A CPU C with a device box: moved to the box's device, not mixed.
    same_as_cpu(compute_bounds(d_model, d_L, d_U, C=C, method=method)[0], expected[0])


@pytest.mark.parametrize("kind", KINDS)
def test_loss_fusion_and_intermediate_bounds(kind):
    model, x, y, _ = case(kind)
    d_model, d_L, d_U, d_y = on_device(model, x - 0.05, x + 0.05, y)
    same_as_cpu(ce_upper_bound(d_model, d_L, d_U, d_y), ce_upper_bound(model, x - 0.05, x + 0.05, y))
    for (lo, up), (lo_cpu, up_cpu) in zip(
        intermediate_bounds(d_model, d_L, d_U, method="crown"),
        intermediate_bounds(model, x - 0.05, x + 0.05, method="crown"),
    ):
        same_as_cpu(lo, lo_cpu)
        same_as_cpu(up, up_cpu)


LOSS_CASES = [
    (method, estimator, fusion, stack)
    for method in sorted(name for name, record in METHODS.items() if record.loss is not None and name != "lipschitz")
    for estimator in ("all", "sampled", "stratified")
    for fusion in (False, True)
    for stack in (False, True)
    if (fusion is False or method in ("crown_ibp", "gm_crown_ibp"))
    and (estimator == "all" or get_method(method).radii != "local")
    and (stack is False or estimator == "all")
]


@pytest.mark.parametrize(("method", "estimator", "fusion", "stack"), LOSS_CASES)
def test_every_robust_loss_and_its_gradient(method, estimator, fusion, stack, monkeypatch):
    monkeypatch.setattr("certtrain.losses.stack_radii_by_default", lambda device: stack)
    model, x, y, num_classes = case("batchnorm", batch=6)
    model.train()
    for layer in model:
        if isinstance(layer, torch.nn.Dropout):
            layer.eval()

    def loss_of(m, xs, ys):
        ctx = RobustContext(
            m,
            xs,
            ys,
            eps=0.1,
            beta=0.5,
            gm_n=3,
            num_classes=num_classes,
            gm_estimator=estimator,
            loss_fusion=fusion,
            generator=torch.Generator().manual_seed(0),
            method=get_method(method).defaults(),
        )
        loss, parts = training_loss(method, ctx, kappa=0.5)
        loss.backward()
        return loss, parts

    expected, _ = loss_of(model, x, y)
    d_model, d_x, d_y = on_device(model, x, y)
    got, parts = loss_of(d_model, d_x, d_y)
    same_as_cpu(got, expected.detach())
    assert all(part.device.type == DEVICE.type for part in parts.values())
    for d_param, param in zip(d_model.parameters(), model.parameters()):
        same_as_cpu(d_param.grad, param.grad, rtol=1e-3, atol=1e-4)


def test_lipschitz_loss_on_the_device():
    """The per-layer norms stay on the device: no host read per layer and step."""
    model = build_model("lipschitz_mlp", "mnist")
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    expected = get_method("lipschitz").loss(
        RobustContext(model, x, y, 0.1, 0.0, method=get_method("lipschitz").defaults(temperature=1.0))
    )
    d_model, d_x, d_y = on_device(model, x, y)
    got = get_method("lipschitz").loss(
        RobustContext(d_model, d_x, d_y, 0.1, 0.0, method=get_method("lipschitz").defaults(temperature=1.0))
    )
    same_as_cpu(got, expected.detach())


def test_a_full_training_step_of_dm_small():
    model = build_model("dm_small", "mnist").to(DEVICE).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(8, 1, 28, 28, device=DEVICE), torch.randint(0, 10, (8,), device=DEVICE)
    ctx = RobustContext(
        model,
        x,
        y,
        eps=0.1,
        beta=0.5,
        gm_n=4,
        gm_estimator="sampled",
        loss_fusion=True,
        generator=torch.Generator().manual_seed(0),
    )
    loss, _ = training_loss("gm_crown_ibp", ctx, kappa=0.5)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()
    assert all(p.device.type == DEVICE.type for p in model.parameters())


def test_stacked_radii_match_one_after_another():
    model, x, y, num_classes = case("conv", batch=5)
    d_model, d_x, d_y = on_device(model, x, y)
    ctx = RobustContext(d_model, d_x, d_y, eps=0.1, beta=0.5, gm_n=3, num_classes=num_classes)
    stacked, serial = global_robust_loss(ctx, 0.5, stack_radii=True), global_robust_loss(ctx, 0.5, stack_radii=False)
    assert stacked.device.type == DEVICE.type
    if REAL:
        torch.testing.assert_close(stacked, serial, rtol=1e-5, atol=1e-6)


def test_pgd_and_the_certifiers():
    model, x, y, num_classes = case("conv", batch=6)
    d_model, d_x, d_y = on_device(model, x, y)
    x_adv, found = pgd_attack(
        d_model, d_x, d_y, 0.1, steps=3, restarts=2, generator=torch.Generator(device=DEVICE) if REAL else None
    )
    assert x_adv.device.type == found.device.type == DEVICE.type
    for name in ("ibp", "crown-ibp", "crown"):
        certified = CERTIFIERS[name](d_model, d_x, d_y, 0.05, num_classes)
        same_as_cpu(certified, CERTIFIERS[name](model, x, y, 0.05, num_classes))
