"""Floating-point modes for certificates and for training bounds.

On Ampere and newer GPUs PyTorch may run float32 matmuls and cuDNN convolutions in TF32 (10-bit
mantissa, about 1e-3 relative error) and reduce fp16/bf16 matmuls in reduced precision. A bound
computed that way can miss the true bound by more than the engine's FLOAT32_SLACK (1e-4), so a
certificate could be unsound. Every certifier runs inside `strict_fp32()`. Training bounds
certify nothing, so TF32 there costs no soundness, only some tightness of the training signal:
`allow_tf32()` is what `train_tf32=true` turns on for the training steps.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch

_FLAGS = (
    (torch.backends.cuda.matmul, "allow_tf32"),
    (torch.backends.cudnn, "allow_tf32"),
    (torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction"),
    (torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction"),
)


def _state() -> tuple:
    return tuple(getattr(owner, name) for owner, name in _FLAGS) + (torch.get_float32_matmul_precision(),)


def _restore(state: tuple) -> None:
    for (owner, name), value in zip(_FLAGS, state[:-1]):
        setattr(owner, name, value)
    torch.set_float32_matmul_precision(state[-1])


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """IEEE float32 everywhere (no TF32, no reduced-precision reductions); the caller's settings
    are restored on exit, also after an exception."""
    saved = _state()
    try:
        for owner, name in _FLAGS:
            setattr(owner, name, False)
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        _restore(saved)


@contextlib.contextmanager
def allow_tf32(enabled: bool = True) -> Iterator[None]:
    """TF32 matmuls and convolutions for training steps when `enabled`; restored on exit."""
    if not enabled:
        yield
        return
    saved = _state()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        yield
    finally:
        _restore(saved)


def is_strict() -> bool:
    """Whether the current mode is strict float32 (what every certifier asserts it runs in)."""
    return not any(getattr(owner, name) for owner, name in _FLAGS) and torch.get_float32_matmul_precision() == "highest"


def certifier(fn):
    """Run `fn` inside strict_fp32(): the decorator of every function that decides certificates."""

    @functools.wraps(fn)
    def strict(*args, **kwargs):
        with strict_fp32():
            return fn(*args, **kwargs)

    return strict
