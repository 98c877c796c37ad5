"""The network of ../shared/models on a few MNIST test samples (skipped where ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from certtrain.attacks import pgd_attack
from certtrain.data import load_split, to_float
from certtrain.verify import VerifyOptions, verify
from certtrain.verify_app.loading import load_network

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
WEIGHTS = SHARED / "models" / "wk17a_linf0.1.pth"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (WEIGHTS.is_file() and (SHARED / "data" / "MNIST").is_dir()),
        reason="needs ../shared/models/wk17a_linf0.1.pth and ../shared/data/MNIST",
    ),
]


@pytest.fixture(scope="module")
def network_and_data():
    torch.set_num_threads(1)
    return load_network("wk17a", str(WEIGHTS)), load_split("mnist", "test", SHARED / "data")


@pytest.mark.parametrize("index,expected", [(0, "robust"), (8, "adversarial")])
def test_known_samples_at_eps_0_1(network_and_data, index, expected):
    net, split = network_and_data
    x, label = to_float(split.images[index : index + 1]), int(split.labels[index])
    r = verify(net, x, label, VerifyOptions(eps=0.1, time_limit=120))
    assert r.status == expected
    if expected == "adversarial":
        adv = r.adversarial
        assert float((adv.double() - x.double()).abs().max()) <= 0.1
        assert net.double()(adv.double()).argmax().item() != label
        net.float()
        # another tightening setting must not contradict the witness
        assert verify(net, x, label, VerifyOptions(eps=0.1, tightening="crown", pgd_steps=0)).status == "adversarial"
    else:
        _, found = pgd_attack(
            net, x, torch.tensor([label]), 0.1, steps=100, restarts=3, generator=torch.Generator().manual_seed(0)
        )
        assert not bool(found[0])
        assert r.stats["unstable_final"] < r.stats["unstable_ibp"]  # tightening removed binaries
