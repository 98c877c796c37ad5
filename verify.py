"""Exact verification of test samples by mixed-integer programming (HiGHS), with resume.

    python verify.py model=wk17a weights=../shared/models/wk17a_linf0.1.pth eps=0.1 samples=0:100 \
        data_dir=../shared/data out=results/verify_wk17a
    python verify.py ... objective=min_distortion norm=l1 perturbation=unrestricted eps=null
    python verify.py ... perturbation=blur blur_kernel_size=3 objective=min_distortion eps=null
    python verify.py model=onnx weights=net.onnx ...            # a network exported to ONNX
    python verify.py ... rerun=timeouts time_limit=600          # redo only the timed-out rows
    python verify.py run=outputs/eps=0.1,method=ibp samples=0:100 out=results/verify_run   # a train.py run
    python verify.py mode=ladder run=outputs/<run> samples=0:200 out=results/ladder/<name>  # every certifier
    python verify.py model=onnx weights=net.onnx vnnlib=prop.vnnlib out=results/vnnlib   # a VNN-LIB property

Writes <out>/samples.csv (one row per sample, appended as it goes), summary.md and summary.json.
"""

import logging
import sys

import hydra
import torch
from omegaconf import DictConfig

from certtrain.data import DataError
from certtrain.ladder import LadderViolation
from certtrain.verify_app.config import register_configs
from certtrain.verify_app.run_folder import quote_path_overrides
from certtrain.verify_app.runner import check_config, run_from_config

register_configs()
log = logging.getLogger("verify")
# Bad input: one line naming the fix, exit 1 (the finished rows of samples.csv stay).
EXPECTED_ERRORS = (ValueError, DataError, FileNotFoundError)  # UnsupportedNetworkError, RunFolderError: ValueErrors


@hydra.main(version_base="1.3", config_path="conf", config_name="verify")
def main(cfg: DictConfig) -> float:
    try:
        check_config(cfg)
        torch.set_num_threads(cfg.threads)  # the process's threads: the command's choice, not the library's
        summary = run_from_config(cfg)
        return summary.get("exact_error_upper_pct", 0.0)  # a vnnlib= run has a verdict instead
    except EXPECTED_ERRORS as err:
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(1)
    except LadderViolation as err:  # a bug, not bad input: everything is written, the exit says so
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv = quote_path_overrides(sys.argv)  # run=outputs/eps=0.1,method=ibp works unquoted
    main()
