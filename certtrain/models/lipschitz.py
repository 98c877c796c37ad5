"""Lipschitz-normed linear layers, GroupSort and the monotonic residual wrapper.

After Kitouni, Nolte & Williams, "Robust and Provably Monotonic Networks". A `LipschitzLinear`
is an `nn.Linear` whose `.weight` is the normalised weight, so anything that reads
`module.weight` (the bound engine, `lipschitz_bound`, state export) sees the constrained map.

Norm kinds (operator norms of W with shape (out, in)):
  one      l1 -> l1      largest column absolute sum (eq. 2.8 per column when vectorwise)
  inf      linf -> linf  largest row absolute sum
  one-inf  l1 -> linf    largest absolute entry
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from certtrain.models.layers import GroupSort, Normalize

__all__ = ["LipschitzLinear", "GroupSort", "MonotonicWrapper", "lipschitz_bound"]

log = logging.getLogger(__name__)

KINDS = ("one", "inf", "one-inf")
MODES = ("direct", "project")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; choose one of {KINDS}")


def _norm_terms(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The per-vector norms whose maximum is the operator norm, broadcastable to `weight`."""
    if kind == "one":
        return weight.abs().sum(dim=0, keepdim=True)  # one per input column
    if kind == "inf":
        return weight.abs().sum(dim=1, keepdim=True)  # one per output row
    return weight.abs()  # one-inf: every entry is its own "vector"


