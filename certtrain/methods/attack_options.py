"""Keys and checks shared by the methods that train on an attack point (SABR, MTL-IBP and kin)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from certtrain.errors import ConfigError
from certtrain.methods.record import MethodConfig


@dataclass
class AttackMethodConfig(MethodConfig):
    kappa_final: float = 0.0  # the attack term carries the clean accuracy: no plain CE at the end
    beta_start: float = 0.0
    beta_final: float = 0.0
    attack_steps: int = 8  # PGD steps of the training attack (certtrain.attacks.training_attack)
    l1: float = 0.0  # weight of the l1 penalty sum |W| over the Linear and Conv2d weights


def check_attack(cfg) -> None:
    if cfg.method.attack_steps < 1:
        raise ConfigError(
            f"method.attack_steps={cfg.method.attack_steps}: method={cfg.method.name} trains on an "
            "attack point and needs at least one step, use method.attack_steps >= 1 (8 is usual)"
        )
    if cfg.method.l1 < 0:
        raise ConfigError(f"method.l1={cfg.method.l1} must be >= 0 (0 switches the l1 penalty off)")


def l1_penalty(model: nn.Module, options) -> torch.Tensor | None:
    """options.l1 * sum |W| over the weights of the affine layers (None when the weight is 0)."""
    if options.l1 <= 0:
        return None
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return options.l1 * sum(w.abs().sum() for w in weights)
