"""Config composition: every method x model x dataset, typed-schema rejections, range checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from certtrain.config import ConfigError, check_config, eval_grid, register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_config(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_groups_list_every_published_choice():
    assert set(METHODS) == {
        "standard",
        "ibp",
        "crown_ibp",
        "gm_ibp",
        "gm_crown_ibp",
        "lipschitz",
        "sabr",
        "mtl_ibp",
        "cc_ibp",
        "exp_ibp",
    }
    assert set(MODELS) == {
        "mlp",
        "dm_small",
        "dm_medium",
        "dm_large",
        "cnn7",
        "wk17a",
        "rsl18a",
        "lipschitz_mlp",
        "lipschitz_mlp_large",
    }
    assert {"mnist", "fashion_mnist", "cifar10", "mnist5k"} <= set(DATASETS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment):
    cfg = compose_config(f"experiment={experiment}")
    check_config(cfg)
    assert (CONF / "experiment" / f"{experiment}.yaml").read_text().startswith("# @package _global_")


def test_contract_keys_exist():
    cfg = compose_config()
    for key in ("eps", "epochs", "batch_size", "lr", "seed", "device", "data_dir", "resume"):
        assert key in cfg
    assert cfg.dataset.name == "mnist5k"  # the offline default
    assert {"train_size", "test_size"} <= set(cfg.dataset)
    assert {"eps_grid", "every"} <= set(cfg.eval)
    assert {"n", "weights"} <= set(cfg.gm)


def test_data_dir_follows_environment_variable(monkeypatch):
    monkeypatch.setenv("CERTTRAIN_DATA_DIR", "/somewhere/data")
    assert compose_config().data_dir == "/somewhere/data"
    monkeypatch.delenv("CERTTRAIN_DATA_DIR")
    assert compose_config().data_dir == "data"


@pytest.mark.parametrize("override", ["eps=abc", "epochs=1.5", "gm.n=two", "resume=maybe", "dataset.train_size=x"])
def test_wrong_types_are_rejected(override):
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_config(override)


@pytest.mark.parametrize(
    "override",
    [
        "gm.weights=harmonic",
        "device=tpu",
        "gm.estimator=importance",
        "schedule.ramp_shape=cosine",
        "dataset.name=svhn",
        "method=lipschitz method.lipschitz_loss=l2",
    ],
)
def test_closed_choices_fail_at_composition_naming_the_choices(override):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(*override.split())
    assert "expected one of" in str(err.value.__cause__ or err.value)


@pytest.mark.parametrize("override", ["epoch=3", "method.kapa_final=0.2", "gm.radii=3"])
def test_unknown_keys_are_rejected(override):
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_config(override)


@pytest.mark.parametrize("override", ["+epoch=3", "+method.kapa_final=0.2"])
def test_keys_forced_in_with_plus_are_rejected_before_training(override):
    cfg = compose_config(override)  # Hydra lets `+` add any key ...
    with pytest.raises(ConfigError, match="unknown config key"):  # ... the check does not
        check_config(cfg)


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("eps=-0.1", "eps >= 0"),
        ("gm.n=0", "gm.n >= 1"),
        ("eval.eps_grid=[]", "eval.eps_grid is empty"),
        ("method.kappa_final=1.5", "kappa_final"),
        ("eval.bounds=[ibp,deepz]", "eval.bounds"),
        ("dataset.test_size=0", "dataset.test_size=0 must be at least 1"),
        ("dataset.train_size=0", "dataset.train_size=0 must be at least 1"),
        ("dataset.train_size=-3900", "dataset.train_size=-3900 must be at least 1"),
        ("eval.subset=0", "eval.subset=0 must be at least 1"),
        ("log_every=0", "log_every=0 must be at least 1"),
        ("eps=2", "divide by 255"),
        ("eps_train=8", "eps_train=0.031"),
    ],
)
def test_out_of_range_values_name_the_fix(override, fragment):
    cfg = compose_config(override)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        check_config(cfg)


def test_default_grid_reaches_beyond_eps_train():
    cfg = compose_config("eps=0.1", "eps_train=0.2")
    grid = eval_grid(cfg)
    assert 0.1 in grid and 0.2 in grid
    assert max(grid) > 0.2
    cfg = compose_config("eval.eps_grid=[0.3,0.1,0.1]")
    assert eval_grid(cfg) == [0.1, 0.3]


def test_the_schema_is_the_one_source_of_defaults(monkeypatch):
    # train(None) builds TrainConfig(); it must be the run `python train.py` composes.
    from omegaconf import OmegaConf

    from certtrain.config import TrainConfig, structured_config

    monkeypatch.delenv("CERTTRAIN_DATA_DIR", raising=False)
    composed = OmegaConf.to_container(compose_config(), resolve=True)
    composed.pop("hydra", None)
    assert composed == OmegaConf.to_container(structured_config(), resolve=True)
    assert structured_config().method.name == TrainConfig().method.name
