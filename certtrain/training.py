"""train(cfg) -> metrics: data -> model -> loss (bounds) -> optimiser -> evaluation -> logs.

The run folder receives: TensorBoard events, checkpoint.pt (every epoch), metrics.json and
verified_err.png (the drawdown curve at the end).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from certtrain.augment import random_crop_flip
from certtrain.checkpoints import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from certtrain.config import TrainConfig, check_config, eval_grid, train_eps
from certtrain.data import Split, to_float
from certtrain.download import load_or_download
from certtrain.evaluate import evaluate
from certtrain.losses import ROBUST_LOSSES, RobustContext, training_loss
from certtrain.models import build_model
from certtrain.reporting import flat_hparams, log_eval_scalars, log_hparams, save_drawdown
from certtrain.schedules import RampSchedule, step_lr

log = logging.getLogger(__name__)

MODEL_STATS_OF = {"mnist5k": "mnist"}  # mnist5k digits are MNIST digits: same normalisation


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def load_data(cfg) -> tuple[Split, Split]:
    train = load_or_download(cfg.dataset.name, "train", cfg.data_dir).subset(cfg.dataset.train_size)
    test = load_or_download(cfg.dataset.name, "test", cfg.data_dir).subset(cfg.dataset.test_size)
    if train.source != test.source:  # never mix sources silently
        raise RuntimeError(f"train and test come from different sources: {train.source} / {test.source}")
    log.info("data: %s (%d train, %d test)", train.source, len(train), len(test))
    return train, test


def _batches(split: Split, batch_size: int, generator: torch.Generator, augment: bool):
    order = torch.randperm(len(split), generator=generator)
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        images = split.images[index]
        if augment:
            images = random_crop_flip(images, generator)
        yield to_float(images), split.labels[index]


def _as_config(cfg) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    return OmegaConf.structured(cfg if cfg is not None else TrainConfig())


def _default_run_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra job
        return Path("outputs") / "manual"


def train(cfg, run_dir: str | Path | None = None) -> dict:
    """Train, checkpoint every epoch, evaluate; returns the final metrics (also in metrics.json)."""
    cfg = _as_config(cfg)
    check_config(cfg, methods=ROBUST_LOSSES)
    run_dir = Path(run_dir) if run_dir is not None else _default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    grid = eval_grid(cfg)
    train_split, test_split = load_data(cfg)

    torch.manual_seed(cfg.seed)
    data_generator = torch.Generator().manual_seed(cfg.seed)
    stats_of = MODEL_STATS_OF.get(cfg.dataset.name, cfg.dataset.name)
    model = build_model(cfg.model.name, stats_of).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    trains_robustly = ROBUST_LOSSES[cfg.method.name] is not None
    schedule = RampSchedule(
        eps_train=train_eps(cfg) if trains_robustly else 0.0,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=cfg.schedule.warmup_epochs,
        ramp_epochs=cfg.schedule.ramp_epochs,
        shape=cfg.schedule.ramp_shape,
        kappa_final=cfg.method.kappa_final,
        beta_start=cfg.method.beta_start,
        beta_final=cfg.method.beta_final,
    )
    arch = {"model": cfg.model.name, "dataset": stats_of}
    checkpoint = run_dir / CHECKPOINT_NAME
    start_epoch, step, seconds_before = 0, 0, 0.0
    if cfg.resume and checkpoint.is_file():
        done = load_checkpoint(checkpoint, model=model, optimizer=optimizer, data_generator=data_generator, arch=arch)
        start_epoch, step, seconds_before = done["epoch"], done["step"], done["seconds"]
        log.info("resuming from %s after epoch %d", checkpoint, start_epoch)
    elif cfg.resume:
        log.warning("resume=true but %s does not exist: starting from scratch", checkpoint)
    elif checkpoint.is_file():
        log.warning("%s exists and resume=false: starting from scratch and overwriting it", checkpoint)

    writer = SummaryWriter(log_dir=str(run_dir), purge_step=step if step else None)
    evaluation = dict(
        eps_grid=grid,
        bounds=list(cfg.eval.bounds),
        pgd_steps=cfg.eval.pgd_steps,
        pgd_restarts=cfg.eval.pgd_restarts,
        batch_size=cfg.eval.batch_size,
        device=device,
        seed=cfg.seed,
    )
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            lr = step_lr(cfg.lr, epoch, cfg.schedule.lr_milestones, cfg.schedule.lr_gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr
            epoch_started = time.perf_counter()
            model.train()
            loss_sum, wrong, seen = 0.0, 0, 0
            batches = _batches(train_split, cfg.batch_size, data_generator, cfg.dataset.augment)
            bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None, leave=False)
            for x, y in bar:
                x, y = x.to(device), y.to(device)
                eps_t, kappa, beta = schedule.eps(step), schedule.kappa(step), schedule.beta(step)
                ctx = RobustContext(model, x, y, eps_t, beta, cfg.gm.n, cfg.gm.weights)
                logits = model(x)
                loss, _ = training_loss(cfg.method.name, ctx, kappa, logits)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at epoch {epoch + 1}, step {step} (eps {eps_t:.4g}, kappa {kappa:.3g}, "
                        f"lr {lr:.3g}); the last good checkpoint ({checkpoint}) is kept. Lower lr, set "
                        "schedule.grad_clip, or lengthen schedule.ramp_epochs, then rerun (resume=true continues "
                        "from the checkpoint)"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.schedule.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.schedule.grad_clip)
                optimizer.step()
                loss_sum += loss.item() * len(y)
                wrong += (logits.argmax(1) != y).sum().item()
                seen += len(y)
                if step % cfg.log_every == 0:
                    for tag, value in (("loss", loss.item()), ("eps", eps_t), ("kappa", kappa), ("beta", beta), ("lr", lr)):
                        writer.add_scalar(f"train/{tag}", value, step)
                bar.set_postfix(loss=f"{loss.item():.3f}", eps=f"{eps_t:.3g}")
                step += 1
            line = (
                f"epoch {epoch + 1}/{cfg.epochs}  loss {loss_sum / seen:.4f}  train_err {wrong / seen:.4f}  "
                f"eps {eps_t:.4g}  kappa {kappa:.3g}  beta {beta:.3g}  lr {lr:.3g}  {time.perf_counter() - epoch_started:.1f}s"
            )
            writer.add_scalar("train/epoch_loss", loss_sum / seen, step)
            if cfg.eval.every and (epoch + 1) % cfg.eval.every == 0 and epoch + 1 < cfg.epochs:
                metrics = evaluate(model, test_split.subset(cfg.eval.subset), **evaluation)
                log_eval_scalars(writer, metrics, step)
                line += f"  | val clean {metrics['clean_err']:.4f}  " + _verified_summary(metrics, cfg.eps)
            log.info(line)
            seconds = seconds_before + time.perf_counter() - started
            save_checkpoint(
                checkpoint, model=model, optimizer=optimizer, epoch=epoch + 1, step=step,
                data_generator=data_generator, seconds=seconds, arch=arch,
            )
            writer.flush()

        metrics = evaluate(model, test_split, **evaluation)
        log_eval_scalars(writer, metrics, step)
        metrics.update(
            data_source=train_split.source,
            epochs=cfg.epochs,
            seconds=round(seconds_before + time.perf_counter() - started, 1),
            method=cfg.method.name,
            model=cfg.model.name,
            dataset=cfg.dataset.name,
            eps=cfg.eps,
            eps_train=train_eps(cfg),
            train_samples=len(train_split),
            test_samples=len(test_split),
            device=str(device),
            seed=cfg.seed,
        )
        title = f"{cfg.method.name} {cfg.model.name} {cfg.dataset.name} eps_train {train_eps(cfg):g}"
        save_drawdown(writer, metrics, run_dir, step, title)
        log_hparams(writer, flat_hparams(cfg), metrics)
    finally:
        writer.close()
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("final (%d test samples): clean %.4f  %s", len(test_split), metrics["clean_err"], _verified_summary(metrics, cfg.eps))
    log.info("run folder: %s", run_dir.resolve())
    return metrics


def _verified_summary(metrics: dict, eps: float) -> str:
    """'verified@0.1 ibp 0.0412 crown-ibp 0.0398  pgd 0.0210' at the grid radius closest to eps."""
    radii = list(metrics["pgd_err"])
    if not radii:
        return ""
    key = min(radii, key=lambda e: abs(float(e) - eps))
    verified = "  ".join(f"{bound} {curve[key]:.4f}" for bound, curve in metrics["verified_err"].items())
    return f"verified@{key} {verified}  pgd {metrics['pgd_err'][key]:.4f}"
