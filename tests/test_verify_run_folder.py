"""verify.py run=<train.py run folder>: the network, dataset and eps come from the checkpoint;
bad run folders and a changed network get one-line errors, and finished rows are never lost."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from certtrain.checkpoints import weights_hash
from certtrain.verify_app.run_folder import RunFolderError, quote_path_overrides, read_run

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "dataset=mnist",
    "dataset.train_size=64",
    "dataset.test_size=16",
    "batch_size=32",
    "epochs=1",
    "model=mlp",
    "method=ibp",
    "eps=0.02",
    "eps_train=0.03",
    "schedule.warmup_epochs=0",
    "schedule.ramp_epochs=1",
    "eval.every=0",
    "eval.pgd_steps=2",
    "eval.eps_grid=[0.02]",
    "device=cpu",
]


def run_script(script, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A train.py run folder whose name holds '=' and ',' as Hydra's override names do."""
    folder = tmp_path_factory.mktemp("outputs") / "eps=0.02,method=ibp"
    result = run_script("train.py", *TINY, f"data_dir={data_dir}", f"hydra.run.dir='{folder}'")
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


def verify_run(folder, out, data_dir, *extra):
    return run_script(
        "verify.py",
        f"run={folder}",
        "samples=0:4",
        f"out={out}",
        f"data_dir={data_dir}",
        "pgd_steps=2",
        "pgd_restarts=1",
        "time_limit=30",
        *extra,
    )


def one_line_error(result, match):
    assert result.returncode == 1, result.stdout[-1000:] + result.stderr[-1000:]
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    assert match in text, text[-1500:]


def test_run_folder_gives_network_dataset_and_eps_unquoted(trained, data_dir, tmp_path):
    result = verify_run(trained, tmp_path / "out", data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    settings = json.loads((tmp_path / "out" / "run.json").read_text())
    assert settings["model"] == "mlp" and settings["dataset"] == "mnist" and settings["eps"] == 0.02
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert settings["weights_sha256"] == state["weights_sha256"] == weights_hash(state["model"])
    assert len(list(csv.DictReader(open(tmp_path / "out" / "samples.csv")))) == 4


def test_eps_above_the_training_radius_is_allowed_and_said(trained, data_dir, tmp_path):
    result = verify_run(trained, tmp_path / "out", data_dir, "eps=0.05")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "above the radius the run was trained at (eps_train=0.03)" in result.stdout + result.stderr


def test_changed_weights_into_the_same_out_folder_are_refused(trained, data_dir, tmp_path):
    out = tmp_path / "out"
    assert verify_run(trained, out, data_dir).returncode == 0
    before = (out / "samples.csv").read_text()
    changed = tmp_path / "changed"
    changed.mkdir()
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 0.01  # the network changed, the stored hash did not
    torch.save(state, changed / "checkpoint.pt")
    one_line_error(verify_run(changed, out, data_dir), "holds results of another network")
    assert (out / "samples.csv").read_text() == before


@pytest.mark.parametrize("case", ["missing_folder", "no_checkpoint", "unknown_model", "no_config"])
def test_bad_run_folders_get_one_line_errors(trained, data_dir, tmp_path, case):
    folder = tmp_path / "run"
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    if case != "missing_folder":
        folder.mkdir()
    if case == "unknown_model":
        state["config"]["model"]["name"] = "resnet1000"
        torch.save(state, folder / "checkpoint.pt")
    if case == "no_config":
        del state["config"]
        torch.save(state, folder / "checkpoint.pt")
    expected = {
        "missing_folder": "is not a folder",
        "no_checkpoint": "holds no checkpoint.pt",
        "unknown_model": "'resnet1000' network",
        "no_config": "pass weights=<checkpoint> with model=",
    }[case]
    with pytest.raises(RunFolderError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        read_run(folder)
    one_line_error(verify_run(folder, tmp_path / "out", data_dir), expected)


def test_run_and_model_together_are_refused(trained, data_dir, tmp_path):
    one_line_error(verify_run(trained, tmp_path / "out", data_dir, "model=wk17a"), "must not be given too")


def test_path_overrides_are_quoted_only_where_hydra_needs_it():
    argv = [
        "verify.py",
        "run=multirun/2026-12-01_05-00-00/eps=0.5,method=ibp",
        "out=results/plain",
        "samples=0:10",
        "weights='already/quoted=1'",
        "eps=0.1",
    ]
    assert quote_path_overrides(argv) == [
        "verify.py",
        "run='multirun/2026-12-01_05-00-00/eps=0.5,method=ibp'",
        "out=results/plain",
        "samples=0:10",
        "weights='already/quoted=1'",
        "eps=0.1",
    ]
