"""method=lipschitz pieces: the robust loss on certified margins and the any-method certifier."""

import pytest
import torch
import torch.nn.functional as F

from certtrain.lipschitz import certify_any, lipschitz_certified
from certtrain.lipschitz.certify import lipschitz_margin_lower_bounds
from certtrain.lipschitz.losses import lipschitz_robust_loss, multiclass_hinge
from certtrain.lipschitz.zoo import lipschitz_mlp


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = lipschitz_mlp(in_channels=1, in_size=4, num_classes=4, width=8, lipschitz_const=3.0).eval()
    return model, torch.rand(40, 1, 4, 4), torch.arange(40) % 4


def test_loss_at_eps_zero_is_the_plain_loss(model_and_batch):
    model, x, y = model_and_batch
    logits = model(x)
    torch.testing.assert_close(
        lipschitz_robust_loss(model, logits, y, 0.0, loss="ce", temperature=1.0, margin=0.1), F.cross_entropy(logits, y)
    )
    torch.testing.assert_close(
        lipschitz_robust_loss(model, logits, y, 0.0, loss="hinge", temperature=1.0, margin=0.3),
        multiclass_hinge(logits, y, 0.3),
    )


def test_loss_grows_with_eps_and_trains_the_weights(model_and_batch):
    model, x, y = model_and_batch
    logits = model(x)
    small, large = (
        lipschitz_robust_loss(model, logits, y, e, loss="ce", temperature=4.0, margin=0.1) for e in (0.01, 0.2)
    )
    assert large > small
    large.backward()
    assert model[-1].parametrizations.weight.original.grad.abs().sum() > 0


def test_dynamic_hinge_pushes_each_sample_to_half_the_distance_to_the_other_class(model_and_batch):
    from certtrain.lipschitz.losses import half_distance_to_other_class

    model, x, y = model_and_batch
    radius = half_distance_to_other_class(x, y)
    flat = x.flatten(1)
    for i in (0, 7):
        others = (flat[y != y[i]] - flat[i]).abs().amax(dim=1)
        assert radius[i] == pytest.approx(float(others.min()) / 2)
    logits = model(x)
    loss = lipschitz_robust_loss(model, logits, y, 0.0, loss="dynamic_hinge", temperature=1.0, margin=0.1, x=x)
    # zero exactly when every sample is certified at its own radius
    lower = lipschitz_margin_lower_bounds(model, logits, y, radius).min(dim=1).values
    assert loss.item() == pytest.approx(torch.relu(-lower).mean().item())
    loss.backward()
    with pytest.raises(ValueError, match="needs the inputs"):
        lipschitz_robust_loss(model, model(x), y, 0.0, loss="dynamic_hinge", temperature=1.0, margin=0.1)


def test_unknown_loss_is_rejected(model_and_batch):
    model, x, y = model_and_batch
    with pytest.raises(ValueError, match="hinge"):
        lipschitz_robust_loss(model, model(x), y, 0.1, loss="mse", temperature=1.0, margin=0.1)


def test_certify_any_contains_the_lipschitz_certificate(model_and_batch):
    pytest.importorskip("certtrain.bounds")
    model, x, y = model_and_batch
    for eps in (0.0, 0.005, 0.02):
        lip = lipschitz_certified(model, x, y, eps)
        both = certify_any(model, x, y, eps, 4, bounds=("ibp",))
        assert (both | ~lip).all()  # everything the certificate proves stays proven
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        assert (correct | ~both).all()  # nothing misclassified is ever certified


def test_certify_any_falls_back_to_bounds_for_layers_without_a_lipschitz_rule():
    pytest.importorskip("certtrain.bounds")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.arange(6) % 3
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert torch.equal(certify_any(model, x, y, 0.0, 3, bounds=("ibp",)), correct)
