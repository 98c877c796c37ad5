"""The expressive losses of De Palma et al. (2024): a convex combination, in three forms, of
the IBP loss over the eps box and the adversarial loss at an attack point.

Per sample at radius r, with m the margins f_y - f_j (j != y), m_IBP their IBP lower bounds
over B(x, r) clipped to [0, 1], and x_adv a PGD point in the box of radius
`attack_eps_factor` * r:
  mtl_ibp  alpha L_IBP + (1 - alpha) CE(f(x_adv), y)
  cc_ibp   CE(-(alpha m_IBP + (1 - alpha) m(x_adv)), y)
  exp_ibp  L_IBP^alpha L_adv^(1 - alpha)
alpha = 1 is exactly IBP (the attack is then skipped). Their alphas: MNIST 0.1: MTL 0.01,
CC 0.1; MNIST 0.3: MTL 0.08, CC 0.3; CIFAR-10 2/255: MTL 0.004, CC 0.01, EXP 0.095; CIFAR-10
8/255: 0.5. With gm.n > 1 the radii are r_i = (i / N) eps_t (GM over the expressive loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from certtrain.attacks import training_attack
from certtrain.bounds import other_classes
from certtrain.errors import ConfigError
from certtrain.losses import RobustContext, gm_loss, input_box, margin_lower_bounds, robust_cross_entropy
from certtrain.methods.attack_options import AttackMethodConfig, check_attack, l1_penalty
from certtrain.methods.record import Method, register

# A loss this small is a saturated CE; the product form takes its log.
EXP_FLOOR = 1e-12


@dataclass
class ExpressiveConfig(AttackMethodConfig):
    alpha: float = 0.5  # weight of the IBP part (1: IBP)
    attack_eps_factor: float = 1.0  # the attack's radius as a factor of the training radius


def attack_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """m(x_adv): f_y - f_j for j != y in increasing j, as the bound engine orders its margins."""
    others = other_classes(y, logits.shape[1])
    return logits.gather(1, y[:, None]) - logits.gather(1, others)


# form -> per-sample loss from (alpha, IBP margin bounds, logits at the attack point, labels)
Combine = Callable[[float, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def mtl(alpha: float, m_ibp: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return alpha * robust_cross_entropy(m_ibp, y) + (1 - alpha) * F.cross_entropy(logits_adv, y, reduction="none")


def cc(alpha: float, m_ibp: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return robust_cross_entropy(alpha * m_ibp + (1 - alpha) * attack_margins(logits_adv, y), y)


def exp(alpha: float, m_ibp: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    ibp = robust_cross_entropy(m_ibp, y).clamp_min(EXP_FLOOR)
    adv = F.cross_entropy(logits_adv, y, reduction="none").clamp_min(EXP_FLOOR)
    return torch.exp(alpha * ibp.log() + (1 - alpha) * adv.log())


def expressive_loss(combine: Combine) -> Callable[[RobustContext], torch.Tensor]:
    """The robust loss of one form: IBP over the box and `combine` with the attack point."""

    def loss(ctx: RobustContext) -> torch.Tensor:
        options = ctx.method
        alpha = float(options.alpha)

        def per_sample(x: torch.Tensor, radius: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            lower, upper = input_box(x, radius)
            m_ibp = margin_lower_bounds(ctx.model, ctx.x, y, lower, upper, 0.0, ctx.num_classes)
            if alpha >= 1.0:
                return robust_cross_entropy(m_ibp, y)
            attack_radius = options.attack_eps_factor * radius
            attack_lower, attack_upper = input_box(x, attack_radius)
            x_adv = training_attack(ctx.model, x, y, attack_lower, attack_upper, attack_radius, options.attack_steps)
            return combine(alpha, m_ibp, ctx.model(x_adv), y)

        return gm_loss(ctx, per_sample)

    return loss


def check(cfg) -> None:
    check_attack(cfg)
    if not 0.0 <= cfg.method.alpha <= 1.0:
        raise ConfigError(f"method.alpha={cfg.method.alpha} must lie in [0, 1] (1: IBP, 0: adversarial training)")
    if cfg.method.attack_eps_factor <= 0:
        raise ConfigError(
            f"method.attack_eps_factor={cfg.method.attack_eps_factor} must be positive "
            "(the attack's radius as a factor of eps_t; 1 is usual)"
        )


FORMS = {
    "mtl_ibp": (mtl, "alpha L_IBP + (1 - alpha) CE(f(x_adv), y) (De Palma et al. 2024)"),
    "cc_ibp": (cc, "CE(-(alpha m_IBP + (1 - alpha) m(x_adv)), y) (De Palma et al. 2024)"),
    "exp_ibp": (exp, "L_IBP^alpha L_adv^(1 - alpha) (De Palma et al. 2024)"),
}
for _name, (_combine, _summary) in FORMS.items():
    register(
        Method(
            _name,
            ExpressiveConfig,
            expressive_loss(_combine),
            _summary,
            check=check,
            penalty=l1_penalty,
            final_certifiers=("crown-ibp",),
        )
    )
