"""Shared test helpers: where ../shared lives, and skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The tests push small tensors, where a second OpenMP thread costs more than it gives: on a busy
# 2-core machine one soundness test took 0.5 s with one thread and 39 s with two.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these checks need the shared data/models/fixtures beside the repo")
    return path
