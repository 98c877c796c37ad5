"""train(cfg) -> metrics: data -> model -> loss (bounds) -> optimiser -> evaluation -> logs.

The run folder receives: TensorBoard events, checkpoint.pt (every epoch), metrics.json and
verified_err.png (the drawdown curve at the end).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from certtrain.atomic import atomic_write_text
from certtrain.augment import random_crop_flip
from certtrain.bab.certifier import bab_certifier
from certtrain.checkpoints import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from certtrain.config import ConfigError, check_config, eval_grid, structured_config, train_eps
from certtrain.data import Split, to_float
from certtrain.distributed import (
    SINGLE,
    World,
    average_buffers,
    barrier,
    sum_gradients,
    sum_over_ranks,
    world_from_env,
)
from certtrain.distributed import start as start_world
from certtrain.distributed import stop as stop_world
from certtrain.download import load_or_download
from certtrain.evaluate import CERTIFIERS, evaluate
from certtrain.losses import RobustContext
from certtrain.methods import get_method, training_loss
from certtrain.models import build_model
from certtrain.models.zoo import ibp_init_, stats_dataset
from certtrain.precision import allow_tf32
from certtrain.provenance import provenance
from certtrain.reporting import NullWriter, flat_hparams, log_eval_scalars, log_hparams, save_drawdown
from certtrain.schedules import RampSchedule, step_lr

log = logging.getLogger(__name__)

RADIUS_SEED_OFFSET = 1_000_003  # the radius draws' seed is seed + this


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str, world: World = SINGLE) -> torch.device:
    """The device of this process: under torchrun, GPU `local_rank` of the node."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    if name == "cuda" and world.active:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"rank {world.rank} wants GPU {world.local_rank} but this node has {torch.cuda.device_count()}; "
                "start torchrun with --nproc_per_node at most the number of GPUs"
            )
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def load_data(cfg) -> tuple[Split, Split | None, Split]:
    """(train, validation or None, test); the validation images are a seeded draw out of the training set."""
    train = load_or_download(cfg.dataset.name, "train", cfg.data_dir).subset(cfg.dataset.train_size)
    train, val = split_validation(train, cfg.dataset.val_size, cfg.seed)
    test = load_or_download(cfg.dataset.name, "test", cfg.data_dir).subset(cfg.dataset.test_size)
    if train.source != test.source:  # never mix sources silently
        raise RuntimeError(f"train and test come from different sources: {train.source} / {test.source}")
    log.info("data: %s (%d train, %s validation, %d test)", train.source, len(train), len(val) if val else 0, len(test))
    return train, val, test


VAL_SEED_OFFSET = 2_000_003  # the validation draw's seed is seed + this


def split_validation(train: Split, val_size: int | None, seed: int) -> tuple[Split, Split | None]:
    """Hold `val_size` training images out, drawn by a generator of the run's seed."""
    if val_size is None:
        return train, None
    if val_size >= len(train):
        raise ConfigError(
            f"dataset.val_size={val_size} leaves nothing to train on: the training set has {len(train)} "
            f"images; use dataset.val_size below {len(train)} (e.g. {len(train) // 10}) or null"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + VAL_SEED_OFFSET))
    return train.take(order[val_size:].sort().values), train.take(order[:val_size].sort().values)


def _batches(split: Split, batch_size: int, generator: torch.Generator, augment: bool, device: torch.device):
    """Batches of (x in [0, 1], y) on `device`: the uint8 pixels cross to the device, a quarter
    of the float bytes, and are converted there."""
    order = torch.randperm(len(split), generator=generator)
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        images = split.images[index]
        if augment:
            images = random_crop_flip(images, generator)
        yield to_float(images.to(device, non_blocking=True)), split.labels[index].to(device, non_blocking=True)


def _as_config(cfg) -> DictConfig:
    """A Hydra-composed config as it is; None (every default) or a TrainConfig typed by its method's schema."""
    if isinstance(cfg, DictConfig):
        return cfg
    if cfg is None:
        return structured_config()
    return OmegaConf.merge(structured_config(cfg.method.name), OmegaConf.to_container(OmegaConf.structured(cfg)))


