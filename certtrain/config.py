"""Typed schema of the training configuration, registered in Hydra's ConfigStore: the one
source of every default (`train(None)` is the run `python train.py` makes; conf/config.yaml
only selects the groups and configures Hydra).

`conf/config.yaml` starts from `train_schema`, so a wrong type (`eps=abc`) or an unknown key
(`epoch=3`) fails while Hydra composes the config, before anything loads or trains.
Range checks that a type cannot express (eps >= 0, gm.n >= 1, ...) live in `check_config`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from certtrain.bab.certifier import BAB_SECONDS
from certtrain.choice import Choice
from certtrain.errors import ConfigError
from certtrain.lipschitz.zoo import LIPSCHITZ_ARCHITECTURES
from certtrain.losses import GM_ESTIMATORS as _ESTIMATORS
from certtrain.methods import METHODS, MethodConfig, get_method

Device = Choice("Device", {name: name for name in ("auto", "cpu", "cuda")})
RampShape = Choice("RampShape", {name: name for name in ("linear", "smoothed")})
GMWeights = Choice(
    "GMWeights", {n: n for n in ("inverse", "uniform", "inverse_square", "linear_decreasing", "increasing")}
)
GMEstimator = Choice("GMEstimator", {name: name for name in _ESTIMATORS})
ModelInit = Choice("ModelInit", {name: name for name in ("default", "ibp")})
DatasetName = Choice("DatasetName", {name: name for name in ("mnist", "fashion_mnist", "cifar10", "mnist5k")})
EvalAttack = Choice("EvalAttack", {name: name for name in ("pgd", "apgd")})

DEVICES = tuple(c.value for c in Device)
RAMP_SHAPES = tuple(c.value for c in RampShape)
GM_WEIGHTS = tuple(c.value for c in GMWeights)
EVAL_BOUNDS = (
    "ibp",
    "crown-ibp",
    "crown",
    "alpha-crown",
    "alpha-crown-full",
    "lipschitz",
)  # lipschitz: Lipschitz bound or any sound bound
GM_ESTIMATORS = tuple(c.value for c in GMEstimator)
DATASETS = tuple(c.value for c in DatasetName)
EVAL_ATTACKS = tuple(c.value for c in EvalAttack)


@dataclass
class ModelConfig:
    name: str = "dm_small"  # mlp | dm_small | dm_medium | dm_large | cnn7 | wk17a | lipschitz_mlp(_large)
    # Keyword arguments of the architecture's builder (+model.options.width=1024), e.g. for lipschitz_mlp: width, depth,
    # group_size (2 or full), vectorwise (eq. 2.8 or 2.7), budget (clip | scale), mode (direct | project).
    options: Dict[str, Any] = field(default_factory=dict)
    # default: PyTorch's initialisation (cnn7 always uses Shi et al.'s); ibp: Shi et al.'s IBP
    # initialisation w ~ N(0, (sqrt(2 pi) / fan_in)^2), zero bias (certtrain.models.zoo.ibp_init_)
    init: ModelInit = ModelInit.default


@dataclass
class DatasetConfig:
    name: DatasetName = DatasetName.mnist5k
    train_size: Optional[int] = None  # null: every training sample
    test_size: Optional[int] = None  # null: every test sample
    # Training images held out (a seeded draw, by `seed`) for model selection: the periodic
    # evaluations run on them, the test set is evaluated once at the end; null: none held out.
    val_size: Optional[int] = None
    augment: bool = False  # random crop (padding 4) + horizontal flip, for CIFAR


@dataclass
class ScheduleConfig:
    warmup_epochs: float = 1.0  # plain training (eps 0, kappa 1) before the ramp
    ramp_epochs: float = 10.0  # eps 0 -> eps_train, kappa 1 -> kappa_final, beta over this span
    ramp_shape: RampShape = RampShape.linear  # linear | smoothed (polynomial for the first quarter, then linear)
    lr_milestones: List[int] = field(default_factory=list)  # epochs after which lr *= lr_gamma
    lr_gamma: float = 0.1
    grad_clip: Optional[float] = 10.0  # max gradient norm; null disables clipping


@dataclass
class GMConfig:
    # number of radii r_i = (i / n) * eps_t; null: the method's default (4 for gm_ibp and
    # gm_crown_ibp, 1 for the others); ibp and crown_ibp always train at one radius
    n: Optional[int] = None
    weights: GMWeights = GMWeights.inverse  # inverse | uniform | inverse_square | linear_decreasing | increasing
    # all: every sample at every radius; sampled: one radius per sample drawn with probability c_i
    # (one bound call, an unbiased estimate of the same loss); stratified: about B c_i per radius
    estimator: GMEstimator = GMEstimator.all


@dataclass
class EvalConfig:
    eps_grid: Optional[List[float]] = None  # null: eps_train x (0.25 .. 1.5) plus eps
    every: int = 5  # evaluate on `subset` test samples every this many epochs (0: only at the end)
    subset: int = 500
    bounds: List[str] = field(default_factory=lambda: ["ibp", "crown-ibp"])  # keys of evaluate.CERTIFIERS
    # The final evaluation on the whole test set; null: `bounds`. E.g. [ibp,crown-ibp,alpha-crown]:
    # the tightest certificate once, not at every periodic evaluation (alpha-CROWN costs ~20 CROWN passes).
    final_bounds: Optional[List[str]] = None
    pgd_steps: int = 20  # 0: no attack (pgd_err is then the clean error)
    pgd_restarts: int = 1
    # pgd: the PGD error only; apgd: also apgd_err, AutoAttack's APGD-CE then targeted APGD-DLR
    # (certtrain.apgd) on the samples PGD left unbroken, so apgd_err >= pgd_err
    attack: EvalAttack = EvalAttack.pgd
    apgd_steps: int = 100  # iterations per APGD run (the paper's 100); each is a forward and backward pass
    apgd_restarts: int = 1  # random starts per APGD-CE run and per target of APGD-T (9 targets)
    bab_seconds: float = BAB_SECONDS  # certifier bab: branch-and-bound time per sample and radius
    batch_size: int = 500


@dataclass
class TrainConfig:
    # Typed by the chosen method's own config (certtrain.methods), which Hydra merges in from
    # conf/method/<name>.yaml; train(None) and structured_config() do the same.
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    gm: GMConfig = field(default_factory=GMConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eps: float = 0.2  # evaluation radius, L-inf, pixel units [0, 1]
    eps_train: Optional[float] = None  # training radius; null: eps
    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    seed: int = 0
    device: Device = Device.auto  # auto | cpu | cuda
    data_dir: str = "${oc.env:CERTTRAIN_DATA_DIR,data}"  # where datasets live
    resume: bool = False
    overwrite: bool = False  # true: a rerun without resume=true deletes the run already in its folder
    log_every: int = 50  # steps between train/* scalars
    # TF32 matmuls/convolutions in the training steps on Ampere+ GPUs: faster; costs no soundness
    # (training bounds certify nothing; every certifier runs in strict float32, certtrain.precision)
    train_tf32: bool = False


def structured_config(method: str = MethodConfig.name) -> Any:
    """The schema with every default, typed by the method's own config: what `python train.py
    method=<method>` composes with no other override."""
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), {"method": get_method(method).schema()})


def register_configs() -> None:
    """Register the schema as `train_schema`, each method's config as `method/<name>_schema`
    (the schema its conf/method/<name>.yaml starts from), and the `run_name` resolver used in
    hydra.run.dir.

    Idempotent: multirun jobs and tests share one process.
    """
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for name, record in METHODS.items():
        store.store(group="method", name=f"{name}_schema", node=record.schema())
    # A run without overrides gets the folder "defaults" instead of the bare parent folder.
    OmegaConf.register_new_resolver("run_name", run_folder_name, replace=True)


# Folder names above this many characters are shortened (most file systems allow 255 bytes).
MAX_FOLDER_NAME = 200


def run_folder_name(overrides: str) -> str:
    """The run folder's name: the overrides, or "defaults"; a name too long for a file system keeps
    its first characters and ends in a hash of the whole, so it stays readable and stable."""
    if not overrides:
        return "defaults"
    if len(overrides.encode()) <= MAX_FOLDER_NAME:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:12]
    return overrides.encode()[: MAX_FOLDER_NAME - 14].decode(errors="ignore") + "--" + digest


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not known; choose one of {', '.join(choices)}")


FREE_FORM_KEYS = ("model.options",)  # the builder checks these (a bad one is a ConfigError at build time)


def _unknown_keys(cfg: Any, schema: Any, prefix: str = "") -> list[str]:
    unknown = []
    for key in cfg.keys():
        if key not in schema:
            unknown.append(prefix + str(key))
        elif f"{prefix}{key}" in FREE_FORM_KEYS:
            continue
        elif OmegaConf.is_dict(schema[key]) and OmegaConf.is_dict(cfg[key]):
            unknown += _unknown_keys(cfg[key], schema[key], f"{prefix}{key}.")
    return unknown


def check_config(cfg: Any, certifiers=EVAL_BOUNDS) -> None:
    """Reject unknown keys (also those forced in with `+key=`), out-of-range values and a
    method paired with a model it cannot train, with a message that names the key and the fix."""
    _check_choice("method.name", cfg.method.name, sorted(METHODS))
    record = get_method(cfg.method.name)
    unknown = [key for key in _unknown_keys(cfg, structured_config(cfg.method.name)) if key != "hydra"]
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; see conf/config.yaml for the valid keys")
    if cfg.eps < 0:
        raise ConfigError(f"eps={cfg.eps} is negative; eps is an L-inf radius in pixel units, use eps >= 0")
    if cfg.eps_train is not None and cfg.eps_train < 0:
        raise ConfigError(f"eps_train={cfg.eps_train} is negative; use eps_train >= 0 (or null to train at eps)")
    for key in ("eps", "eps_train"):
        if cfg[key] is not None and cfg[key] > 1:
            raise ConfigError(
                f"{key}={cfg[key]} is above 1: radii are in pixel units [0, 1] (a ball that wide holds every "
                f"image); for eps in 0-255 units divide by 255, e.g. {key}={cfg[key] / 255:.5g}"
            )
    sizes = {
        "dataset.train_size": cfg.dataset.train_size,
        "dataset.test_size": cfg.dataset.test_size,
        "dataset.val_size": cfg.dataset.val_size,
        "eval.subset": cfg.eval.subset,
    }
    for key, value in sizes.items():
        if value is not None and value < 1:
            raise ConfigError(
                f"{key}={value} must be at least 1 (or null for every sample)"
                if key != "eval.subset"
                else f"eval.subset={value} must be at least 1"
            )
    if cfg.log_every < 1:
        raise ConfigError(f"log_every={cfg.log_every} must be at least 1 (steps between train/* scalars)")
    if cfg.gm.n is not None and cfg.gm.n < 1:
        raise ConfigError(f"gm.n={cfg.gm.n}: the global loss needs at least one radius, use gm.n >= 1")
    if cfg.method.loss_fusion and not record.fusable:
        fusable = [name for name, other in METHODS.items() if other.fusable]
        raise ConfigError(
            f"method.loss_fusion=true needs a CROWN backward pass, which method={record.name} has not; "
            f"use it with method={' or method='.join(fusable)}, or set method.loss_fusion=false"
        )
    if record.models is not None and cfg.model.name not in record.models:
        raise ConfigError(
            f"method={record.name} trains only model={' or model='.join(record.models)}, "
            f"not model={cfg.model.name}; choose one of those"
        )
    _check_choice("gm.weights", cfg.gm.weights, GM_WEIGHTS)
    _check_choice("gm.estimator", cfg.gm.estimator, GM_ESTIMATORS)
    if cfg.eval.eps_grid is not None:
        if len(cfg.eval.eps_grid) == 0:
            raise ConfigError(
                "eval.eps_grid is empty; give at least one radius, e.g. eval.eps_grid=[0.1,0.2], "
                "or null for the default grid"
            )
        if min(cfg.eval.eps_grid) < 0:
            raise ConfigError(f"eval.eps_grid={list(cfg.eval.eps_grid)} has a negative radius; use radii >= 0")
    for bound in [*cfg.eval.bounds, *(cfg.eval.final_bounds or [])]:
        _check_choice("eval.bounds / eval.final_bounds entry", bound, sorted(certifiers))
    if "bab" in [*cfg.eval.bounds, *(cfg.eval.final_bounds or [])]:
        if not cfg.eval.bab_seconds > 0:
            raise ConfigError(
                f"eval.bab_seconds={cfg.eval.bab_seconds}: give branch and bound a positive time per sample"
            )
        if cfg.model.name in LIPSCHITZ_ARCHITECTURES:
            raise ConfigError(
                f"certifier bab splits ReLUs and model={cfg.model.name} has none (GroupSort); "
                "drop bab from eval.bounds / eval.final_bounds for this model"
            )
    _check_choice("eval.attack", cfg.eval.attack, EVAL_ATTACKS)
    attack_counts = {
        "eval.pgd_restarts": cfg.eval.pgd_restarts,
        "eval.apgd_steps": cfg.eval.apgd_steps,
        "eval.apgd_restarts": cfg.eval.apgd_restarts,
    }
    for key, value in attack_counts.items():
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1 (it would attack nothing); e.g. {key}=1")
    if cfg.eval.pgd_steps < 0:
        raise ConfigError(f"eval.pgd_steps={cfg.eval.pgd_steps} is negative; use eval.pgd_steps >= 0 (0: no attack)")
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("schedule.ramp_shape", cfg.schedule.ramp_shape, RAMP_SHAPES)
    _check_choice("dataset.name", cfg.dataset.name, DATASETS)
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "eval.batch_size": cfg.eval.batch_size}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    if cfg.lr <= 0:
        raise ConfigError(f"lr={cfg.lr} must be positive")
    if cfg.schedule.warmup_epochs < 0 or cfg.schedule.ramp_epochs < 0:
        raise ConfigError("schedule.warmup_epochs and schedule.ramp_epochs must be >= 0")
    for key in ("kappa_final", "beta_start", "beta_final"):
        value = cfg.method[key]
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"method.{key}={value} must lie in [0, 1]")
    if record.check is not None:
        record.check(cfg)


def train_eps(cfg: Any) -> float:
    return cfg.eps if cfg.eps_train is None else cfg.eps_train


def eval_grid(cfg: Any) -> list[float]:
    """The radii of the drawdown curve: eval.eps_grid, or a default reaching beyond eps_train."""
    if cfg.eval.eps_grid is not None:
        return sorted({float(e) for e in cfg.eval.eps_grid})
    top = train_eps(cfg)
    grid = {round(top * f, 6) for f in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)} | {round(float(cfg.eps), 6)}
    return sorted(grid)
