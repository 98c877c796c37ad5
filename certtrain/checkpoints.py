"""Checkpoints that hold everything a resumed run needs to continue bit for bit (same seed, CPU).

Saved: model and optimiser state, the schedule position (epochs done, global step), the RNG
states (global torch, the data-order and radius-draw generators, CUDA), the wall time so far, the
architecture (a checkpoint from another model is refused with a clear message), the run's full
resolved config and a content hash of the weights (verify.py run=<folder> reads both: what to
verify, and whether the network changed since an earlier verification). Files are
written atomically (certtrain.atomic), so a crash mid-write keeps the previous checkpoint.
Loaded with weights_only=True: only tensors and plain containers, no pickled code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from certtrain.atomic import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint does not fit this run; the message names the fix."""


def weights_hash(state_dict: dict) -> str:
    """sha256 over the parameter and buffer names, dtypes, shapes and bytes (CPU, contiguous)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: Path,
    *,
    model,
    optimizer,
    epoch,
    step,
    data_generator,
    seconds,
    arch,
    radius_generator=None,
    config: dict | None = None,
) -> None:
    weights = model.state_dict()
    state = {
        "model": weights,
        "weights_sha256": weights_hash(weights),
        "config": config,
        "optimizer": optimizer.state_dict(),
        "schedule": {"epoch": epoch, "step": step},
        "rng": {
            "torch": torch.get_rng_state(),
            "data": data_generator.get_state(),
            "radius": radius_generator.get_state() if radius_generator is not None else None,
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "seconds": seconds,
        "arch": dict(arch),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_state(path: Path, error: type[Exception], advice: str):
    """What torch saved in `path` (a checkpoint or a state_dict), loaded on the CPU with tensors
    only; `error` naming the file, the cause and `advice` when it is missing or unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{path} not found; {advice}") from None
    except Exception as err:
        raise error(f"cannot read {path} ({type(err).__name__}: {err}); {advice}") from err


def load_checkpoint(path: Path, *, model: nn.Module, optimizer, data_generator, arch, radius_generator=None) -> dict:
    """Restore model, optimiser and RNG states in place; returns {"epoch", "step", "seconds"}."""
    state = read_state(path, CheckpointError, "delete it or run without resume=true to start afresh")
    saved_arch = state.get("arch", {})
    if saved_arch != dict(arch):
        raise CheckpointError(
            f"checkpoint {path} was saved by {saved_arch} but this run is {dict(arch)}; "
            "resume with the same model and dataset, or start a new run without resume=true"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model {arch.get('model')} ({str(err).splitlines()[0]}); "
            "it comes from another architecture: start a new run without resume=true"
        ) from err
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    data_generator.set_state(state["rng"]["data"])
    if radius_generator is not None and state["rng"].get("radius") is not None:
        radius_generator.set_state(state["rng"]["radius"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return {"epoch": state["schedule"]["epoch"], "step": state["schedule"]["step"], "seconds": state["seconds"]}
