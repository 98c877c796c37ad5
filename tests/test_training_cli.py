"""The real CLI for each method on a tiny data set, a multirun, resume, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from certtrain import training
from certtrain.checkpoints import CheckpointError
from certtrain.config import ConfigError, register_configs
from certtrain.data import DataError
from certtrain.training import TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["standard", "ibp", "crown_ibp", "gm_ibp", "gm_crown_ibp"]
# A few seconds per run: 64 training and 16 test images, one epoch, two radii.
TINY = [
    "dataset=mnist",
    "dataset.train_size=64",
    "dataset.test_size=16",
    "batch_size=32",
    "epochs=2",
    "model=mlp",
    "eps=0.1",
    "schedule.warmup_epochs=0",
    "schedule.ramp_epochs=1",
    "eval.every=1",
    "eval.subset=8",
    "eval.pgd_steps=2",
    "eval.eps_grid=[0.05,0.1]",
    "gm.n=2",
    "device=cpu",
    "log_every=1",
]


def run_cli(*overrides, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def compose_config(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def scalar_tags(run_dir: Path) -> set[str]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def check_run_folder(run_dir: Path, grid=("0.05", "0.1")) -> dict:
    """The contracted outputs of one run: metrics.json, TensorBoard tags, figure, checkpoint."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["clean_err"] <= 1.0
    assert set(metrics["pgd_err"]) == set(grid)
    assert set(metrics["verified_err"]) == {"ibp", "crown-ibp", "best"}  # best: the per-sample union
    for curve in metrics["verified_err"].values():
        for eps, err in curve.items():
            assert metrics["pgd_err"][eps] <= err  # PGD finds errors only where no certificate holds
    assert metrics["epochs"] == 2 and metrics["data_source"].startswith("mnist:")
    tags = scalar_tags(run_dir)
    expected = {"train/loss", "train/eps", "train/kappa", "train/beta", "val/clean_err"}
    expected |= {f"val/pgd_err/eps_{e}" for e in grid}
    expected |= {f"val/verified_err/{b}/eps_{e}" for b in ("ibp", "crown-ibp") for e in grid}
    assert expected <= tags
    # hparams live in the run's own event file: no stray sub-runs
    assert not [p for p in run_dir.rglob("events.out.tfevents*") if p.parent != run_dir]
    assert (run_dir / "verified_err.png").stat().st_size > 0
    assert (run_dir / "checkpoint.pt").is_file()
    return metrics