def _default_run_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra job
        return Path("outputs") / "manual"


@dataclass
class Run:
    """Everything one training run works on."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    train_split: Split
    test_split: Split
    val_split: Split | None  # dataset.val_size images held out of the training set, or None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: RampSchedule
    data_generator: torch.Generator
    radius_generator: torch.Generator  # the GM estimator's radius draws (gm.estimator=sampled)
    arch: dict
    world: World = SINGLE
    provenance: dict | None = None  # the code and machine, read when the run starts
    writer: SummaryWriter | None = None

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME


def train(cfg, run_dir: str | Path | None = None) -> dict:
    """Train, checkpoint every epoch, evaluate; returns the final metrics (also in metrics.json)."""
    cfg = _as_config(cfg)
    check_config(cfg, certifiers=CERTIFIERS)
    world = world_from_env()
    device = resolve_device(cfg.device, world)
    start_world(world, device)
    try:
        metrics = _train(cfg, Path(run_dir) if run_dir is not None else _default_run_dir(), world, device)
    except BaseException:
        stop_world(world, finished=False)
        raise
    stop_world(world)
    return metrics


def _train(cfg: DictConfig, run_dir: Path, world: World, device: torch.device) -> dict:
    run = _build_run(cfg, run_dir, world, device)
    start_epoch, step, seconds_before = _restore(run)
    # Only rank 0 writes TensorBoard, checkpoints and metrics.json.
    run.writer = (
        # purge_step: points of the killed run after its last checkpoint go; the checkpointed
        # epoch's own points (logged at `step`) stay.
        SummaryWriter(log_dir=str(run.run_dir), purge_step=step + 1 if step else None)
        if world.is_main
        else NullWriter()
    )
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            step, line = _train_epoch(run, epoch, step)
            if cfg.eval.every and (epoch + 1) % cfg.eval.every == 0 and epoch + 1 < cfg.epochs:
                # Model selection reads the validation images when there are any, never the test set.
                metrics = _evaluate(run, (run.val_split or run.test_split).subset(cfg.eval.subset))
                log_eval_scalars(run.writer, metrics, step)
                line += f"  | val clean {metrics['clean_err']:.4f}  " + _verified_summary(metrics, cfg.eps)
            log.info(line)
            if world.is_main:
                save_checkpoint(
                    run.checkpoint,
                    model=run.model,
                    optimizer=run.optimizer,
                    epoch=epoch + 1,
                    step=step,
                    data_generator=run.data_generator,
                    radius_generator=run.radius_generator,
                    seconds=seconds_before + time.perf_counter() - started,
                    arch=run.arch,
                    config=OmegaConf.to_container(run.cfg, resolve=True, enum_to_str=True),
                )
            run.writer.flush()
        metrics = _final_evaluation(run, step, seconds_before + time.perf_counter() - started)
    finally:
        run.writer.close()
    if world.is_main:
        atomic_write_text(run.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log.info(
        "final (%d test samples): clean %.4f  %s",
        len(run.test_split),
        metrics["clean_err"],
        _verified_summary(metrics, cfg.eps),
    )
    log.info("run folder: %s", run.run_dir.resolve())
    return metrics


def _build_run(cfg: DictConfig, run_dir: Path, world: World, device: torch.device) -> Run:
    run_dir.mkdir(parents=True, exist_ok=True)
    train_split, val_split, test_split = load_data(cfg)
    _check_world(cfg, world, len(train_split))
    torch.manual_seed(cfg.seed)
    model_options = OmegaConf.to_container(cfg.model.options, resolve=True)
    try:
        stats_of = stats_dataset(cfg.dataset.name)
        model = build_model(cfg.model.name, stats_of, **model_options)
        if cfg.model.init == "ibp":
            ibp_init_(model)
        model = model.to(device)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"model={cfg.model.name} with model.options={model_options}: {err}; "
            "see the builder's parameters in certtrain/models or certtrain/lipschitz/zoo.py"
        ) from err
    trains_robustly = get_method(cfg.method.name).loss is not None
    schedule = RampSchedule(
        eps_train=train_eps(cfg) if trains_robustly else 0.0,
        steps_per_epoch=math.ceil(len(train_split) / cfg.batch_size),
        warmup_epochs=cfg.schedule.warmup_epochs,
        ramp_epochs=cfg.schedule.ramp_epochs,
        shape=cfg.schedule.ramp_shape,
        kappa_final=cfg.method.kappa_final,
        beta_start=cfg.method.beta_start,
        beta_final=cfg.method.beta_final,
    )
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        train_split=train_split,
        test_split=test_split,
        val_split=val_split,
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        schedule=schedule,
        data_generator=torch.Generator().manual_seed(cfg.seed),
        # Its own stream, so the data order does not depend on the estimator.
        radius_generator=torch.Generator().manual_seed(cfg.seed + RADIUS_SEED_OFFSET),
        arch={"model": cfg.model.name, "dataset": stats_of, **({"options": model_options} if model_options else {})},
        world=world,
        provenance=provenance(device),
    )


def _check_world(cfg, world: World, train_size: int) -> None:
    """Every rank needs at least one sample of every global batch (the last one included)."""
    if not world.active:
        return
    last = train_size % cfg.batch_size
    if cfg.batch_size < world.size or 0 < last < world.size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch, shared by {world.size} ranks, and the last batch of "
            f"an epoch has {last or cfg.batch_size} of the {train_size} training samples: every rank needs one. "
            f"Use batch_size >= {world.size} with dataset.train_size a multiple of it, or fewer ranks"
        )


def _restore(run: Run) -> tuple[int, int, float]:
    """(epochs done, global step, seconds spent) from the run folder's checkpoint when resuming."""
    if run.cfg.resume and run.checkpoint.is_file():
        done = load_checkpoint(
            run.checkpoint,
            model=run.model,
            optimizer=run.optimizer,
            data_generator=run.data_generator,
            arch=run.arch,
            radius_generator=run.radius_generator,
        )
        log.info("resuming from %s after epoch %d", run.checkpoint, done["epoch"])
        return done["epoch"], done["step"], done["seconds"]
    if run.cfg.resume:
        log.warning("resume=true but %s does not exist: starting from scratch", run.checkpoint)
    elif run.checkpoint.is_file() or (run.run_dir / "metrics.json").is_file():
        if not run.cfg.overwrite:
            raise ConfigError(
                f"{run.run_dir} already holds a run (checkpoint.pt / metrics.json); resume=true continues it, "
                "overwrite=true deletes it and starts afresh, or choose another folder (hydra.run.dir=...)"
            )
        if run.world.is_main:
            _delete_run_outputs(run.run_dir)
        barrier(run.world)
    return 0, 0, 0.0


