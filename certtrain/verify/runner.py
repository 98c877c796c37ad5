"""verify.py's work as a plain function: config -> network + test split -> batch run -> summary."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import highspy
import torch
from omegaconf import DictConfig, OmegaConf

from certtrain.data import load_split
from certtrain.verify.api import OBJECTIVES
from certtrain.verify.batch import RERUN, parse_samples, run_batch
from certtrain.verify.encoding import SolverOptions
from certtrain.verify.loading import load_network
from certtrain.verify.objectives import NORMS
from certtrain.verify.options import VerifyOptions
from certtrain.verify.perturbations import FAMILIES
from certtrain.verify.tightening import check_level

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_config(cfg: DictConfig) -> None:
    """Range checks a type cannot express; each message names the key and the fix."""
    if cfg.eps is not None and not 0.0 <= cfg.eps <= 1.0:
        raise ValueError(f"eps={cfg.eps} lies outside [0, 1] (pixel units); pass e.g. eps=0.1")
    if cfg.eps is None and cfg.perturbation == "linf":
        raise ValueError("perturbation=linf needs eps; pass eps=<radius> or perturbation=unrestricted")
    choices = {"objective": OBJECTIVES, "norm": NORMS, "perturbation": FAMILIES, "rerun": RERUN}
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            raise ValueError(f"{key}={cfg[key]} is not one of {list(allowed)}")
    check_level(cfg.tightening)
    if cfg.time_limit <= 0 or cfg.tightening_time_limit <= 0:
        raise ValueError("time_limit and tightening_time_limit must be positive seconds")


def run_from_config(cfg: DictConfig) -> dict:
    check_config(cfg)
    torch.set_num_threads(cfg.threads)
    model_name, dataset = cfg.model.name, cfg.dataset.name
    network = load_network(model_name, cfg.weights, dataset if dataset in ("mnist", "fashion_mnist", "cifar10") else "mnist")
    split = load_split(dataset, "test", cfg.data_dir)
    indices = parse_samples(cfg.samples, len(split))
    settings = {
        "model": model_name, "weights": cfg.weights, "dataset": dataset, "eps": cfg.eps,
        "objective": cfg.objective, "norm": cfg.norm, "perturbation": cfg.perturbation,
        "blur_kernel_size": cfg.blur_kernel_size, "targets": OmegaConf.to_object(cfg.targets) if cfg.targets else None,
        "tightening": cfg.tightening, "time_limit": cfg.time_limit, "pgd_steps": cfg.pgd_steps,
        "pgd_restarts": cfg.pgd_restarts, "threads": cfg.threads, "highs": highspy.Highs().version(),
        "command": "python verify.py " + " ".join(sys.argv[1:]), "commit": _commit(),
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()})",
    }
    options = VerifyOptions(
        eps=cfg.eps, objective=cfg.objective, time_limit=cfg.time_limit, tightening=cfg.tightening,
        perturbation=cfg.perturbation, norm=cfg.norm, targets=settings["targets"],
        blur_kernel_size=cfg.blur_kernel_size, tightening_time_limit=cfg.tightening_time_limit,
        solver=SolverOptions(threads=cfg.threads),
    )
    summary = run_batch(network, split.images, split.labels, indices, Path(cfg.out), settings=settings,
                        options=options, rerun=cfg.rerun, pgd_steps=cfg.pgd_steps,
                        pgd_restarts=cfg.pgd_restarts)
    log.info(
        "%d samples: clean error %.2f%%, PGD error %.2f%%, exact adversarial error %.2f%% .. %.2f%%, "
        "mean %.2f s per sample; summary in %s",
        summary["samples"], summary["clean_error_pct"], summary["pgd_error_pct"], summary["exact_error_lower_pct"],
        summary["exact_error_upper_pct"], summary["seconds_mean"] or 0.0, Path(cfg.out) / "summary.md",
    )
    return summary
