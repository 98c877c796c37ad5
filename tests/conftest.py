"""Shared test helpers: where ../shared lives (skipping when it is absent), and a tiny MNIST."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

# The tests push small tensors, where a second OpenMP thread costs more than it gives: on a busy
# 2-core machine one soundness test took 0.5 s with one thread and 39 s with two.
torch.set_num_threads(1)
# The eager kernels: compiling costs seconds per process and these tensors are small.
# tests/test_bounds_kernels.py checks that the compiled kernels equal the eager ones.
os.environ.setdefault("CERTTRAIN_COMPILE", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is missing; a failure
    instead where CERTTRAIN_REQUIRE_SHARED=1 (CI, where ../shared is there: the reference checks
    must not pass by skipping)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"{path} is absent: these checks need the shared data/models/fixtures beside the repo"
        if os.environ.get("CERTTRAIN_REQUIRE_SHARED") == "1":
            pytest.fail(reason + " (CERTTRAIN_REQUIRE_SHARED=1)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny MNIST in the standard layout: MNIST/raw/*-ubyte.gz (random pixels, random labels)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 256, (n, 28, 28))),
            ("labels-idx1", rng.integers(0, 10, n)),
        ):
            path = root / "MNIST" / "raw" / f"{prefix}-{kind}-ubyte.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return root
