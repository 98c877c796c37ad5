"""Kitouni et al.'s Lipschitz GroupSort networks (certtrain.lipschitz): the robust term is a
margin-aware loss on the margins the network's Lipschitz bound certifies at eps_t; evaluation
adds the `lipschitz` certifier (the Lipschitz bound or any sound bound of the engine)."""

from __future__ import annotations

from dataclasses import dataclass

from certtrain.choice import choice
from certtrain.errors import ConfigError
from certtrain.lipschitz import method as lipschitz_method
from certtrain.lipschitz.losses import LOSSES
from certtrain.lipschitz.zoo import LIPSCHITZ_ARCHITECTURES
from certtrain.methods.record import Method, MethodConfig, register

LipschitzLoss = choice("LipschitzLoss", LOSSES)


@dataclass
class LipschitzConfig(MethodConfig):
    kappa_final: float = 0.0
    beta_start: float = 0.0
    beta_final: float = 0.0
    # ce (cross-entropy with temperature) | hinge | dynamic_hinge (margin: half the distance to the other class)
    lipschitz_loss: LipschitzLoss = LipschitzLoss.ce
    temperature: float = 64.0  # ce: CE(T * margins) / T; margins of a 1-Lipschitz net are small
    hinge_margin: float = 0.1  # hinge: relu(hinge_margin - smallest certified margin)


def check(cfg) -> None:
    if cfg.method.temperature <= 0:
        raise ConfigError(f"method.temperature={cfg.method.temperature} must be positive")


LIPSCHITZ = register(
    Method(
        "lipschitz",
        LipschitzConfig,
        lipschitz_method.robust_loss,
        "CE(-T m_Lip(x, eps_t), y) / T, or a hinge on m_Lip, from the network's Lipschitz bound",
        models=tuple(LIPSCHITZ_ARCHITECTURES),
        certifiers=(lipschitz_method.CERTIFIER_NAME,),
        radii="local",
        check=check,
    )
)
