"""No sample certified by any bound method has a PGD adversarial example (the shared MNIST network)."""

from __future__ import annotations

import pytest
import torch

from certtrain.attacks import pgd_attack
from certtrain.data import load_split, to_float
from certtrain.evaluate import CERTIFIERS
from certtrain.models import build_model
from tests.conftest import shared_path

EPS = 0.1
SAMPLES = 200


@pytest.mark.slow
def test_certified_samples_survive_pgd():
    weights = shared_path("models", "wk17a_linf0.1.pth")
    data_dir = shared_path("data")
    model = build_model("wk17a")
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    test = load_split("mnist", "test", data_dir).subset(SAMPLES)
    x, y = to_float(test.images), test.labels
    _, attacked = pgd_attack(model, x, y, EPS, steps=50, restarts=4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        attacked |= model(x).argmax(1) != y
        certified = {m: CERTIFIERS[m](model, x, y, EPS, 10) for m in ("ibp", "crown-ibp", "crown")}
    for method, mask in certified.items():
        assert not (mask & attacked).any(), f"{method} certified {int((mask & attacked).sum())} attacked samples"
    # The network was trained for this radius: the certificates must not be vacuous.
    assert certified["crown"].float().mean() > 0.8
    assert attacked.float().mean() < 0.2
