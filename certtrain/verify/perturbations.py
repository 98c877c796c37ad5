"""Perturbation families as sets of inputs x' = M z + m over decision variables z.

- `linf_ball`: x' in [x - eps, x + eps] intersected with [0, 1] (z = x').
- `unrestricted`: x' anywhere in [0, 1] (z = x').
- `blur`: x' = K * x, a (k x k) kernel per channel with non-negative entries summing to 1
  (z = the kernel entries; zero padding keeps the image size), optionally also within eps of x.

Each family also gives a box containing every x' (for interval / CROWN bounds), and turns a
solver's z into an input that lies exactly in the set (the witness the real network is run on).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

FAMILIES = ("linf", "unrestricted", "blur")
# Slack allowed when checking that a blurred witness stays within eps (renormalising the kernel
# in float64 moves pixels by rounding only).
BLUR_EPS_SLACK = 1e-9


@dataclass
class InputDomain:
    """x' = matrix @ z + offset with z in [var_lower, var_upper] and row_lower <= rows @ z <= row_upper."""

    name: str
    x: np.ndarray  # clean input, flat float64
    shape: tuple[int, ...]
    var_lower: np.ndarray
    var_upper: np.ndarray
    matrix: sp.csr_matrix
    offset: np.ndarray
    box_lower: np.ndarray  # sound box around every x' in the set
    box_upper: np.ndarray
    clean_vars: np.ndarray  # the z that gives x' = x
    eps: float | None = None
    rows: sp.csr_matrix | None = None
    row_lower: np.ndarray = field(default_factory=lambda: np.zeros(0))
    row_upper: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kernel_size: int | None = None

    @property
    def num_vars(self) -> int:
        return len(self.var_lower)

    @property
    def is_box(self) -> bool:
        return self.name in ("linf", "unrestricted", "box")

    def project_vars(self, z: np.ndarray) -> np.ndarray:
        """Move solver output (feasible up to tolerances) exactly into the set of variables."""
        z = np.clip(np.asarray(z, dtype=np.float64), self.var_lower, self.var_upper)
        if self.name == "blur":
            channels = self.shape[0]
            kernels = np.maximum(z.reshape(channels, -1), 0.0)
            sums = kernels.sum(axis=1, keepdims=True)
            z = (kernels / np.where(sums > 0, sums, 1.0)).reshape(-1)
        return z

    def input_of(self, z: np.ndarray) -> np.ndarray:
        """The flat float64 input x' for (projected) variables z."""
        return self.matrix @ self.project_vars(z) + self.offset

    def contains(self, x_prime: np.ndarray) -> bool:
        """Membership test for inputs built by `input_of` (blur kernels are valid by construction)."""
        if self.name == "blur":
            inside = bool(np.all(x_prime >= -BLUR_EPS_SLACK) and np.all(x_prime <= 1 + BLUR_EPS_SLACK))
            if self.eps is not None:
                inside &= bool(np.max(np.abs(x_prime - self.x), initial=0.0) <= self.eps + BLUR_EPS_SLACK)
            return inside
        return bool(np.all(x_prime >= self.box_lower) and np.all(x_prime <= self.box_upper))


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must lie in [0, 1] (pixel units), got {eps}")
    return eps


