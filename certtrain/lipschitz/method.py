"""`method=lipschitz`: what training and evaluation plug into their registries
(certtrain.losses.ROBUST_LOSSES, certtrain.evaluate.CERTIFIERS and METHOD_CERTIFIERS).

Loss: the margin-aware loss on the margins the Lipschitz bound certifies at eps_t
(certtrain.lipschitz.losses), with the method config's lipschitz_loss, temperature and
hinge_margin (their defaults live in certtrain.config.MethodConfig only).
Certifier: a sample counts as certified at eps if the Lipschitz certificate or any sound bound
method of the engine (IBP, CROWN-IBP) certifies it.
"""

from __future__ import annotations

import torch

from certtrain.lipschitz.certify import certify_any
from certtrain.lipschitz.losses import lipschitz_robust_loss

CERTIFIER_NAME = "lipschitz"


def robust_loss(ctx) -> torch.Tensor:
    """The robust term of method=lipschitz for a certtrain.losses.RobustContext."""
    options = ctx.method
    logits = ctx.model(ctx.x) if ctx.logits is None else ctx.logits
    return lipschitz_robust_loss(
        ctx.model,
        logits,
        ctx.y,
        ctx.eps,
        loss=str(options.lipschitz_loss),
        temperature=options.temperature,
        margin=options.hinge_margin,
        x=ctx.x,
    )


def certifier(model, x, y, eps, num_classes) -> torch.Tensor:
    return certify_any(model, x, y, eps, num_classes)
