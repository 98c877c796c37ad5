"""Model zoo and building blocks."""

from __future__ import annotations

from torch import nn

from certtrain.layers import GroupSort, Normalize
from certtrain.lipschitz.zoo import LIPSCHITZ_ARCHITECTURES
from certtrain.models.zoo import ARCHITECTURES, DATASET_STATS

__all__ = ["ARCHITECTURES", "DATASET_STATS", "GroupSort", "Normalize", "build_model"]


def build_model(name: str, dataset: str = "mnist", **kwargs) -> nn.Sequential:
    """A zoo architecture sized for `dataset` (channels, image size, normalisation)."""
    builders = {**ARCHITECTURES, **LIPSCHITZ_ARCHITECTURES}
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(builders)}")
    if dataset not in DATASET_STATS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_STATS)}")
    mean, std = DATASET_STATS[dataset]
    shape = {"in_channels": len(mean), "in_size": 32 if dataset == "cifar10" else 28, "mean": mean, "std": std}
    shape.update(kwargs)
    return builders[name](**shape)
