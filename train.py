"""Certified training from the command line (Hydra).

    python train.py                                              # CROWN-IBP, DM-small, offline mnist5k digits
    python train.py method=gm_crown_ibp eps=0.5 dataset=mnist data_dir=../shared/data
    python train.py -m method=ibp,crown_ibp,gm_crown_ibp eps=0.2,0.4
    python train.py method=ibp epochs=30 resume=true             # continue an interrupted run
    torchrun --standalone --nproc_per_node=2 train.py method=ibp   # data-parallel over 2 processes/GPUs

Every key is listed in conf/config.yaml and typed in certtrain/config.py.
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from certtrain.checkpoints import CheckpointError
from certtrain.config import ConfigError, register_configs
from certtrain.data import DataError
from certtrain.results import Errors, eps_key
from certtrain.sweeps import clear_failed, mark_failed
from certtrain.training import TrainingDiverged, train

register_configs()
log = logging.getLogger("train")


EXPECTED_ERRORS = (ConfigError, DataError, CheckpointError, TrainingDiverged)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep:
        clear_failed(job_dir)
    try:
        metrics = train(cfg)
    except Exception as err:
        expected = isinstance(err, EXPECTED_ERRORS)
        if not in_sweep:
            if not expected:
                raise
            log.error("%s: %s", type(err).__name__, err)
            sys.exit(1)
        # One failed job must not stop the sweep: its folder says why, the sweep exits 1 at the end.
        mark_failed(job_dir, err, expected)
        log.error("job failed, the sweep goes on (%s): %s: %s", job_dir, type(err).__name__, err)
        return float("nan")
    # The value a Hydra sweeper minimises: verified error at eps by the tightest certifier, on the
    # validation images when dataset.val_size holds some out (a sweep never selects on the test set).
    selected = Errors.from_metrics(metrics.get("val", metrics))
    return selected.best().get(eps_key(cfg.eps), selected.clean_err)


if __name__ == "__main__":
    # Under torchrun every rank runs this script with the same overrides and so the same run
    # folder; only rank 0 writes it (certtrain.distributed): the others keep Hydra's files and
    # log file out.
    if os.environ.get("RANK", "0") != "0":
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    main()
