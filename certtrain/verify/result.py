"""The answer for one sample, and the float64 check that a claimed adversarial input is real."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from certtrain.verify.perturbations import InputDomain

# robust / adversarial / misclassified are exact answers; timeout: a time limit ended the search;
# unresolved: the solver failed or its point did not survive the float64 check.
STATUSES = ("robust", "adversarial", "misclassified", "timeout", "unresolved")
RESOLVED = ("robust", "adversarial", "misclassified")


@dataclass
class VerificationResult:
    status: str
    adversarial: torch.Tensor | None = None  # verified witness, shape of x
    distortion: float | None = None  # min_distortion: size of the best witness found
    bound: float | None = None  # proved lower bound on the distortion
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # CPU time of this process (less sensitive to other load on the machine)
    predicted: int | None = None
    resolved_by: str = ""  # clean | pgd | ibp | crown | lp | mip | bab
    solve_seconds: float = 0.0  # time spent in HiGHS (tightening and final solves)
    witness_verified: bool = False
    stats: dict = field(default_factory=dict)  # unstable ReLUs per level, binaries, IBP/CROWN verdicts

    @property
    def resolved(self) -> bool:
        return self.status in RESOLVED


class FloatNetwork:
    """A float64 copy of the real network in eval mode, for checking witnesses."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).double().eval()

    @torch.no_grad()
    def logits(self, x_flat: np.ndarray, shape) -> np.ndarray:
        return self.model(torch.from_numpy(np.asarray(x_flat, dtype=np.float64).reshape(1, *shape)))[0].numpy()


def representable(domain: InputDomain, x_prime: np.ndarray, like: torch.Tensor) -> np.ndarray:
    """x' rounded to the dtype of the clean input, nudged by one ulp where rounding left the box.

    The returned float64 values are exactly representable in that dtype, so the tensor handed to
    the user is the point that was checked. Blurred witnesses stay in float64.
    """
    if not domain.is_box or like.dtype == torch.float64:
        return x_prime
    dtype = torch.empty(0, dtype=like.dtype).numpy().dtype
    rounded = x_prime.astype(dtype)
    high = rounded.astype(np.float64) > domain.box_upper
    rounded[high] = np.nextafter(rounded[high], dtype.type(-np.inf))
    low = rounded.astype(np.float64) < domain.box_lower
    rounded[low] = np.nextafter(rounded[low], dtype.type(np.inf))
    return rounded.astype(np.float64)


def as_tensor(x_flat: np.ndarray, shape, domain: InputDomain, like: torch.Tensor) -> torch.Tensor:
    dtype = like.dtype if domain.is_box else torch.float64
    return torch.from_numpy(np.asarray(x_flat, dtype=np.float64).reshape(1, *shape)).to(dtype)
