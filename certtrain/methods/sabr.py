"""SABR (Mueller et al. 2023): IBP over a small box inside the eps box, placed at an attack point.

Per sample at radius r: x_adv = PGD over the eps box B(x, r) clipped to [0, 1]; then the IBP
worst-case CE over the box of radius lambda r centred at x_adv, the centre clamped so that the
small box lies inside the eps box (where the clipped eps box is narrower than 2 lambda r, the
small box is that whole side). lambda = 1 is exactly IBP. With gm.n > 1 the radii are
r_i = (i / N) eps_t: GM-SABR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from certtrain.attacks import training_attack
from certtrain.errors import ConfigError
from certtrain.losses import RobustContext, gm_loss, input_box, robust_ce_per_sample
from certtrain.methods.attack_options import AttackMethodConfig, check_attack, l1_penalty
from certtrain.methods.record import Method, register


@dataclass
class SabrConfig(AttackMethodConfig):
    # lambda: the small box's radius as a fraction of the radius (their values: 0.4 MNIST 0.1,
    # 0.6 MNIST 0.3, 0.1 CIFAR-10 2/255, 0.7 CIFAR-10 8/255)
    small_box: float = 0.4


def small_box(
    x_adv: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, half_width: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The box of half-width `half_width` around x_adv, moved (then cut) to lie inside [lower, upper]."""
    centre = torch.minimum(torch.maximum(x_adv, lower + half_width), upper - half_width)
    return torch.maximum(centre - half_width, lower), torch.minimum(centre + half_width, upper)


def sabr_loss(ctx: RobustContext) -> torch.Tensor:
    options = ctx.method

    def per_sample(x: torch.Tensor, radius: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lower, upper = input_box(x, radius)
        x_adv = training_attack(ctx.model, x, y, lower, upper, radius, options.attack_steps)
        box_lower, box_upper = small_box(x_adv, lower, upper, options.small_box * radius)
        return robust_ce_per_sample(ctx.model, ctx.x, y, box_lower, box_upper, 0.0, ctx.num_classes)

    return gm_loss(ctx, per_sample)


def check(cfg) -> None:
    check_attack(cfg)
    if not 0.0 < cfg.method.small_box <= 1.0:
        raise ConfigError(
            f"method.small_box={cfg.method.small_box}: lambda, the small box's share of the radius, "
            "must lie in (0, 1] (1 is IBP; SABR's values are 0.1-0.7)"
        )


SABR = register(
    Method(
        "sabr",
        SabrConfig,
        sabr_loss,
        "IBP over a box of radius lambda eps_t at a PGD point (Mueller et al. 2023)",
        check=check,
        penalty=l1_penalty,
        final_certifiers=("crown-ibp",),
    )
)