@pytest.mark.slow
def test_cli_single_run_writes_the_contracted_outputs(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("method=gm_crown_ibp", *TINY, f"data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_run_folder(run_dir)
    assert metrics["method"] == "gm_crown_ibp"


def test_final_evaluation_may_use_alpha_crown_and_logs_each_certifiers_cost(data_dir, tmp_path):
    cfg = compose_config(
        "method=ibp", *TINY, f"data_dir={data_dir}", "eval.every=0", "eval.final_bounds=[ibp,crown-ibp,alpha-crown]"
    )
    metrics = train(cfg, run_dir=tmp_path)
    assert set(metrics["verified_err"]) == {"ibp", "crown-ibp", "alpha-crown", "best"}
    for eps, ibp in metrics["verified_err"]["ibp"].items():
        assert metrics["pgd_err"][eps] <= metrics["verified_err"]["alpha-crown"][eps] <= ibp  # alpha >= IBP bound
        # the per-sample union is at most every certifier's own figure, and at least PGD's
        single = min(curve[eps] for bound, curve in metrics["verified_err"].items() if bound != "best")
        assert metrics["pgd_err"][eps] <= metrics["verified_err"]["best"][eps] <= single
    assert set(metrics["certify_seconds"]) == {"ibp", "crown-ibp", "alpha-crown"}
    assert metrics["certify_seconds"]["alpha-crown"] > metrics["certify_seconds"]["ibp"] > 0
    assert {f"cost/certify_seconds/{b}" for b in ("ibp", "crown-ibp", "alpha-crown")} <= scalar_tags(tmp_path)


def test_final_evaluation_may_certify_by_branch_and_bound(data_dir, tmp_path):
    cfg = compose_config(
        "method=ibp",
        *TINY,
        f"data_dir={data_dir}",
        "eval.every=0",
        "eval.final_bounds=[ibp,bab]",
        "eval.bab_seconds=0.5",
    )
    metrics = train(cfg, run_dir=tmp_path)
    assert set(metrics["verified_err"]) == {"ibp", "bab", "best"}
    for eps, bab in metrics["verified_err"]["bab"].items():
        assert metrics["pgd_err"][eps] <= bab <= 1.0
        assert metrics["verified_err"]["best"][eps] <= min(bab, metrics["verified_err"]["ibp"][eps])
    assert metrics["certify_seconds"]["bab"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.final_bounds=[ibp,bab]", "eval.bab_seconds=0"], "eval.bab_seconds=0"),
        (["eval.final_bounds=[bab]", "method=lipschitz", "model=lipschitz_mlp"], "has none"),
    ],
)
def test_bad_branch_and_bound_evaluation_names_the_fix(data_dir, tmp_path, overrides, message):
    cfg = compose_config("method=ibp", *TINY, f"data_dir={data_dir}", *overrides)
    with pytest.raises(ConfigError, match=message):
        train(cfg, run_dir=tmp_path)


def test_unknown_final_certifier_is_a_config_error(data_dir, tmp_path):
    cfg = compose_config("method=ibp", *TINY, f"data_dir={data_dir}", "eval.final_bounds=[ibp,beta-crown]")
    with pytest.raises(ConfigError, match="eval.final_bounds entry.*beta-crown"):
        train(cfg, run_dir=tmp_path)


@pytest.mark.slow
def test_multirun_trains_every_method_in_folders_named_by_overrides(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        f"method={','.join(METHODS)}",
        "eps=0.1,0.2",
        *[o for o in TINY if not o.startswith("eps=")],
        f"data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert len(runs) == 2 * len(METHODS)
    for method in METHODS:
        for eps, grid in (("0.1", ("0.05", "0.1")), ("0.2", ("0.05", "0.1"))):
            [run_dir] = [r for r in runs if f"method={method}," in r.name + "," and f"eps={eps}," in r.name + ","]
            assert check_run_folder(run_dir, grid)["method"] == method
    assert not any("data_dir" in r.name for r in runs)  # the data location is not a hyper-parameter

    summary = subprocess.run(
        [sys.executable, "-m", "certtrain.summarize", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert summary.returncode == 0, summary.stderr[-2000:]
    table = (sweep / "summary.md").read_text().splitlines()
    assert len(table) == 2 + 2 * len(METHODS) and "verified_ibp@0.1" in table[0]
    assert (sweep / "summary.csv").is_file() and (sweep / "summary.png").stat().st_size > 0


def _tiny_config(data_dir, *extra, method=("method=ibp",)):
    return compose_config(*method, *TINY, f"data_dir={data_dir}", *extra)


# The sampled GM estimator draws radii from its own seeded generator: resume must continue it.
RESUMED_METHODS = {
    "ibp": ("method=ibp",),
    "gm_sampled_fused": ("method=gm_crown_ibp", "gm.estimator=sampled", "method.loss_fusion=true"),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(RESUMED_METHODS))
def test_resume_after_an_interruption_gives_the_uninterrupted_result(data_dir, tmp_path, monkeypatch, method):
    method = RESUMED_METHODS[method]
    whole = train(_tiny_config(data_dir, "epochs=3", method=method), run_dir=tmp_path / "whole")

    real_save = training.save_checkpoint

    def save_then_crash(path, **state):
        real_save(path, **state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # the job is killed right after its first checkpoint

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_config(data_dir, "epochs=3", method=method), run_dir=tmp_path / "interrupted")
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    resumed = train(_tiny_config(data_dir, "epochs=3", "resume=true", method=method), run_dir=tmp_path / "interrupted")

    for key in ("clean_err", "pgd_err", "verified_err", "epochs"):
        assert resumed[key] == whole[key]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["schedule"] == b["schedule"] == {"epoch": 3, "step": 6}


@pytest.mark.slow
def test_checkpoint_from_another_architecture_is_refused(data_dir, tmp_path):
    train(_tiny_config(data_dir, "epochs=1"), run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="without resume=true"):
        train(_tiny_config(data_dir, "epochs=2", "model=dm_small", "resume=true"), run_dir=tmp_path)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    real_loss = training.training_loss
    calls = []

    def loss_that_explodes(*args, **kwargs):
        loss, parts = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 3 else loss), parts  # two steps per epoch

    monkeypatch.setattr(training, "training_loss", loss_that_explodes)
    with pytest.raises(TrainingDiverged, match="Lower lr") as err:
        train(_tiny_config(data_dir, "epochs=3"), run_dir=tmp_path)
    assert "epoch 2" in str(err.value)
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert kept["schedule"]["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in kept["model"].values())


def test_missing_data_stops_with_a_message_naming_the_fix(tmp_path):
    with pytest.raises(DataError, match="data_dir"):
        train(compose_config("dataset=mnist", f"data_dir={tmp_path}"), run_dir=tmp_path / "run")


@pytest.mark.slow
def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    result = run_cli("eps=-0.5", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1
    assert "eps >= 0" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_names_the_fix(tmp_path):
    from certtrain.config import ConfigError

    with pytest.raises(ConfigError, match="device=cpu or device=auto"):
        train(compose_config("device=cuda"), run_dir=tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method=ibp", "method.loss_fusion=true"), "needs a CROWN backward pass"),
    ],
)
def test_bad_estimator_and_fusion_settings_name_the_fix(tmp_path, overrides, message):
    from certtrain.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        train(compose_config(*overrides), run_dir=tmp_path)


@pytest.mark.slow
def test_sampled_runs_differ_by_seed_and_repeat_by_seed(data_dir, tmp_path):
    method = ("method=gm_crown_ibp", "gm.estimator=sampled", "gm.n=4")
    first = train(_tiny_config(data_dir, method=method), run_dir=tmp_path / "a")
    again = train(_tiny_config(data_dir, method=method), run_dir=tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a) and first["clean_err"] == again["clean_err"]
    train(_tiny_config(data_dir, "seed=1", method=method), run_dir=tmp_path / "c")
    c = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def run_torchrun(nproc, *overrides):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(ROOT / "train.py"),
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


DISTRIBUTED_METHODS = {
    "ibp": ("method=ibp",),
    "gm_crown_ibp": ("method=gm_crown_ibp",),
    "gm_crown_ibp_sampled_fused": ("method=gm_crown_ibp", "gm.estimator=sampled", "method.loss_fusion=true"),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(DISTRIBUTED_METHODS))
def test_two_ranks_reach_the_parameters_of_one_process(data_dir, tmp_path, method):
    # 48 samples in global batches of 32: the last batch (16) is shared 8 / 8, the others 16 / 16.
    overrides = [*DISTRIBUTED_METHODS[method], *TINY, "dataset.train_size=48", f"data_dir={data_dir}"]
    one = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_torchrun(2, *overrides, f"hydra.run.dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["model"]
    # Relative in each tensor's norm: the two sum the batch in different orders, and Adam moves an
    # entry whose gradient is at rounding level by about lr either way (30 of 262,144 entries here).
    for key in a:
        # 3e-5: on this machine f38f04c itself gives 1.0e-5 relative on 4.weight (gm_crown_ibp sampled + fused).
        assert (b[key] - a[key]).norm() <= 3e-5 * a[key].norm() + 1e-12, key
    metrics = check_run_folder(tmp_path / "two")
    assert metrics["world_size"] == 2
    assert len(list((tmp_path / "two").glob("events.out.tfevents*"))) == 1  # one TensorBoard stream


@pytest.mark.slow
def test_a_batch_the_ranks_cannot_share_names_the_fix(data_dir, tmp_path):
    # 33 samples in batches of 32: the last batch has one sample for two ranks.
    result = run_torchrun(
        2, "method=ibp", *TINY, "dataset.train_size=33", f"data_dir={data_dir}", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode != 0
    assert "every rank needs one" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_sweep_records_failed_jobs_and_runs_the_others(data_dir, tmp_path):
    # eps=-0.1 is refused, lr=1e30 diverges; eps=0.2 must still run, and the sweep exits 1 at the end.
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "method=ibp",
        *[o for o in TINY if not o.startswith("eps=")],
        f"data_dir={data_dir}",
        "eps=0.1,-0.1,0.2",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 1
    jobs = {p.name: p for p in sweep.iterdir() if p.is_dir()}
    failed = [name for name, p in jobs.items() if (p / "FAILED").is_file()]
    assert len(failed) == 1 and "eps=-0.1" in failed[0]
    assert "eps >= 0" in (jobs[failed[0]] / "FAILED").read_text()
    assert sum((p / "metrics.json").is_file() for p in jobs.values()) == 2
    diverged = run_cli(
        "-m", "method=ibp", *TINY, f"data_dir={data_dir}", "lr=1e30,1e-3", f"hydra.sweep.dir={tmp_path / 'lr'}"
    )
    assert diverged.returncode == 1
    markers = list((tmp_path / "lr").rglob("FAILED"))
    assert len(markers) == 1 and "TrainingDiverged" in markers[0].read_text()
    assert len(list((tmp_path / "lr").rglob("metrics.json"))) == 1


@pytest.mark.slow
def test_a_finished_run_is_never_overwritten_silently(data_dir, tmp_path):
    train(_tiny_config(data_dir), run_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="resume=true continues it, overwrite=true"):
        train(_tiny_config(data_dir), run_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before and (tmp_path / "metrics.json").is_file()
    train(_tiny_config(data_dir, "overwrite=true"), run_dir=tmp_path)
    assert len(list(tmp_path.glob("events.out.tfevents*"))) == 1  # one stream, not two from step 0


@pytest.mark.slow
def test_resume_keeps_the_last_finished_epochs_tensorboard_points(data_dir, tmp_path, monkeypatch):
    real_save = training.save_checkpoint

    def save_then_crash(path, **state):
        real_save(path, **state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_config(data_dir, "epochs=3"), run_dir=tmp_path)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    train(_tiny_config(data_dir, "epochs=3", "resume=true"), run_dir=tmp_path)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    # Steps per epoch: 2. Epoch 1 ends at step 2, where its validation and epoch loss were logged.
    assert [e.step for e in events.Scalars("train/epoch_loss")] == [2, 4, 6]
    assert 2 in [e.step for e in events.Scalars("val/clean_err")]


def test_long_override_lists_get_a_short_stable_folder_name():
    from certtrain.config import MAX_FOLDER_NAME, run_folder_name

    overrides = ",".join(f"key{i}=value{i}" for i in range(60))
    name = run_folder_name(overrides)
    assert len(name.encode()) <= MAX_FOLDER_NAME and name.startswith("key0=value0,key1=value1")
    assert name == run_folder_name(overrides) != run_folder_name(overrides + ",x=1")
    assert run_folder_name("eps=0.1") == "eps=0.1" and run_folder_name("") == "defaults"


@pytest.mark.slow
def test_a_long_override_list_runs(data_dir, tmp_path):
    long_tail = [f"eval.eps_grid=[{','.join(f'0.0{i}' for i in range(1, 10))}]"] + [f"seed={12345678}"] * 0
    result = run_cli(
        "method=ibp",
        *[o for o in TINY if not o.startswith("eval.eps_grid")],
        *long_tail,
        "schedule.lr_milestones=[100,200,300,400,500,600,700,800,900,1000,1100,1200,1300,1400]",
        f"data_dir={data_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    (folder,) = (tmp_path / "outputs").iterdir()
    assert len(folder.name) <= 200 and (folder / "metrics.json").is_file()


def test_summarize_lists_failed_and_incomplete_runs_without_crashing(tmp_path):
    sweep = tmp_path / "sweep"
    good = {"clean_err": 0.1, "pgd_err": {"0.1": 0.2}, "verified_err": {"ibp": {"0.1": 0.3}}, "method": "ibp"}
    for name, content in (
        ("good", json.dumps(good)),
        ("truncated", json.dumps(good)[:40]),
        ("partial", '{"clean_err": 0.1}'),
    ):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "metrics.json").write_text(content)
    (sweep / "killed" / ".hydra").mkdir(parents=True)
    (sweep / "killed" / ".hydra" / "config.yaml").write_text("eps: 0.1\n")
    (sweep / "failed").mkdir()
    (sweep / "failed" / "FAILED").write_text("ConfigError: eps=-0.1 is negative\n")
    result = subprocess.run(
        [sys.executable, "-m", "certtrain.summarize", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = (sweep / "summary.md").read_text()
    for name, why in (
        ("truncated", "not valid JSON"),
        ("partial", "lacks pgd_err"),
        ("killed", "no metrics.json"),
        ("failed", "eps=-0.1"),
    ):
        assert f"`{name}`" in text and why in text, name
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 5  # header, the finished run and the four without results


def test_a_validation_split_is_held_out_seeded_and_reported(data_dir, tmp_path):
    from certtrain.data import load_split
    from certtrain.training import split_validation

    full = load_split("mnist", "train", data_dir)
    train_a, val_a = split_validation(full, 16, seed=3)
    train_b, val_b = split_validation(full, 16, seed=3)
    assert torch.equal(val_a.images, val_b.images) and len(train_a) == 48 and len(val_a) == 16
    _, val_c = split_validation(full, 16, seed=4)
    assert not torch.equal(val_a.images, val_c.images)  # the draw follows the seed
    # disjoint: no held-out image is trained on
    keys = lambda split: {
        bytes(image.numpy().tobytes()) + bytes([int(label)]) for image, label in zip(split.images, split.labels)
    }
    assert not keys(train_a) & keys(val_a) and len(keys(train_a) | keys(val_a)) == len(keys(full))
    metrics = train(
        compose_config("method=ibp", *TINY, "dataset.val_size=16", f"data_dir={data_dir}"), run_dir=tmp_path
    )
    assert metrics["train_samples"] == 48 and metrics["val_samples"] == 16 and metrics["test_samples"] == 16
    assert set(metrics["val"]["verified_err"]) == set(metrics["verified_err"])


def test_a_validation_split_larger_than_the_training_set_names_the_fix(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="dataset.val_size=64 leaves nothing to train on.*below 64"):
        train(compose_config("method=ibp", *TINY, "dataset.val_size=64", f"data_dir={data_dir}"), run_dir=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()
