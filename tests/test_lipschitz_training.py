"""method=lipschitz through the real training entry point, on a tiny synthetic MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from certtrain.config import register_configs
from certtrain.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "method=lipschitz",
    "model=lipschitz_mlp",
    "dataset=mnist",
    "dataset.train_size=64",
    "dataset.test_size=16",
    "batch_size=32",
    "epochs=2",
    "eps=0.1",
    "schedule.warmup_epochs=0",
    "schedule.ramp_epochs=1",
    "eval.every=1",
    "eval.subset=8",
    "eval.pgd_steps=2",
    "eval.eps_grid=[0.01,0.1]",
    "device=cpu",
    "log_every=1",
]


def compose_config(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "hinge"])
def test_lipschitz_method_trains_and_reports_its_certifier(data_dir, tmp_path, loss):
    cfg = compose_config(*TINY, f"method.lipschitz_loss={loss}", f"data_dir={data_dir}")
    metrics = train(cfg, run_dir=tmp_path)
    verified = metrics["verified_err"]
    # lipschitz: added for method=lipschitz; best: the per-sample union
    assert set(verified) == {"ibp", "crown-ibp", "lipschitz", "best"}
    for eps in ("0.01", "0.1"):
        # certified by the Lipschitz bound OR a bound method: never worse than either bound alone
        assert verified["lipschitz"][eps] <= min(verified["ibp"][eps], verified["crown-ibp"][eps])
        assert verified["lipschitz"][eps] >= metrics["pgd_err"][eps]  # sound: above the attack's error
    events = EventAccumulator(str(tmp_path)).Reload()
    assert "val/verified_err/lipschitz/eps_0.1" in events.Tags()["scalars"]


def test_unknown_lipschitz_loss_fails_at_composition(data_dir, tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="lipschitz_loss"):
        compose_config(*TINY, "method.lipschitz_loss=mse", f"data_dir={data_dir}")


def test_dynamic_hinge_and_model_options_from_the_command_line(data_dir, tmp_path):
    cfg = compose_config(
        *TINY,
        "method.lipschitz_loss=dynamic_hinge",
        "+model.options.width=64",
        "+model.options.group_size=full",
        "+model.options.budget=scale",
        "+model.options.vectorwise=false",
        "eval.every=0",
        f"data_dir={data_dir}",
    )
    metrics = train(cfg, run_dir=tmp_path)
    assert metrics["verified_err"]["lipschitz"]["0.1"] >= metrics["pgd_err"]["0.1"]
    import torch

    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["arch"]["options"] == {"width": 64, "group_size": "full", "budget": "scale", "vectorwise": False}
    assert state["model"]["2.parametrizations.weight.original"].shape == (64, 784)


def test_bad_model_option_is_a_config_error(data_dir, tmp_path):
    from certtrain.config import ConfigError

    cfg = compose_config(*TINY, "+model.options.widht=64", f"data_dir={data_dir}")
    with pytest.raises(ConfigError, match="widht"):
        train(cfg, run_dir=tmp_path)