def _flat(x: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
    if x.dim() < 2 or x.shape[0] != 1:
        raise ValueError(f"x must be one sample with a batch dimension, shape (1, ...), got {tuple(x.shape)}")
    flat = x.detach().double().reshape(-1).numpy().copy()
    if flat.min(initial=0.0) < 0 or flat.max(initial=0.0) > 1:
        raise ValueError("x must lie in [0, 1] (pixel units); apply normalisation inside the model")
    return flat, tuple(x.shape[1:])


def _box_domain(name: str, x_flat: np.ndarray, shape, lower, upper, eps) -> InputDomain:
    n = len(x_flat)
    return InputDomain(
        name=name,
        x=x_flat,
        shape=shape,
        var_lower=lower,
        var_upper=upper,
        matrix=sp.identity(n, format="csr"),
        offset=np.zeros(n),
        box_lower=lower,
        box_upper=upper,
        clean_vars=x_flat.copy(),
        eps=eps,
    )


def _exact_ball(x_flat: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """[x - eps, x + eps] in float64, pulled in by an ulp where rounding made |x' - x| exceed eps."""
    lower, upper = x_flat - eps, x_flat + eps
    lower = np.where(x_flat - lower > eps, np.nextafter(lower, np.inf), lower)
    upper = np.where(upper - x_flat > eps, np.nextafter(upper, -np.inf), upper)
    return lower, upper


def linf_ball(x: torch.Tensor, eps: float) -> InputDomain:
    x_flat, shape = _flat(x)
    eps = _check_eps(eps)
    lower, upper = _exact_ball(x_flat, eps)
    return _box_domain("linf", x_flat, shape, np.maximum(lower, 0.0), np.minimum(upper, 1.0), eps)


def unrestricted(x: torch.Tensor) -> InputDomain:
    x_flat, shape = _flat(x)
    return _box_domain("unrestricted", x_flat, shape, np.zeros_like(x_flat), np.ones_like(x_flat), None)


def blur(x: torch.Tensor, kernel_size: int = 3, eps: float | None = None) -> InputDomain:
    """x' = per-channel convolution of x with a kernel in the simplex (zero padding, same size)."""
    x_flat, shape = _flat(x)
    if len(shape) != 3:
        raise ValueError(f"perturbation=blur needs image inputs (C, H, W), got {shape}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel_size must be odd and positive, got {kernel_size}")
    channels, height, width = shape
    image = torch.from_numpy(x_flat.reshape(channels, 1, height, width))
    patches = F.unfold(image, kernel_size, padding=kernel_size // 2).numpy()  # (C, k*k, H*W)
    taps = kernel_size * kernel_size
    rows = np.arange(channels)[:, None, None] * height * width + np.arange(height * width)[None, None, :]
    cols = np.arange(channels)[:, None, None] * taps + np.arange(taps)[None, :, None]
    rows, cols = np.broadcast_arrays(rows, cols)
    matrix = sp.csr_matrix((patches.ravel(), (rows.ravel(), cols.ravel())), shape=(len(x_flat), channels * taps))
    sums = sp.kron(sp.identity(channels), np.ones((1, taps)), format="csr")
    box_lower = patches.min(axis=1).reshape(-1)
    box_upper = patches.max(axis=1).reshape(-1)
    rows_m, row_lower, row_upper = sums, np.ones(channels), np.ones(channels)
    if eps is not None:
        eps = _check_eps(eps)
        box_lower = np.maximum(box_lower, x_flat - eps)
        box_upper = np.minimum(box_upper, x_flat + eps)
        rows_m = sp.vstack([sums, matrix], format="csr")
        row_lower = np.concatenate([row_lower, x_flat - eps])
        row_upper = np.concatenate([row_upper, x_flat + eps])
    identity = np.zeros((channels, taps))
    identity[:, taps // 2] = 1.0
    return InputDomain(
        name="blur",
        x=x_flat,
        shape=shape,
        var_lower=np.zeros(channels * taps),
        var_upper=np.ones(channels * taps),
        matrix=matrix,
        offset=np.zeros(len(x_flat)),
        box_lower=box_lower,
        box_upper=box_upper,
        clean_vars=identity.reshape(-1),
        eps=eps,
        rows=rows_m,
        row_lower=row_lower,
        row_upper=row_upper,
        kernel_size=kernel_size,
    )


def box(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> InputDomain:
    """Any input box [lower, upper] (e.g. a VNN-LIB property's, in the network's own units, not
    necessarily within [0, 1]); x: a point of it, shaped (1, ...) like both."""
    if x.dim() < 2 or x.shape[0] != 1 or lower.shape != x.shape or upper.shape != x.shape:
        raise ValueError(
            f"box: x, lower and upper must share the shape (1, ...), got {x.shape}, {lower.shape}, {upper.shape}"
        )
    x_flat = x.detach().double().reshape(-1).numpy().copy()
    lo = lower.detach().double().reshape(-1).numpy().copy()
    up = upper.detach().double().reshape(-1).numpy().copy()
    if np.any(lo > up) or np.any(x_flat < lo) or np.any(x_flat > up):
        raise ValueError("box: need lower <= x <= upper everywhere")
    return _box_domain("box", x_flat, tuple(x.shape[1:]), lo, up, None)


def make_domain(x: torch.Tensor, perturbation: str, eps: float | None, blur_kernel_size: int = 3) -> InputDomain:
    if perturbation == "linf":
        if eps is None:
            raise ValueError("perturbation=linf needs eps; use perturbation=unrestricted for the whole [0, 1] box")
        return linf_ball(x, eps)
    if perturbation == "unrestricted":
        return unrestricted(x)
    if perturbation == "blur":
        return blur(x, blur_kernel_size, eps)
    raise ValueError(f"unknown perturbation {perturbation!r}; choose one of {FAMILIES}")
