"""Typed schema of verify.py's configuration (conf/verify.yaml), registered in Hydra's ConfigStore.

`model` and `dataset` reuse the training config groups (conf/model, conf/dataset); `model=onnx`
is registered here, so `weights=` can then name an ONNX file.

The keys that set one verify() call are VerifyOptions' (and BabOptions') fields: their defaults are
read from those dataclasses' class attributes (one source), and `options_from_config` is the one place that maps
the command line onto them. The other keys belong to the batch app (which samples, where to, the
reference columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from certtrain.bab import BabOptions
from certtrain.verify.encoding import SolverOptions
from certtrain.verify.options import VerifyOptions

# BabOptions fields the command line sets (dtype follows the network; easiest_first is bab-milp's)
BAB_KEYS = ("batch", "branching", "iterations", "root_iterations", "lr_alpha", "lr_beta", "refine", "split")


@dataclass
class BabConfig:
    """Branch and bound (method=bab | bab-milp); certtrain.bab.BabOptions checks the values."""

    batch: int = BabOptions.batch  # sub-domains split per bound call
    branching: str = BabOptions.branching  # fsb | babsr | width
    iterations: int = BabOptions.iterations  # alpha/beta steps per batch
    root_iterations: int = BabOptions.root_iterations  # alpha steps at the root
    lr_alpha: float = BabOptions.lr_alpha
    lr_beta: float = BabOptions.lr_beta
    # re-bound later ReLU layers per sub-domain (tighter; slower on deep CNNs)
    refine: bool = BabOptions.refine
    split: str = BabOptions.split  # relu | input (halve the input box) | auto (input for <= 16 features)
    share: float = VerifyOptions.bab_share  # bab-milp: the fraction of time_limit branch and bound may use


@dataclass
class AttackConfig:
    """verify()'s own PGD, run before the MILP or branch and bound (0 steps: none)."""

    steps: int = VerifyOptions.pgd_steps
    restarts: int = VerifyOptions.pgd_restarts


@dataclass
class LadderConfig:
    """mode=ladder; certtrain.ladder.check_rungs checks the names."""

    # null: every rung; else some of apgd, ibp, crown_ibp, crown_plain, crown_tight, alpha_crown,
    # alpha_crown_full, bab (PGD and the exact answer always run)
    rungs: Optional[List[str]] = None


@dataclass
class VerifyConfig:
    model: Any = field(default_factory=lambda: {"name": "wk17a"})  # conf/model group (name: ...) or onnx
    dataset: Any = field(default_factory=lambda: {"name": "mnist"})  # conf/dataset group
    weights: Optional[str] = None  # state_dict, train.py checkpoint, or .onnx file (model=onnx)
    run: Optional[str] = None  # a train.py run folder: network, dataset and eps from its checkpoint
    vnnlib: Optional[str] = None  # a VNN-LIB property file: decide it (sat | unsat | timeout) instead of samples
    data_dir: str = "data"
    eps: Optional[float] = None  # L-inf radius in pixel units [0, 1]; null: the run's eps (run=), or none
    samples: str = "0:100"  # test indices first:stop (stop excluded)
    out: str = "results/verify"
    mode: str = "verify"  # verify | ladder (every certifier beside the exact answer, certtrain/ladder.py)
    objective: str = VerifyOptions.objective  # robustness | min_distortion
    norm: str = VerifyOptions.norm  # min_distortion: linf | l1
    perturbation: str = VerifyOptions.perturbation  # linf | unrestricted | blur
    blur_kernel_size: int = VerifyOptions.blur_kernel_size
    targets: Optional[List[int]] = None  # null: untargeted
    tightening: str = VerifyOptions.tightening  # ibp | crown | lp | mip
    # MIP solver: highs | scip (certtrain[scip]) | gurobi (certtrain[gurobi])
    solver: str = SolverOptions.name
    # milp | bab (PGD, alpha-CROWN, branch and bound) | bab-milp (then the MILP); VerifyOptions.method.
    # Not "method": conf/method is the training methods' group, which Hydra would read it as.
    verifier: str = VerifyOptions.method
    bab: BabConfig = field(default_factory=BabConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    time_limit: float = VerifyOptions.time_limit  # seconds per sample
    tightening_time_limit: float = VerifyOptions.tightening_time_limit  # seconds per LP / MIP bound solve
    rerun: str = "never"  # never | always | timeouts | unresolved
    threads: int = SolverOptions.threads  # MIP solver and torch threads
    # the summary's PGD-error column (a reference beside the answer; verify's own attack is attack.*)
    pgd_steps: int = 50
    pgd_restarts: int = 3
    # false: skip the per-sample reference columns (PGD pgd_steps x pgd_restarts, IBP, CROWN), which
    # double a large run's wall time; the summary then shows n/a for them (mode=verify only)
    references: bool = True


def options_from_config(cfg: DictConfig, eps: float | None) -> VerifyOptions:
    """verify()'s options from verify.py's config (eps: the resolved radius, e.g. a run's);
    VerifyOptions checks every value."""
    return VerifyOptions(
        eps=eps,
        objective=cfg.objective,
        time_limit=cfg.time_limit,
        tightening=cfg.tightening,
        perturbation=cfg.perturbation,
        norm=cfg.norm,
        targets=OmegaConf.to_object(cfg.targets) if cfg.targets else None,
        blur_kernel_size=cfg.blur_kernel_size,
        pgd_steps=cfg.attack.steps,
        pgd_restarts=cfg.attack.restarts,
        tightening_time_limit=cfg.tightening_time_limit,
        solver=SolverOptions(name=cfg.solver, threads=cfg.threads),
        method=cfg.verifier,
        bab=BabOptions(**{key: cfg.bab[key] for key in BAB_KEYS}),
        bab_share=cfg.bab.share,
    )


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="verify_schema", node=VerifyConfig)
    store.store(group="model", name="onnx", node={"name": "onnx"})