def operator_norm(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """Operator norm of a dense matrix (out, in) for the given kind."""
    _check_kind(kind)
    return _norm_terms(weight, kind).max()


def normalize_weight(weight: torch.Tensor, kind: str, max_norm: float, vectorwise: bool) -> torch.Tensor:
    """W / max(1, ||W|| / max_norm): eq. 2.7 on the whole matrix, or per column/row/entry (eq. 2.8).

    Vectors already inside the ball are left unchanged, so the constraint only binds where needed.
    """
    norms = _norm_terms(weight, kind)
    if not vectorwise:
        norms = norms.max()
    return weight / torch.clamp(norms / max_norm, min=1.0)


class _NormalizedWeight(nn.Module):
    """The parametrisation: maps the stored weight to its normalised version on every access."""

    def __init__(self, kind: str, max_norm: float, vectorwise: bool):
        super().__init__()
        self.kind, self.max_norm, self.vectorwise = kind, max_norm, vectorwise

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return normalize_weight(weight, self.kind, self.max_norm, self.vectorwise)


class LipschitzLinear(nn.Linear):
    """nn.Linear whose operator norm (of `kind`) is at most `max_norm`.

    mode="direct": the weight is a parametrisation, normalised in every forward pass so
    gradients flow through the normalisation (the paper's Algorithm 1); `.weight` returns the
    normalised matrix and `.parametrizations.weight.original` holds the free parameter.
    mode="project": `.weight` is a plain parameter; call `project_()` (or
    `attach_projection(optimizer, model)`) after each optimiser step to put it back in the ball.
    `freeze()` turns either mode into a plain layer that stores the normalised weight.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kind: str = "inf",
        max_norm: float = 1.0,
        vectorwise: bool = True,
        mode: str = "direct",
        bias: bool = True,
    ):
        _check_kind(kind)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        super().__init__(in_features, out_features, bias=bias)
        self.kind, self.max_norm, self.vectorwise, self.mode = kind, float(max_norm), vectorwise, mode
        if mode == "direct":
            parametrize.register_parametrization(self, "weight", _NormalizedWeight(kind, self.max_norm, vectorwise))
        else:
            self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        """Scale the stored weight back into the norm ball (no-op in direct mode)."""
        if self.mode == "project":
            self.weight.copy_(normalize_weight(self.weight, self.kind, self.max_norm, self.vectorwise))

    def freeze(self) -> None:
        """Store the normalised weight as a plain parameter (direct mode -> fixed layer)."""
        if parametrize.is_parametrized(self, "weight"):
            parametrize.remove_parametrizations(self, "weight", leave_parametrized=True)
        self.mode = "project"

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kind={self.kind}, max_norm={self.max_norm:g}, "
            f"vectorwise={self.vectorwise}, mode={self.mode}"
        )


def project_lipschitz_(model: nn.Module) -> None:
    """Project every project-mode LipschitzLinear in `model` back into its norm ball."""
    for module in model.modules():
        if isinstance(module, LipschitzLinear):
            module.project_()


def freeze_lipschitz_(model: nn.Module) -> nn.Module:
    """Freeze every LipschitzLinear of `model` for inference/export: the state_dict then holds the
    normalised weights under the plain nn.Linear keys ("weight", "bias")."""
    for module in model.modules():
        if isinstance(module, LipschitzLinear):
            module.freeze()
    return model


def attach_projection(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Run `project_lipschitz_(model)` after every `optimizer.step()`; returns the hook handle."""
    return optimizer.register_step_post_hook(lambda *_: project_lipschitz_(model))


class MonotonicWrapper(nn.Module):
    """f(x) = g(x) + lambda * sum_i s_i x_i with s_i in {+1, 0, -1} per input feature.

    If g is lambda-Lipschitz from l1 to its (scalar) output, every partial derivative of g lies in
    [-lambda, lambda], so f is non-decreasing in every +1 feature and non-increasing in every -1
    feature. The constraint on g is checked at construction against `lipschitz_bound(g, "one-inf")`.
    Works on (B, D) inputs; the residual term is added to every output of g.
    """

    def __init__(self, net: nn.Module, lipschitz_const: float, monotone: Sequence[int]):
        super().__init__()
        signs = torch.as_tensor(list(monotone), dtype=torch.float32)
        if signs.dim() != 1 or not torch.isin(signs, torch.tensor([-1.0, 0.0, 1.0])).all():
            raise ValueError(f"monotone must be a list of +1, 0 or -1 per input feature, got {list(monotone)}")
        if not lipschitz_const > 0:
            raise ValueError(f"lipschitz_const must be positive, got {lipschitz_const}")
        self.net = net
        self.lipschitz_const = float(lipschitz_const)
        self.register_buffer("monotone", signs)
        try:
            bound = lipschitz_bound(net, "one-inf")
        except ValueError:
            bound = math.inf
        if bound > self.lipschitz_const * (1 + 1e-5):
            log.warning(
                "MonotonicWrapper: the wrapped net's l1 Lipschitz bound %.4g exceeds lambda=%.4g, so "
                "monotonicity is not guaranteed; build it from LipschitzLinear layers with that budget",
                bound,
                self.lipschitz_const,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.monotone.numel():
            raise ValueError(
                f"MonotonicWrapper expects inputs of shape (B, {self.monotone.numel()}), got {tuple(x.shape)}"
            )
        residual = (x * self.monotone).sum(dim=1, keepdim=True) * self.lipschitz_const
        return self.net(x) + residual

    def extra_repr(self) -> str:
        return f"lipschitz_const={self.lipschitz_const:g}, monotone={self.monotone.int().tolist()}"


# Layers that are 1-Lipschitz in every l_p norm (permutations, ReLU, reshapes).
_ONE_LIPSCHITZ = (GroupSort, nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.Tanh)


def _layer_norms(module: nn.Module) -> list[dict[str, float]]:
    """Per-layer operator norms {kind: norm} in forward order (nested Sequentials flattened)."""
    if isinstance(module, nn.Sequential):
        return [n for child in module for n in _layer_norms(child)]
    if isinstance(module, MonotonicWrapper):
        raise ValueError("a MonotonicWrapper can only be the outermost module for lipschitz_bound")
    if isinstance(module, nn.Linear):
        weight = module.weight.detach()
        return [{kind: float(operator_norm(weight, kind)) for kind in KINDS}]
    if isinstance(module, Normalize):
        gain = float((1.0 / module.std).max())  # a diagonal scaling: every norm is its largest entry
        return [dict.fromkeys(KINDS, gain)]
    if isinstance(module, _ONE_LIPSCHITZ):
        return []
    raise ValueError(
        f"lipschitz_bound: no Lipschitz rule for layer {type(module).__name__}; use Linear/LipschitzLinear, "
        "GroupSort, ReLU, Flatten, Identity, Dropout or Normalize"
    )


def _chain_bound(norms: list[dict[str, float]], kind: str) -> float:
    if kind in ("one", "inf"):
        return math.prod(n[kind] for n in norms)
    # l1 -> linf: layers before the switch in l1, one layer l1 -> linf, the rest in linf; any
    # split point is sound (||x||_inf <= ||x||_1), so take the smallest product.
    if not norms:
        return 1.0
    best = math.prod(n["one"] for n in norms)  # switch after the last layer: ||.||_inf <= ||.||_1
    for k in range(len(norms)):
        before = math.prod(n["one"] for n in norms[:k])
        after = math.prod(n["inf"] for n in norms[k + 1 :])
        best = min(best, before * norms[k]["one-inf"] * after)
    return best


def lipschitz_bound(model: nn.Module, kind: str = "inf") -> float:
    """A certified Lipschitz constant of `model` (product of per-layer operator norms).

    kind: "one" (l1 -> l1), "inf" (linf -> linf) or "one-inf" (l1 -> linf). For a
    MonotonicWrapper (scalar output) the bound of its net plus lambda times the dual norm of the
    sign vector.
    """
    _check_kind(kind)
    if isinstance(model, MonotonicWrapper):
        signs = model.monotone
        dual = signs.abs().sum() if kind == "inf" else signs.abs().max()  # linf input -> l1 dual
        return lipschitz_bound(model.net, kind) + model.lipschitz_const * float(dual)
    return _chain_bound(_layer_norms(model), kind)
