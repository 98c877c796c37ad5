"""What a training method is, as one record, and the registry that holds the records.

A method is its config (the dataclass that types conf/method/<name>.yaml), its robust loss, the
architectures it accepts, the certifiers it brings, and the checks its keys need beyond their
types. Training, evaluation and `check_config` read nothing about a method but its record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from certtrain.losses import RobustContext, RobustLoss


@dataclass
class MethodConfig:
    """The keys every method has; a method's own config subclasses it."""

    name: str = "crown_ibp"  # a key of certtrain.methods.METHODS
    kappa_final: float = 0.5  # weight of the clean CE at the end of the ramp (starts at 1)
    beta_start: float = 1.0  # CROWN-IBP mixing: beta * CROWN-IBP + (1 - beta) * IBP bounds
    beta_final: float = 0.0
    # Bound the CE itself from one backward row per sample (certtrain.bounds.fusion); only the
    # methods with a CROWN backward pass (record.fusable) accept true.
    loss_fusion: bool = False


@dataclass(frozen=True)
class Method:
    name: str
    # A MethodConfig subclass (or MethodConfig itself): the keys and defaults of method.*; several
    # records may share one (the record sets `name`, see defaults and schema).
    config: type
    loss: RobustLoss | None  # None: trains without bounds (kappa stays 1)
    summary: str  # one line for `--help`-style listings and the README table
    # Architectures it trains; None: every architecture of the zoo.
    models: tuple[str, ...] | None = None
    certifiers: tuple[str, ...] = ()  # added to every evaluation of its runs
    # Radii of its robust loss: "local" (one radius eps_t, whatever gm.n says), "global" (gm.n,
    # default GLOBAL_RADII), "any" (gm.n, default 1: `gm.n=4` makes it a global loss).
    radii: str = "any"
    # Checks of its own keys beyond their types: raise ConfigError naming the fix.
    check: Callable[[Any], None] | None = None
    # A term added to the whole loss (not weighted by kappa), e.g. an l1 weight penalty.
    penalty: Callable[[torch.nn.Module, Any], torch.Tensor | None] | None = None
    fusable: bool = False  # method.loss_fusion=true is allowed (it has a CROWN backward pass)
    # Certifiers of the final evaluation when eval.final_bounds is not set (added to eval.bounds).
    final_certifiers: tuple[str, ...] = ()

    def defaults(self, **overrides) -> MethodConfig:
        """Its config with every default (and `overrides`), named by this record."""
        return self.config(**{"name": self.name, **overrides})

    def schema(self) -> DictConfig:
        """The typed node that conf/method/<name>.yaml and structured_config start from."""
        return OmegaConf.structured(self.defaults())

    def robust_loss(self, ctx: RobustContext) -> torch.Tensor:
        """L_rob of this method at the context's radius, over the radii its `radii` rule allows."""
        return self.loss(replace(ctx, gm_n=self.gm_n(ctx.gm_n)))

    def gm_n(self, requested: int | None) -> int:
        """The number of radii a run of this method trains at, for the run's `gm.n` (None: default)."""
        if self.radii == "local":
            return 1
        if requested is None:
            return GLOBAL_RADII if self.radii == "global" else 1
        return requested


GLOBAL_RADII = 4  # gm.n of the GM methods when it is not set (Liang et al.'s N = 4)

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    if not issubclass(method.config, MethodConfig):
        raise TypeError(f"method {method.name!r}: its config must subclass MethodConfig")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
