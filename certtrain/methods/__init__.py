"""Training methods, one record each (certtrain.methods.record.Method), one module per family.

    from certtrain.methods import METHODS, get_method, training_loss
    loss, parts = training_loss("sabr", ctx, kappa=0.0)

Adding a method: one module here that builds its config dataclass, its robust loss and its
record, registered with `register(Method(...))` and imported below; then conf/method/<name>.yaml
selects its schema (README, "Adding a method").
"""

from __future__ import annotations

import torch

from certtrain import losses
from certtrain.losses import RobustContext
from certtrain.methods import bound_methods, expressive, lipschitz, sabr, standard  # noqa: F401  (registers)
from certtrain.methods.record import GLOBAL_RADII, METHODS, Method, MethodConfig, get_method, register

__all__ = ["GLOBAL_RADII", "METHODS", "Method", "MethodConfig", "get_method", "register", "training_loss"]


def training_loss(
    method: str | Method, ctx: RobustContext, kappa: float, logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """kappa * CE(f(x), y) + (1 - kappa) * L_rob (+ the method's penalty) for a method by name or
    record; ctx.gm_n is read through the record (a local method trains at one radius)."""
    record = get_method(method) if isinstance(method, str) else method
    loss, parts = losses.training_loss(record.robust_loss if record.loss else None, ctx, kappa, logits)
    if record.penalty is not None:
        penalty = record.penalty(ctx.model, ctx.method)
        if penalty is not None:
            loss = loss + penalty
            parts["penalty"] = penalty.detach()
    return loss, parts
