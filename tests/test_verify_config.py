"""verify.py's config sets verify() through one mapping onto VerifyOptions, whose defaults it shares."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from certtrain.bab import BabOptions
from certtrain.verify import VerifyOptions
from certtrain.verify.encoding import SolverOptions
from certtrain.verify_app.config import BAB_KEYS, VerifyConfig, options_from_config


def config(**overrides):
    cfg = OmegaConf.structured(VerifyConfig)
    cfg.merge_with(OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    return cfg


def test_the_default_config_gives_the_default_options():
    assert options_from_config(config(), 0.1) == VerifyOptions(eps=0.1)


# (command-line key, a value other than its default, the option it must set, that value as the option holds it)
KEYS = [
    ("objective", "min_distortion", "objective", "min_distortion"),
    ("norm", "l1", "norm", "l1"),
    ("perturbation", "unrestricted", "perturbation", "unrestricted"),
    ("blur_kernel_size", 5, "blur_kernel_size", 5),
    ("targets", "[3,4]", "targets", (3, 4)),
    ("tightening", "mip", "tightening", "mip"),
    ("time_limit", 7.5, "time_limit", 7.5),
    ("tightening_time_limit", 0.5, "tightening_time_limit", 0.5),
    ("attack.steps", 11, "pgd_steps", 11),
    ("attack.restarts", 4, "pgd_restarts", 4),
    ("solver", "scip", "solver.name", "scip"),
    ("threads", 2, "solver.threads", 2),
    ("verifier", "bab", "method", "bab"),
    ("bab.share", 0.25, "bab_share", 0.25),
    ("bab.batch", 8, "bab.batch", 8),
    ("bab.branching", "babsr", "bab.branching", "babsr"),
    ("bab.iterations", 3, "bab.iterations", 3),
    ("bab.root_iterations", 7, "bab.root_iterations", 7),
    ("bab.lr_alpha", 0.3, "bab.lr_alpha", 0.3),
    ("bab.lr_beta", 0.2, "bab.lr_beta", 0.2),
    ("bab.refine", "false", "bab.refine", False),
    ("bab.split", "relu", "bab.split", "relu"),
]


def _get(options, path: str):
    for part in path.split("."):
        options = getattr(options, part)
    return options


@pytest.mark.parametrize("key,value,option,expected", KEYS, ids=[k[0] for k in KEYS])
def test_each_key_sets_its_option(key, value, option, expected):
    default = _get(VerifyOptions(eps=0.1), option)
    assert default != expected, "pick a value other than the default, or the test cannot fail"
    options = options_from_config(config(**{key: value}), 0.1)
    assert _get(options, option) == expected


def test_every_option_is_reachable_or_named_as_not_a_command_line_key():
    reached = {option.split(".")[0] for _, _, option, _ in KEYS} | {"eps"}
    # crown_dtype: a torch dtype, set from Python only
    assert {f.name for f in dataclasses.fields(VerifyOptions)} - reached == {"crown_dtype"}
    # dtype follows the network's; easiest_first is set by bab-milp itself
    assert {f.name for f in dataclasses.fields(BabOptions)} - set(BAB_KEYS) == {"dtype", "easiest_first"}
    bab_keys = {key.split(".", 1)[1] for key, _, option, _ in KEYS if option.startswith("bab.")}
    assert bab_keys == set(BAB_KEYS)
    assert {f.name for f in dataclasses.fields(SolverOptions)} >= {"name", "threads"}


def test_config_defaults_are_the_options_defaults():
    cfg, options = config(), VerifyOptions()
    for key, _, option, _ in KEYS:
        if key != "targets":
            assert OmegaConf.select(cfg, key) == _get(options, option), key


def test_a_negative_attack_names_its_command_line_key():
    with pytest.raises(ValueError, match="attack.steps"):
        options_from_config(config(**{"attack.steps": -1}), 0.1)
