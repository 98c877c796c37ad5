"""certtrain/layer_rules.py: every part handles exactly the layers the table gives it, and
names a layer it lacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certtrain.bounds import UnsupportedLayerError
from certtrain.bounds.graph import build_ops
from certtrain.layer_rules import LAYER_RULES, PARTS, registered, rule
from certtrain.lipschitz import lipschitz_bound
from certtrain.verify.network import UnsupportedNetworkError, network_steps


def _bounds(model, shape):
    build_ops(model, None, torch.rand(1, *shape))


def _milp(model, shape):
    network_steps(model, shape)


def _lipschitz(model, shape):
    lipschitz_bound(model, "inf")


CHECKS = {
    "bounds": (_bounds, UnsupportedLayerError),
    "milp": (_milp, UnsupportedNetworkError),
    "lipschitz": (_lipschitz, ValueError),
}


def test_the_table_lists_each_layer_type_once_and_only_known_parts():
    layers = [rule.layer for rule in LAYER_RULES]
    assert len(layers) == len(set(layers))
    assert all(rule.parts <= set(PARTS) and rule.parts for rule in LAYER_RULES)
    assert set(CHECKS) == set(PARTS)


@pytest.mark.parametrize("part", PARTS)
def test_the_rules_each_part_registered_are_the_tables(part):
    # the parts' modules are imported above, so every rule they hold is registered
    assert registered(part) == {r.layer for r in LAYER_RULES if part in r.parts}


def test_a_second_rule_for_a_layer_is_refused():
    with pytest.raises(ValueError, match="two bounds rules for Linear"):
        rule("bounds", nn.Linear)(lambda index, layer, layer_input: None)
    with pytest.raises(ValueError, match="unknown part"):
        rule("onnx", nn.Linear)


@pytest.mark.parametrize("rule", LAYER_RULES, ids=lambda rule: rule.layer.__name__)
@pytest.mark.parametrize("part", PARTS)
def test_each_part_handles_what_the_table_says_and_names_what_it_lacks(rule, part):
    # a Flatten after it (every part handles Flatten): the engine needs one layer that is not an identity
    model = nn.Sequential(rule.example(), nn.Flatten()).eval()
    check, error = CHECKS[part]
    if part in rule.parts:
        check(model, rule.input_shape)
    else:
        with pytest.raises(error, match=rule.layer.__name__):
            check(model, rule.input_shape)
