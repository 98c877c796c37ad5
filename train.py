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

import hydra
from omegaconf import DictConfig

from certtrain.checkpoints import CheckpointError
from certtrain.config import ConfigError, register_configs
from certtrain.data import DataError
from certtrain.training import TrainingDiverged, train

register_configs()
log = logging.getLogger("train")

# Under torchrun every rank runs this script with the same overrides and so the same run folder;
# only rank 0 writes it (certtrain.distributed): the others keep Hydra's files and log file out.
if os.environ.get("RANK", "0") != "0":
    sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg)
    except (ConfigError, DataError, CheckpointError, TrainingDiverged) as err:
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(1)
    # The value a Hydra sweeper minimises: verified error at eps by the tightest certifier.
    verified = [curve[f"{cfg.eps:g}"] for curve in metrics["verified_err"].values() if f"{cfg.eps:g}" in curve]
    return min(verified) if verified else metrics["clean_err"]


if __name__ == "__main__":
    main()
