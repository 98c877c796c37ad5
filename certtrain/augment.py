"""Batched data augmentation on uint8 image tensors (no per-sample PIL, no DataLoader workers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding by `padding`, then a horizontal flip with probability 1/2.

    images: (B, C, H, W), any dtype; every sample gets its own offset and flip.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    rows = (offsets[0][:, None] + torch.arange(height)).to(images.device)  # (B, H)
    cols = (offsets[1][:, None] + torch.arange(width)).to(images.device)  # (B, W)
    flip = torch.rand(batch, generator=generator) < 0.5
    cols = torch.where(flip[:, None].to(images.device), cols.flip(1), cols)
    b = torch.arange(batch, device=images.device)[:, None, None, None]
    c = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]
