"""Lipschitz-normed linear layers (Kitouni, Nolte & Williams, "Robust and Provably Monotonic
Networks", eqs. 2.7 and 2.8).

A `LipschitzLinear` is an `nn.Linear` whose `.weight` is the normalised weight, so anything that
reads `module.weight` (the bound engine, `lipschitz_bound`, state export) sees the constrained map.

Norm kinds (operator norms of W with shape (out, in)):
  one      l1 -> l1      largest column absolute sum (eq. 2.8 per column when vectorwise)
  inf      linf -> linf  largest row absolute sum
  one-inf  l1 -> linf    largest absolute entry
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

KINDS = ("one", "inf", "one-inf")
MODES = ("direct", "project")
# How a layer's budget b = lambda^(1/m) enters (eq. 2.7 names two forms):
#   clip   W / max(1, ||W|| / b): weights inside the ball stay as they are (the second form)
#   scale  b W / max(1, ||W||): normalised to norm <= 1, then always multiplied by b (the first)
BUDGETS = ("clip", "scale")


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


def normalize_weight(
    weight: torch.Tensor, kind: str, max_norm: float, vectorwise: bool, budget: str = "clip"
) -> torch.Tensor:
    """Eq. 2.7 on the whole matrix, or per column / row / entry (eq. 2.8, vectorwise=True), with
    the budget max_norm entering as `budget` says (BUDGETS): clip W / max(1, ||W|| / max_norm),
    or scale max_norm W / max(1, ||W||). Either way the result has norm <= max_norm."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {BUDGETS}")
    norms = _norm_terms(weight, kind)
    if not vectorwise:
        norms = norms.max()
    if budget == "scale":
        return max_norm * weight / torch.clamp(norms, min=1.0)
    return weight / torch.clamp(norms / max_norm, min=1.0)


class _NormalizedWeight(nn.Module):
    """The parametrisation: maps the stored weight to its normalised version on every access."""

    def __init__(self, kind: str, max_norm: float, vectorwise: bool, budget: str):
        super().__init__()
        self.kind, self.max_norm, self.vectorwise, self.budget = kind, max_norm, vectorwise, budget

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return normalize_weight(weight, self.kind, self.max_norm, self.vectorwise, self.budget)


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
        budget: str = "clip",
    ):
        _check_kind(kind)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; choose one of {BUDGETS}")
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        super().__init__(in_features, out_features, bias=bias)
        self.kind, self.max_norm, self.vectorwise, self.mode = kind, float(max_norm), vectorwise, mode
        self.budget = budget
        if mode == "direct":
            parametrize.register_parametrization(
                self, "weight", _NormalizedWeight(kind, self.max_norm, vectorwise, budget)
            )
        else:
            self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        """Scale the stored weight back into the norm ball (no-op in direct mode)."""
        if self.mode == "project":
            self.weight.copy_(normalize_weight(self.weight, self.kind, self.max_norm, self.vectorwise, self.budget))

    def freeze(self) -> None:
        """Store the normalised weight as a plain parameter (direct mode -> fixed layer)."""
        if parametrize.is_parametrized(self, "weight"):
            parametrize.remove_parametrizations(self, "weight", leave_parametrized=True)
        self.mode = "project"

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kind={self.kind}, max_norm={self.max_norm:g}, "
            f"vectorwise={self.vectorwise}, mode={self.mode}, budget={self.budget}"
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