def _delete_run_outputs(run_dir: Path) -> None:
    """What overwrite=true removes: the old run's checkpoint, metrics, figure and TensorBoard events."""
    for pattern in (CHECKPOINT_NAME, "metrics.json", "verified_err.png", "events.out.tfevents*"):
        for path in run_dir.glob(pattern):
            path.unlink()
    log.warning("overwrite=true: deleted the previous run's outputs in %s", run_dir)


def _train_epoch(run: Run, epoch: int, step: int) -> tuple[int, str]:
    """One pass over the training set; returns the new global step and the epoch's log line."""
    cfg, model, schedule = run.cfg, run.model, run.schedule
    lr = step_lr(cfg.lr, epoch, cfg.schedule.lr_milestones, cfg.schedule.lr_gamma)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    started = time.perf_counter()
    model.train()
    # Sums stay on the device: reading a value back waits for the device, so the step does that
    # only every log_every steps (and at the end of the epoch).
    loss_sum = torch.zeros((), device=run.device)
    wrong = torch.zeros((), dtype=torch.long, device=run.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
    seen, checked_until = 0, step
    batches = _batches(run.train_split, cfg.batch_size, run.data_generator, cfg.dataset.augment, run.device)
    total = math.ceil(len(run.train_split) / cfg.batch_size)
    bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None, leave=False)
    world = run.world
    for x, y in bar:
        global_batch = len(y)
        begin, end = world.shard(global_batch)
        x, y = x[begin:end], y[begin:end]
        eps_t, kappa, beta = schedule.eps(step), schedule.kappa(step), schedule.beta(step)
        with allow_tf32(cfg.train_tf32):
            logits = model(x)
            ctx = RobustContext(
                model,
                x,
                y,
                eps_t,
                beta,
                cfg.gm.n,
                cfg.gm.weights,
                method=cfg.method,
                gm_estimator=cfg.gm.estimator,
                loss_fusion=cfg.method.loss_fusion,
                generator=run.radius_generator,
                batch_shard=(begin, end, global_batch) if world.active else None,
            )
            loss, _ = training_loss(cfg.method.name, ctx, kappa, logits)
            # This rank's share of the global batch's loss: the summed gradients are the global ones.
            loss = loss * (len(y) / global_batch)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        sum_gradients(model, world)
        if cfg.schedule.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.schedule.grad_clip)
        run.optimizer.step()
        average_buffers(model, world)
        loss = loss.detach()
        nonfinite |= ~torch.isfinite(loss)
        loss_sum += loss * global_batch
        wrong += (logits.detach().argmax(1) != y).sum()
        seen += global_batch
        if step % cfg.log_every == 0:
            _stop_if_diverged(run, nonfinite, epoch, checked_until, step, lr)
            checked_until = step + 1
            value = sum_over_ranks(loss.clone(), world).item()
            for tag, scalar in (("loss", value), ("eps", eps_t), ("kappa", kappa), ("beta", beta), ("lr", lr)):
                run.writer.add_scalar(f"train/{tag}", scalar, step)
            bar.set_postfix(loss=f"{value:.3f}", eps=f"{eps_t:.3g}")
        step += 1
    _stop_if_diverged(run, nonfinite, epoch, checked_until, step - 1, lr)
    totals = sum_over_ranks(torch.stack([loss_sum, wrong.to(loss_sum.dtype)]), world)
    epoch_loss, train_err = totals[0].item() / seen, totals[1].item() / seen
    run.writer.add_scalar("train/epoch_loss", epoch_loss, step)
    line = (
        f"epoch {epoch + 1}/{cfg.epochs}  loss {epoch_loss:.4f}  train_err {train_err:.4f}  eps {eps_t:.4g}  "
        f"kappa {kappa:.3g}  beta {beta:.3g}  lr {lr:.3g}  {time.perf_counter() - started:.1f}s"
    )
    return step, line


