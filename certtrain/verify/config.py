"""Typed schema of verify.py's configuration (conf/verify.yaml), registered in Hydra's ConfigStore.

`model` and `dataset` reuse the training config groups (conf/model, conf/dataset); `model=onnx`
is registered here, so `weights=` can then name an ONNX file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class BabConfig:
    """Branch and bound (method=bab | bab-milp); certtrain.bab.BabOptions checks the values."""

    batch: int = 64  # sub-domains split per bound call
    branching: str = "fsb"  # fsb | babsr | width
    iterations: int = 20  # alpha/beta steps per batch
    refine: bool = True  # re-bound later ReLU layers per sub-domain (tighter; slower on deep CNNs)
    split: str = "auto"  # relu | input (halve the input box) | auto (input for <= 16 features)
    share: float = 0.5  # bab-milp: the fraction of time_limit branch and bound may use


@dataclass
class LadderConfig:
    """mode=ladder; certtrain.verify.ladder.check_rungs checks the names."""

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
    mode: str = "verify"  # verify | ladder (every certifier beside the exact answer, certtrain/verify/ladder.py)
    objective: str = "robustness"  # robustness | min_distortion
    norm: str = "linf"  # min_distortion: linf | l1
    perturbation: str = "linf"  # linf | unrestricted | blur
    blur_kernel_size: int = 3
    targets: Optional[List[int]] = None  # null: untargeted
    tightening: str = "lp"  # ibp | crown | lp | mip
    solver: str = "highs"  # MIP solver: highs | scip (certtrain[scip]) | gurobi (certtrain[gurobi])
    # milp | bab (PGD, alpha-CROWN, branch and bound) | bab-milp (then the MILP); VerifyOptions.method.
    # Not "method": conf/method is the training methods' group, which Hydra would read it as.
    verifier: str = "milp"
    bab: BabConfig = field(default_factory=BabConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    time_limit: float = 120.0  # seconds per sample
    tightening_time_limit: float = 1.0  # seconds per LP / MIP bound solve
    rerun: str = "never"  # never | always | timeouts | unresolved
    threads: int = 1  # MIP solver and torch threads
    pgd_steps: int = 50  # the PGD-error column (and verify's own attack uses 40)
    pgd_restarts: int = 3
    # false: skip the per-sample reference columns (PGD pgd_steps x pgd_restarts, IBP, CROWN), which
    # double a large run's wall time; the summary then shows n/a for them (mode=verify only)
    references: bool = True


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="verify_schema", node=VerifyConfig)
    store.store(group="model", name="onnx", node={"name": "onnx"})
