"""certtrain.models: the normalisation a model of each dataset uses."""

from __future__ import annotations

import pytest

from certtrain.models.zoo import stats_dataset


def test_one_rule_names_the_normalisation_of_a_dataset():
    assert stats_dataset("mnist5k") == "mnist" and stats_dataset("cifar10") == "cifar10"
    with pytest.raises(ValueError, match="no image normalisation for dataset 'adult'"):
        stats_dataset("adult")
