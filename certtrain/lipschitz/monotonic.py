"""Monotonic networks: f(x) = g(x) + sum_i lambda_i s_i x_i (Kitouni et al., eq. 2.5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from certtrain.lipschitz.bound import lipschitz_bound_tensor, partial_derivative_bounds

# Relative slack when comparing g's partial-derivative bounds with lambda (float rounding of the
# normalised weights).
BUDGET_SLACK = 1e-5


class MonotonicWrapper(nn.Module):
    """f(x) = g(x) + sum_i lambda_i s_i x_i with s_i in {+1, 0, -1} per input feature.

    Where |d g / d x_i| <= lambda_i, f is non-decreasing in every +1 feature and non-increasing
    in every -1 feature. The wrapper checks it at construction from
    `partial_derivative_bounds(g)` and raises ValueError otherwise: build g from LipschitzLinear
    layers within the budget (e.g. certtrain.lipschitz.zoo.lipschitz_stack). lambda may be one
    number or one per feature. Inputs (B, D); the residual is added to every output of g.

    Floating point: the guarantee is for exact arithmetic. In float32 the sum g(x) + lambda s x
    is rounded, so where |x| is large the rounding of the residual (about 6e-8 |lambda x|) can
    exceed the change of f between close inputs: measured decreases of up to 3e-3 at |x| near
    1000. Standardise the features (|x| of order 1), or evaluate in float64 where it matters.
    """

    def __init__(self, net: nn.Module, lipschitz_const: float | Sequence[float], monotone: Sequence[int]):
        super().__init__()
        signs = torch.as_tensor(list(monotone), dtype=torch.float32)
        if signs.dim() != 1 or not torch.isin(signs, torch.tensor([-1.0, 0.0, 1.0])).all():
            raise ValueError(f"monotone must be a list of +1, 0 or -1 per input feature, got {list(monotone)}")
        budget = torch.as_tensor(lipschitz_const, dtype=torch.float32).reshape(-1)
        if budget.numel() == 1:
            budget = budget.expand(signs.numel()).clone()
        if budget.numel() != signs.numel() or not (budget > 0).all():
            raise ValueError(
                f"lipschitz_const must be one positive number or one per feature ({signs.numel()}), "
                f"got {lipschitz_const}"
            )
        self.net = net
        self.register_buffer("monotone", signs)
        self.register_buffer("lambdas", budget)
        self.check_budget()

    def check_budget(self) -> None:
        """Raise unless |d g / d x_i| <= lambda_i for every monotone feature i (call it again
        after changing g's weights outside its normalisation)."""
        try:
            partials = partial_derivative_bounds(self.net, self.monotone.numel())
        except ValueError as err:
            raise ValueError(f"MonotonicWrapper: no Lipschitz bound for the wrapped net ({err})") from None
        over = (self.monotone != 0) & (partials > self.lambdas * (1 + BUDGET_SLACK))
        if over.any():
            i = int(over.nonzero()[0])
            raise ValueError(
                f"MonotonicWrapper: the wrapped net's partial derivative in feature {i} may reach "
                f"{float(partials[i]):.4g} > lambda={float(self.lambdas[i]):.4g} ({int(over.sum())} monotone "
                "features over budget), so monotonicity is not guaranteed; build it from LipschitzLinear layers "
                "within that budget (certtrain.lipschitz.zoo.lipschitz_stack) or raise lambda"
            )

    @property
    def lipschitz_const(self) -> float:
        return float(self.lambdas.max())

    def lipschitz_bound_tensor(self, kind: str) -> torch.Tensor:
        """The bound of g plus that of the residual: dual norm of the lambda_i s_i vector."""
        weights = (self.lambdas * self.monotone).abs()
        dual = weights.sum() if kind == "inf" else weights.max()  # linf input -> l1 dual
        return lipschitz_bound_tensor(self.net, kind) + dual

    def lipschitz_bound(self, kind: str) -> float:
        return float(self.lipschitz_bound_tensor(kind))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.monotone.numel():
            raise ValueError(
                f"MonotonicWrapper expects inputs of shape (B, {self.monotone.numel()}), got {tuple(x.shape)}"
            )
        residual = (x * (self.monotone * self.lambdas)).sum(dim=1, keepdim=True)
        return self.net(x) + residual

    def extra_repr(self) -> str:
        lam = self.lambdas.unique()
        shown = f"{float(lam[0]):g}" if lam.numel() == 1 else str(self.lambdas.tolist())
        return f"lipschitz_const={shown}, monotone={self.monotone.int().tolist()}"
