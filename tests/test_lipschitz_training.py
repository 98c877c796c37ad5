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
    "method=lipschitz", "model=lipschitz_mlp", "dataset=mnist", "dataset.train_size=64", "dataset.test_size=16",
    "batch_size=32", "epochs=2", "eps=0.1", "schedule.warmup_epochs=0", "schedule.ramp_epochs=1", "eval.every=1",
    "eval.subset=8", "eval.pgd_steps=2", "eval.eps_grid=[0.01,0.1]", "device=cpu", "log_every=1",
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
    assert set(verified) == {"ibp", "crown-ibp", "lipschitz"}  # added for method=lipschitz
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
