"""verify.py's work as a plain function: config -> network + test split -> batch run -> summary."""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from pathlib import Path

import highspy
from omegaconf import DictConfig, OmegaConf

from certtrain.checkpoints import weights_hash
from certtrain.data import load_split
from certtrain.ladder import LADDER_COLUMNS, check_rungs, ladder_references, write_ladder
from certtrain.models.zoo import stats_dataset
from certtrain.provenance import git_commit
from certtrain.verify_app.batch import RERUN, parse_samples, run_batch
from certtrain.verify_app.config import options_from_config
from certtrain.verify_app.loading import load_network
from certtrain.verify_app.run_folder import RunFolderError, read_run
from certtrain.verify_app.vnnlib_runner import run_vnnlib

log = logging.getLogger(__name__)
# mode -> what run_batch computes beside the exact answer, and how it summarises
MODES = {
    "verify": {},
    "ladder": {"reference_fn": ladder_references, "columns": LADDER_COLUMNS, "summarize_fn": write_ladder},
}


def no_references(model, x, label, result, options, pgd_steps, pgd_restarts) -> dict:
    """references=false: no PGD / IBP / CROWN columns beside the exact answer."""
    return {}


def _ladder_rungs(cfg: DictConfig) -> tuple[str, ...]:
    return check_rungs(None if cfg.ladder.rungs is None else OmegaConf.to_object(cfg.ladder.rungs))


def check_config(cfg: DictConfig) -> None:
    """Range checks a type cannot express; each message names the key and the fix."""
    if cfg.eps is not None and not 0.0 <= cfg.eps <= 1.0:
        raise ValueError(f"eps={cfg.eps} lies outside [0, 1] (pixel units); pass e.g. eps=0.1")
    if cfg.eps is None and cfg.perturbation == "linf" and not cfg.run and not cfg.vnnlib:
        raise ValueError(
            "perturbation=linf needs eps; pass eps=<radius>, run=<train.py run folder> (its eps) "
            "or perturbation=unrestricted"
        )
    if cfg.threads < 1:
        raise ValueError(f"threads={cfg.threads}: pass threads=1 or more (the MIP solver's and torch's threads)")
    # objective, norm, perturbation, tightening and the time limits: VerifyOptions checks them
    for key, allowed in {"mode": MODES, "rerun": RERUN}.items():
        if cfg[key] not in allowed:
            raise ValueError(f"{key}={cfg[key]} is not one of {list(allowed)}")
    if cfg.mode == "ladder":
        _ladder_rungs(cfg)
    if cfg.mode == "ladder" and not cfg.references:
        raise ValueError("mode=ladder is made of reference certifiers: drop references=false, or use mode=verify")
    if cfg.mode == "ladder" and (cfg.objective != "robustness" or cfg.perturbation != "linf"):
        raise ValueError(
            "mode=ladder compares certificates of L-inf robustness: use objective=robustness "
            "perturbation=linf, or mode=verify"
        )


def _explicit_overrides() -> set[str]:
    """Keys the user set on the command line (empty outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def _network_source(cfg: DictConfig) -> tuple[str, str, str, str | None, float | None, str | None]:
    """(model, stats dataset, dataset, weights, eps, run folder) from run= or from model= / dataset= / weights=."""
    if not cfg.run:
        dataset = cfg.dataset.name
        return cfg.model.name, stats_dataset(dataset), dataset, cfg.weights, cfg.eps, None
    clash = _explicit_overrides() & {"model", "dataset", "weights"}
    if clash or cfg.weights:
        raise RunFolderError(
            f"run={cfg.run} decides the network, so {sorted(clash) or ['weights']} must not be "
            "given too; drop them, or drop run= and pass model=, dataset= and weights="
        )
    trained = read_run(cfg.run)
    eps = trained.eps if cfg.eps is None else cfg.eps
    if eps > trained.eps_train:
        log.warning(
            "eps=%g is above the radius the run was trained at (eps_train=%g): verifying anyway, but "
            "expect few robust samples",
            eps,
            trained.eps_train,
        )
    log.info(
        "run %s: %s on %s, eps %g (trained at %g), weights sha256 %s",
        trained.folder,
        trained.model,
        trained.dataset,
        eps,
        trained.eps_train,
        trained.weights_sha256[:12],
    )
    return trained.model, trained.stats, trained.dataset, str(trained.checkpoint), eps, str(trained.folder)


def run_from_config(cfg: DictConfig) -> dict:
    check_config(cfg)
    model_name, stats, dataset, weights, eps, run_folder = _network_source(cfg)
    targets = OmegaConf.to_object(cfg.targets) if cfg.targets else None
    options = options_from_config(cfg, eps)  # checked here, before the network and the data are loaded
    network = load_network(model_name, weights, stats)
    if cfg.vnnlib:
        return run_vnnlib(cfg, network, model_name, weights, dataset, options)
    split = load_split(dataset, "test", cfg.data_dir)
    indices = parse_samples(cfg.samples, len(split))
    settings = {
        "model": model_name,
        "weights": weights,
        "run": run_folder,
        "weights_sha256": weights_hash(network.state_dict()),
        "dataset": dataset,
        "eps": eps,
        "objective": cfg.objective,
        "norm": cfg.norm,
        "perturbation": cfg.perturbation,
        "blur_kernel_size": cfg.blur_kernel_size,
        "targets": targets,
        "mode": cfg.mode,
        "tightening": cfg.tightening,
        "verifier": cfg.verifier,
        "bab": OmegaConf.to_container(cfg.bab),
        "attack": OmegaConf.to_container(cfg.attack),
        "time_limit": cfg.time_limit,
        "pgd_steps": cfg.pgd_steps,
        "pgd_restarts": cfg.pgd_restarts,
        "references": cfg.references,
        "threads": cfg.threads,
        "solver": cfg.solver,
        "highs": highspy.Highs().version(),
        "command": "python verify.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()})",
    }
    extras = MODES[cfg.mode] if cfg.references else {"reference_fn": no_references}
    if cfg.mode == "ladder":
        rungs = _ladder_rungs(cfg)
        settings["ladder_rungs"] = list(rungs)
        extras = {**extras, "reference_fn": functools.partial(ladder_references, rungs=rungs)}
    summary = run_batch(
        network,
        split.images,
        split.labels,
        indices,
        Path(cfg.out),
        settings=settings,
        options=options,
        rerun=cfg.rerun,
        pgd_steps=cfg.pgd_steps,
        pgd_restarts=cfg.pgd_restarts,
        **extras,
    )
    pgd = summary["pgd_error_pct"]  # None with references=false (no PGD column)
    log.info(
        "%d samples: clean error %.2f%%, PGD error %s, exact adversarial error %.2f%% .. %.2f%%, "
        "mean %.2f s per sample; summary in %s",
        summary["samples"],
        summary["clean_error_pct"],
        "not run" if pgd is None else f"{pgd:.2f}%",
        summary["exact_error_lower_pct"],
        summary["exact_error_upper_pct"],
        summary["seconds_mean"] or 0.0,
        Path(cfg.out) / "summary.md",
    )
    return summary
