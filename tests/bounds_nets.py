"""Networks for bound-engine tests: built from the fixtures' JSON layer lists, or at random."""

from __future__ import annotations

import json

import torch
from torch import nn

from certtrain.layers import GroupSort, Normalize


def from_spec(spec) -> nn.Sequential:
    """nn.Sequential from the fixture format: ["conv", in, out, k, stride, pad], ["linear", in, out], ..."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    builders = {
        "conv": lambda a: nn.Conv2d(a[0], a[1], a[2], stride=a[3], padding=a[4]),
        "linear": lambda a: nn.Linear(a[0], a[1]),
        "relu": lambda a: nn.ReLU(),
        "flatten": lambda a: nn.Flatten(),
        "bn2d": lambda a: nn.BatchNorm2d(a[0]),
        "bn1d": lambda a: nn.BatchNorm1d(a[0]),
        "avgpool": lambda a: nn.AvgPool2d(a[0], a[1]),
    }
    return nn.Sequential(*(builders[kind](args) for kind, *args in spec))


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give BatchNorm layers non-trivial running statistics and affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=generator))
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.3)


def random_conv_net(kind: str, generator: torch.Generator) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A small random network exercising one family of layers; returns (model, input shape)."""
    if kind == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)
        ), (12,)
    if kind == "conv":
        model = nn.Sequential(
            Normalize((0.4, 0.5), (0.3, 0.2)),
            nn.Conv2d(2, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=1, padding=0),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 2 * 2, 5),
        )
        return model, (2, 8, 8)
    if kind == "batchnorm":
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AvgPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 8),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Identity(),
            nn.Linear(8, 4),
        )
        randomize_batchnorm(model, generator)
        return model, (1, 6, 6)
    if kind == "groupsort":
        model = nn.Sequential(
            nn.Linear(6, 8), GroupSort(2), nn.Linear(8, 8), GroupSort(4), nn.Linear(8, 8), GroupSort(2), nn.Linear(8, 4)
        )
        return model, (6,)
    if kind == "maxpool":  # overlapping, padded and plain windows
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=1, padding=1),
            nn.Conv2d(3, 4, 3, stride=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 2 * 2, 4),
        )
        return model, (1, 6, 6)
    if kind == "nested":
        inner = nn.Sequential(nn.Linear(6, 10), nn.ReLU())
        return nn.Sequential(nn.Sequential(inner, nn.Linear(10, 10)), nn.ReLU(), nn.Linear(10, 3)), (6,)
    raise ValueError(kind)


KINDS = ("mlp", "conv", "batchnorm", "groupsort", "maxpool", "nested")


def init_random(model: nn.Module, generator: torch.Generator) -> None:
    """Every weight and bias from `generator`, so a seed fixes the whole network."""
    for p in model.parameters():
        if p.dim() > 1:
            p.data.copy_(torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5)
        elif p.dim() == 1:
            p.data.copy_(torch.randn(p.shape, generator=generator) * 0.1)