def _stop_if_diverged(run: Run, nonfinite: torch.Tensor, epoch: int, first: int, last: int, lr: float) -> None:
    """Raise TrainingDiverged if a loss since step `first` was NaN or infinite (checked before any
    checkpoint of this epoch is written, so the kept checkpoint predates the divergence)."""
    if not sum_over_ranks(nonfinite.int(), run.world).item():  # every rank stops together
        return
    steps = f"step {last}" if first >= last else f"a step between {first} and {last}"
    kept = (
        f"the checkpoint of the last finished epoch ({run.checkpoint}) is kept"
        if run.checkpoint.is_file() and epoch > 0
        else "no checkpoint was written yet (it diverged in the first epoch)"
    )
    raise TrainingDiverged(
        f"the loss became NaN or infinite at epoch {epoch + 1}, {steps} (lr {lr:.3g}); {kept}. Lower lr, set "
        "schedule.grad_clip, or lengthen schedule.ramp_epochs, then rerun (resume=true continues from the checkpoint)"
    )


def _evaluate(run: Run, split: Split, final: bool = False) -> dict:
    cfg = run.cfg
    return evaluate(
        run.model,
        split,
        eps_grid=eval_grid(cfg),
        bounds=_eval_bounds(cfg, final),
        pgd_steps=cfg.eval.pgd_steps,
        pgd_restarts=cfg.eval.pgd_restarts,
        attack=str(cfg.eval.attack),
        apgd_steps=cfg.eval.apgd_steps,
        apgd_restarts=cfg.eval.apgd_restarts,
        certifiers={**CERTIFIERS, "bab": bab_certifier(cfg.eval.bab_seconds)},
        batch_size=cfg.eval.batch_size,
        device=run.device,
        seed=cfg.seed + run.world.rank,  # each rank's PGD restarts differ, like one longer stream
        world=run.world,
    )


