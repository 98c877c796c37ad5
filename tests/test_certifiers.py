"""certtrain.certifiers: one registry for evaluation and the ladder, and its soundness order
holds (a certifier of a higher rank is never looser than the one below it)."""

from __future__ import annotations

import torch
from torch import nn

from certtrain.bounds import margin_spec
from certtrain.certifiers import BOUND_CERTIFIERS, soundness_pairs
from certtrain.evaluate import CERTIFIERS as EVALUATION
from certtrain.ladder import CERTIFIERS as LADDER
from certtrain.ladder import ORDER


def test_evaluation_and_the_ladder_read_the_same_records():
    assert {c.name for c in BOUND_CERTIFIERS if c.in_training} <= set(EVALUATION)
    assert set(LADDER) == {c.label for c in BOUND_CERTIFIERS}
    assert ORDER == soundness_pairs() and ("IBP", "CROWN (tight)") in ORDER


def test_each_rank_is_at_least_as_tight_as_the_one_below_on_random_networks():
    by_label = {c.label: c for c in BOUND_CERTIFIERS}
    for seed in range(6):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        x = torch.rand(3, 6)
        y = net(x).argmax(1)
        C = margin_spec(y, 4)
        x_L, x_U = x - 0.1, x + 0.1
        with torch.no_grad():
            for weak, strong in soundness_pairs():
                low_weak = by_label[weak].lower(net, x_L, x_U, C)
                low_strong = by_label[strong].lower(net, x_L, x_U, C)
                assert (low_strong >= low_weak - 1e-5).all(), (seed, weak, strong)


def test_the_best_certificate_per_radius_is_the_union_where_recorded_else_the_lowest():
    from certtrain.results import best_verified

    curves = {"ibp": {"0.1": 0.3, "0.2": 0.5}, "crown-ibp": {"0.1": 0.4, "0.2": 0.45}}
    assert best_verified(curves) == {"0.1": 0.3, "0.2": 0.45}
    assert best_verified({**curves, "best": {"0.1": 0.25, "0.2": 0.44}}) == {"0.1": 0.25, "0.2": 0.44}
