"""Every method x model x dataset composes and passes the config checks.

Its own module: the Hydra context below is module-scoped, and must not outlive these tests
(other tests initialise Hydra themselves).
"""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir

from certtrain.config import ConfigError, check_config, register_configs
from certtrain.methods import get_method
from tests.test_config import CONF, DATASETS, METHODS, MODELS


@pytest.fixture(scope="module")
def hydra_context():
    """One Hydra initialisation for the many compositions of the combination test."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


@pytest.mark.slow  # 120 compositions, about a minute in all
@pytest.mark.parametrize("method,model,dataset", list(itertools.product(METHODS, MODELS, DATASETS)))
def test_every_combination_composes_and_checks(hydra_context, method, model, dataset):
    cfg = compose(config_name="config", overrides=[f"method={method}", f"model={model}", f"dataset={dataset}"])
    fits = get_method(method).models
    if fits is not None and model not in fits:  # the record refuses it, naming the models that fit
        with pytest.raises(ConfigError, match=f"method={method} trains only model={fits[0]}"):
            check_config(cfg)
    else:
        check_config(cfg)
    assert (cfg.method.name, cfg.model.name, cfg.dataset.name) == (method, model, dataset)
