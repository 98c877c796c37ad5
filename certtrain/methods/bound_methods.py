"""IBP (Gowal et al. 2018), CROWN-IBP (Zhang et al. 2020) and their global, monotonically
decreasing versions GM-IBP and GM-CROWN-IBP (Liang et al. 2023).

L_rob = sum_i c_i CE(-m(x, r_i), y) with m = beta m_CROWN-IBP + (1 - beta) m_IBP at the radii
r_i = (i / N) eps_t; `ibp` and `crown_ibp` are the local losses (N = 1 whatever gm.n says),
`gm_ibp` and `gm_crown_ibp` take gm.n (default 4) and gm.weights (inverse: c_i ~ 1 / r_i).
"""

from __future__ import annotations

from dataclasses import dataclass

from certtrain.losses import RobustContext, global_robust_loss
from certtrain.methods.record import Method, MethodConfig, register


@dataclass
class IBPConfig(MethodConfig):
    beta_start: float = 0.0
    beta_final: float = 0.0


def ibp_loss(ctx: RobustContext):
    return global_robust_loss(ctx, beta=0.0)


def crown_ibp_loss(ctx: RobustContext):
    return global_robust_loss(ctx, beta=ctx.beta)


IBP = register(Method("ibp", IBPConfig, ibp_loss, "CE(-m_IBP(x, eps_t), y)", radii="local"))
GM_IBP = register(Method("gm_ibp", IBPConfig, ibp_loss, "sum_i c_i CE(-m_IBP(x, r_i), y)", radii="global"))
CROWN_IBP = register(
    Method(
        "crown_ibp",
        MethodConfig,
        crown_ibp_loss,
        "CE(-(beta m_CROWN-IBP + (1 - beta) m_IBP), y); the CROWN pass is skipped at beta = 0",
        radii="local",
        fusable=True,
    )
)
GM_CROWN_IBP = register(
    Method(
        "gm_crown_ibp",
        MethodConfig,
        crown_ibp_loss,
        "the GM loss over CROWN-IBP margins",
        radii="global",
        fusable=True,
    )
)