def _final_evaluation(run: Run, step: int, seconds: float) -> dict:
    """Metrics on the whole test set, the drawdown figure and the hyper-parameters."""
    cfg = run.cfg
    metrics = _evaluate(run, run.test_split, final=True)
    if run.val_split is not None:  # the validation figures a sweep selects by, beside the test's
        metrics["val"] = _evaluate(run, run.val_split, final=True)
    log_eval_scalars(run.writer, metrics, step)
    log.info(
        "final evaluation, seconds per certifier over %d samples x %d radii: %s",
        len(run.test_split),
        len(eval_grid(cfg)),
        "  ".join(f"{b} {s:.1f}" for b, s in metrics["certify_seconds"].items()),
    )
    metrics.update(
        data_source=run.train_split.source,
        epochs=cfg.epochs,
        seconds=round(seconds, 1),
        method=cfg.method.name,
        model=cfg.model.name,
        dataset=cfg.dataset.name,
        eps=cfg.eps,
        eps_train=train_eps(cfg),
        train_samples=len(run.train_split),
        test_samples=len(run.test_split),
        val_samples=len(run.val_split) if run.val_split is not None else 0,
        device=str(run.device),
        seed=cfg.seed,
        gm_estimator=cfg.gm.estimator,
        loss_fusion=cfg.method.loss_fusion,
        gm_n=get_method(cfg.method.name).gm_n(cfg.gm.n),
        provenance=run.provenance,
        world_size=run.world.size,
    )
    if run.world.is_main:
        title = f"{cfg.method.name} {cfg.model.name} {cfg.dataset.name} eps_train {train_eps(cfg):g}"
        save_drawdown(run.writer, metrics, run.run_dir, step, title)
        log_hparams(run.writer, flat_hparams(cfg), metrics)
    return metrics


def _verified_summary(metrics: dict, eps: float) -> str:
    """'verified@0.1 ibp 0.0412 crown-ibp 0.0398  pgd 0.0210' (then '  apgd 0.0230' with
    eval.attack=apgd) at the grid radius closest to eps."""
    radii = list(metrics["pgd_err"])
    if not radii:
        return ""
    key = min(radii, key=lambda e: abs(float(e) - eps))
    verified = "  ".join(f"{bound} {curve[key]:.4f}" for bound, curve in metrics["verified_err"].items())
    apgd = f"  apgd {metrics['apgd_err'][key]:.4f}" if "apgd_err" in metrics else ""
    return f"verified@{key} {verified}  pgd {metrics['pgd_err'][key]:.4f}{apgd}"


def _eval_bounds(cfg, final: bool = False) -> list[str]:
    """eval.bounds (eval.final_bounds at the end, when set, else eval.bounds and the method's
    final certifiers), plus the certifiers the method brings (e.g. the Lipschitz certificate of
    method=lipschitz); see certtrain.methods.record.Method."""
    record = get_method(cfg.method.name)
    if final and cfg.eval.final_bounds is not None:
        bounds = list(cfg.eval.final_bounds)
    else:
        bounds = list(cfg.eval.bounds) + list(record.final_certifiers if final else ())
    return list(dict.fromkeys(bounds + list(record.certifiers)))
