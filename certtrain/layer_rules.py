"""Which layers each part of certtrain handles, and the rule each part applies, in one table.

Three parts turn a layer into something they can reason about: the bound engine (the op whose
interval and backward rules it propagates, certtrain.bounds.graph), the exact verifier's MILP
encoding (certtrain.verify.network) and the Lipschitz bound (certtrain.lipschitz.bound). Each
part registers its rule per layer type here with `@rule(part, LayerType)` and finds it with
`rule_of(part, layer)`: the dispatch is this table, not a ladder of isinstance checks per part.
LAYER_RULES lists every layer type any of them handles, with an example instance and the parts
that accept it; tests/test_layer_rules.py checks that the registered rules are exactly the
table's, runs each part on each example, and checks that a part refuses a layer it lacks with an
error naming the layer. A new layer rule starts here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from certtrain.layers import GroupSort, Normalize

PARTS = ("bounds", "milp", "lipschitz")

# part -> layer type -> the part's rule for it (each part's module fills its own when imported).
_RULES: dict[str, dict[type, Callable]] = {part: {} for part in PARTS}


def rule(part: str, *layers: type) -> Callable[[Callable], Callable]:
    """Decorator: register the function as `part`'s rule for each of `layers`."""
    if part not in _RULES:
        raise ValueError(f"unknown part {part!r}; choose from {PARTS}")

    def register(function: Callable) -> Callable:
        for layer in layers:
            if layer in _RULES[part]:
                raise ValueError(f"two {part} rules for {layer.__name__}")
            _RULES[part][layer] = function
        return function

    return register


def rule_of(part: str, layer: nn.Module) -> Callable | None:
    """`part`'s rule for the layer, by its type's method resolution order (a subclass takes its
    base's rule unless it registers its own); None where the part has none."""
    rules = _RULES[part]
    return next((rules[cls] for cls in type(layer).__mro__ if cls in rules), None)


def registered(part: str) -> set[type]:
    """The layer types `part` has rules for (once the part's module is imported)."""
    return set(_RULES[part])


@dataclass(frozen=True)
class LayerRule:
    layer: type
    example: Callable[[], nn.Module]  # a small instance, in eval mode where that matters
    input_shape: tuple[int, ...]  # of one sample
    parts: frozenset  # the PARTS that handle it
    note: str = ""


def _rule(layer, example, input_shape, *parts, note=""):
    return LayerRule(layer, example, input_shape, frozenset(parts), note)


LAYER_RULES = (
    _rule(nn.Linear, lambda: nn.Linear(6, 4), (6,), "bounds", "milp", "lipschitz"),
    _rule(
        nn.Conv2d,
        lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1),
        (2, 6, 6),
        "bounds",
        "milp",
        note="the Lipschitz networks are dense",
    ),
    _rule(nn.ReLU, nn.ReLU, (6,), "bounds", "milp", "lipschitz"),
    _rule(nn.Flatten, nn.Flatten, (2, 3, 3), "bounds", "milp", "lipschitz"),
    _rule(nn.Identity, nn.Identity, (6,), "bounds", "milp", "lipschitz"),
    _rule(nn.Dropout, lambda: nn.Dropout(0.2).eval(), (6,), "bounds", "milp", "lipschitz"),
    _rule(Normalize, lambda: Normalize(0.5, 0.25), (1, 4, 4), "bounds", "milp", "lipschitz"),
    _rule(
        nn.BatchNorm2d,
        lambda: nn.BatchNorm2d(2).eval(),
        (2, 4, 4),
        "bounds",
        "milp",
        note="the Lipschitz bound has no rule for BatchNorm's data-dependent scale",
    ),
    _rule(nn.BatchNorm1d, lambda: nn.BatchNorm1d(6).eval(), (6,), "bounds", "milp"),
    _rule(
        nn.AvgPool2d,
        lambda: nn.AvgPool2d(2),
        (2, 4, 4),
        "bounds",
        "milp",
        note="the engine refuses padding; the MILP encodes it",
    ),
    _rule(
        nn.MaxPool2d,
        lambda: nn.MaxPool2d(2),
        (2, 4, 4),
        "bounds",
        "milp",
        note="the engine refuses dilation; the MILP encodes it",
    ),
    _rule(
        GroupSort,
        lambda: GroupSort(2),
        (6,),
        "bounds",
        "lipschitz",
        note="no MILP step: verify() cannot take GroupSort networks (input splitting can)",
    ),
    _rule(nn.Tanh, nn.Tanh, (6,), "lipschitz", note="1-Lipschitz; no bound or MILP rule"),
    _rule(nn.Unflatten, lambda: nn.Unflatten(1, (2, 3)), (6,), "milp", note="a reshape in the MILP only"),
)
