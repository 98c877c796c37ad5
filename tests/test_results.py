"""certtrain.results: the record evaluate() returns reads back from its metrics.json unchanged, and
the best certificate per radius is the per-sample union where recorded."""

from __future__ import annotations

import json

import torch
from torch import nn

from certtrain.data import Split
from certtrain.evaluate import evaluate
from certtrain.results import BEST, Errors


def test_an_evaluation_round_trips_through_metrics_json_and_its_best_is_the_union():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    images = torch.rand(24, 1, 4, 4)
    split = Split(images, net(images).argmax(1).detach(), "random")
    metrics = evaluate(net, split, [0.01, 0.05], bounds=("ibp", "crown-ibp"), num_classes=3, pgd_steps=5)
    errors = Errors.from_metrics(json.loads(json.dumps(metrics)))
    assert errors.to_metrics() == metrics
    assert errors.certifiers == ["ibp", "crown-ibp"] and errors.apgd_err is None
    for eps in ("0.01", "0.05"):
        each = [errors.verified_err[name][eps] for name in errors.certifiers]
        assert errors.pgd_err[eps] <= errors.best()[eps] == errors.verified_err[BEST][eps] <= min(each)
    assert errors.best_at(0.05) == errors.verified_err[BEST]["0.05"] and errors.best_at(0.3) is None


def test_without_a_union_the_best_is_the_lowest_certifier_per_radius():
    errors = Errors(0.1, {"0.1": 0.2}, {"ibp": {"0.1": 0.5, "0.2": 0.7}, "crown-ibp": {"0.1": 0.4, "0.2": 0.8}})
    assert errors.best() == {"0.1": 0.4, "0.2": 0.7}
    assert "apgd_err" not in errors.to_metrics()
