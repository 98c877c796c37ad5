"""Plain cross-entropy training: no bounds, kappa stays 1."""

from __future__ import annotations

from dataclasses import dataclass

from certtrain.methods.record import Method, MethodConfig, register


@dataclass
class StandardConfig(MethodConfig):
    kappa_final: float = 1.0


STANDARD = register(Method("standard", StandardConfig, None, "CE(f(x), y) only", radii="local"))
