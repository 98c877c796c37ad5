"""Small layers that the model zoo and the bound engine share."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel input normalisation (x - mean) / std as the model's first layer.

    Keeping it inside the model lets eps stay in pixel units ([0, 1]) while the network
    sees standardised inputs. Works on (B, C, H, W) and on flat (B, D) inputs (then each
    feature is its own "channel").
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape:
            raise ValueError(f"Normalize: mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in shape")
        if (std <= 0).any():
            raise ValueError("Normalize: every std must be positive")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def scale_shift(self, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) broadcastable to an input of `ndim` dims: y = x * scale + shift."""
        shape = (-1,) + (1,) * (ndim - 2)
        scale = (1.0 / self.std).view(shape)
        return scale, (-self.mean / self.std).view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift(x.dim())
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class GroupSort(nn.Module):
    """Sorts each consecutive group of `group_size` features in ascending order.

    group_size=2 is MaxMin. The map only permutes its input, so it is 1-Lipschitz in every
    l_p norm and preserves gradient norms. Works on (B, D) and on (B, C, ...) (groups along dim 1).
    """

    def __init__(self, group_size: int = 2):
        super().__init__()
        if group_size < 2:
            raise ValueError(f"GroupSort: group_size must be >= 2, got {group_size}")
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels % self.group_size:
            raise ValueError(
                f"GroupSort: {channels} features are not divisible into groups of {self.group_size}; "
                "choose a width that is a multiple of the group size"
            )
        grouped = x.reshape(x.shape[0], channels // self.group_size, self.group_size, *x.shape[2:])
        return grouped.sort(dim=2).values.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
