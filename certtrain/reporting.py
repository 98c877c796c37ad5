"""TensorBoard and file outputs of a run: metric scalars, hyper-parameters, the drawdown figure."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from certtrain.atomic import atomic_savefig


class NullWriter:
    """The SummaryWriter of ranks other than 0 under torchrun: one TensorBoard stream per run."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def log_eval_scalars(writer: SummaryWriter, metrics: dict, step: int) -> None:
    """val/clean_err, val/pgd_err/eps_<e> (and val/apgd_err/eps_<e> with eval.attack=apgd),
    val/verified_err/<bound>/eps_<e>, cost/certify_seconds/<bound>."""
    writer.add_scalar("val/clean_err", metrics["clean_err"], step)
    for attack in ("pgd_err", "apgd_err"):
        for eps, err in metrics.get(attack, {}).items():
            writer.add_scalar(f"val/{attack}/eps_{eps}", err, step)
    for bound, curve in metrics["verified_err"].items():
        for eps, err in curve.items():
            writer.add_scalar(f"val/verified_err/{bound}/eps_{eps}", err, step)
    for bound, seconds in metrics.get("certify_seconds", {}).items():
        writer.add_scalar(f"cost/certify_seconds/{bound}", seconds, step)


def log_hparams(writer: SummaryWriter, hparam_dict: dict, final_metrics: dict) -> None:
    """Write hyper-parameters into the run's own event file.

    SummaryWriter.add_hparams would open a second writer in a sub-folder, which TensorBoard
    shows as a separate, stray run.
    """
    metric_dict = {"final/clean_err": final_metrics["clean_err"]}
    for bound, curve in final_metrics["verified_err"].items():
        for eps, err in curve.items():
            metric_dict[f"final/verified_err/{bound}/eps_{eps}"] = err
    experiment, start, end = hparams(hparam_dict, metric_dict)
    file_writer = writer._get_file_writer()
    for summary in (experiment, start, end):
        file_writer.add_summary(summary)
    for tag, value in metric_dict.items():
        writer.add_scalar(tag, value)


def drawdown_figure(metrics: dict, title: str = "") -> Figure:
    """Verified error (one curve per certifier) and PGD (and APGD, when evaluated) error against eps_eval."""
    figure = Figure(figsize=(5, 3.5), dpi=100)
    axes = figure.subplots()
    for bound, curve in metrics["verified_err"].items():
        radii = sorted(curve, key=float)
        axes.plot([float(e) for e in radii], [100 * curve[e] for e in radii], marker="o", label=f"verified ({bound})")
    pgd = metrics["pgd_err"]
    radii = sorted(pgd, key=float)
    axes.plot([float(e) for e in radii], [100 * pgd[e] for e in radii], "--", marker="x", label="PGD (lower bound)")
    if "apgd_err" in metrics:
        apgd = metrics["apgd_err"]
        radii = sorted(apgd, key=float)
        axes.plot(
            [float(e) for e in radii], [100 * apgd[e] for e in radii], ":", marker="+", label="APGD (lower bound)"
        )
    axes.set_xlabel("eps_eval (L-inf, pixel units)")
    axes.set_ylabel("error (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def save_drawdown(writer: SummaryWriter, metrics: dict, run_dir: Path, step: int, title: str) -> None:
    figure = drawdown_figure(metrics, title)
    atomic_savefig(figure, run_dir / "verified_err.png")
    writer.add_figure("val/verified_err_vs_eps", figure, step, close=False)


def flat_hparams(cfg) -> dict:
    """The hyper-parameters shown in TensorBoard's HPARAMS tab (scalars and strings only)."""
    values = {
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "eps": cfg.eps,
        "eps_train": cfg.eps if cfg.eps_train is None else cfg.eps_train,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "kappa_final": cfg.method.kappa_final,
        "beta_final": cfg.method.beta_final,
        "gm_n": cfg.gm.n,
        "gm_weights": cfg.gm.weights,
        "warmup_epochs": cfg.schedule.warmup_epochs,
        "ramp_epochs": cfg.schedule.ramp_epochs,
        "ramp_shape": cfg.schedule.ramp_shape,
    }
    return {key: (str(value) if value is None else value) for key, value in values.items()}
