"""experiments/gm/table3.py (mean +- sd over seeds, degenerate rows marked) and scripts/attack_runs.py
(PGD and APGD on a finished run folder)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_training_cli import TINY, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(
    folder: Path,
    method: str,
    kappa: float,
    seed: int,
    clean: float,
    verified: float,
    eps_train: float = 0.5,
    lr: float = 0.001,
) -> None:
    (folder / ".hydra").mkdir(parents=True)
    config = {"method": {"name": method, "kappa_final": kappa}, "schedule": {"ramp_epochs": 10.0}, "lr": lr}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"method={method}", f"seed={seed}"]))
    curve = {f"{e:g}": verified for e in (0.1, 0.2, 0.3, 0.4, 0.5)}
    split = {"clean_err": clean, "pgd_err": {"0.3": clean, "0.5": clean}, "verified_err": {"ibp": curve}}
    metrics = {
        **split,
        "val": split,
        "method": method,
        "eps_train": eps_train,
        "seed": seed,
        "epochs": 20,
        "seconds": 60,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    attack = {"samples": 100, "apgd_err": {"0.3": clean + 0.01, "0.5": 0.9}, "verified_err": {"0.3": 0.6, "0.5": 1.0}}
    (folder / "attack.json").write_text(json.dumps(attack))


def _table3(*args) -> None:
    command = [sys.executable, str(ROOT / "experiments" / "gm" / "table3.py"), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def _section(table: str, eps_train: float) -> list[str]:
    lines = table.splitlines()
    start = lines.index(f"### eps_train {eps_train:g}: mean +- sd over seeds")
    return lines[start : lines.index("", start + 2)]


def test_table3_keeps_an_earlier_csv_rows_of_the_radii_it_does_not_rebuild(tmp_path):
    for seed, clean in enumerate((0.1, 0.2, 0.3)):
        _fake_run(tmp_path / "old" / f"seed{seed}", "ibp", 0.5, seed, clean, 0.5)
        _fake_run(tmp_path / "new" / f"seed{seed}", "gm_ibp", 0.5, seed, clean / 2, 0.4, eps_train=0.6)
    _table3(tmp_path / "old", "--out", tmp_path / "first")
    _table3(tmp_path / "new", "--keep", tmp_path / "first" / "table3.csv", "--out", tmp_path / "second")
    first = list(csv.DictReader(open(tmp_path / "first" / "table3.csv")))
    second = list(csv.DictReader(open(tmp_path / "second" / "table3.csv")))
    assert [r for r in second if r["eps_train"] == "0.5"] == first
    assert len([r for r in second if r["eps_train"] == "0.6"]) == 3
    old_table, new_table = ((tmp_path / d / "table3.md").read_text() for d in ("first", "second"))
    assert _section(new_table, 0.5) == _section(old_table, 0.5)  # rebuilt from the CSV alone
    assert "gm_ibp, kappa_final 0.5" in "\n".join(_section(new_table, 0.6))
    assert (tmp_path / "second" / "fig3_eps0.5.png").is_file() and (tmp_path / "second" / "fig3_eps0.6.png").is_file()
    # a rebuilt radius is not kept twice
    _table3(tmp_path / "old", "--keep", tmp_path / "second" / "table3.csv", "--out", tmp_path / "third")
    third = list(csv.DictReader(open(tmp_path / "third" / "table3.csv")))
    assert sorted(r["eps_train"] for r in third) == ["0.5"] * 3 + ["0.6"] * 3


def test_table3_gives_mean_and_sd_over_seeds_and_marks_the_degenerate_rows(tmp_path):
    for seed, clean in enumerate((0.1, 0.2, 0.3)):
        _fake_run(tmp_path / "runs" / "ibp" / f"seed{seed}", "ibp", 0.5, seed, clean, 0.5)
    _fake_run(tmp_path / "runs" / "collapsed", "ibp", 0.0, 0, 0.8865, 0.8865)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "gm" / "table3.py"),
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "out" / "table3.md").read_text()
    seeded = [line for line in table.splitlines() if line.startswith("| ibp, kappa_final 0.5")]
    assert len(seeded) == 1
    cells = [c.strip() for c in seeded[0].strip("|").split("|")]
    assert cells[1] == "0, 1, 2"
    assert cells[2] == "20.00 +- 10.00"  # standard error of 10, 20, 30%
    assert cells[3] == "50.00 +- 0.00"
    assert cells[9] == "21.00 +- 10.00"  # APGD at 0.3
    degenerate = [line for line in table.splitlines() if "degenerate objective" in line]
    assert len(degenerate) == 1 and "| 0 |" in degenerate[0]
    rows = list(csv.DictReader(open(tmp_path / "out" / "table3.csv")))
    assert {r["seed"] for r in rows} == {"0", "1", "2"} and all(r["val_verified_err_0.3"] for r in rows)


def test_attack_runs_writes_pgd_and_apgd_figures_into_the_run_folder(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    trained = run_cli("method=ibp", *TINY, f"data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    command = [sys.executable, str(ROOT / "scripts" / "attack_runs.py"), str(run_dir), "--data-dir", str(data_dir)]
    result = subprocess.run(command + ["--samples", "8", "--steps", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    attack = json.loads((run_dir / "attack.json").read_text())
    assert attack["samples"] == 8 and set(attack["apgd_err"]) == {"0.3", "0.5"}
    for eps in ("0.3", "0.5"):
        assert attack["clean_err"] <= attack["pgd_err"][eps] <= attack["apgd_err"][eps] <= attack["verified_err"][eps]
    too_many = subprocess.run(command + ["--samples", "17"], capture_output=True, text=True, timeout=300)
    assert too_many.returncode != 0 and "test set has 16 images" in too_many.stderr


def test_table3_keep_names_a_missing_csv(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "experiments" / "gm" / "table3.py"),
        str(tmp_path),
        "--keep",
        str(tmp_path / "none.csv"),
    ]
    command += ["--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "no such table3.csv" in result.stderr
    assert not (tmp_path / "out").exists()


def test_table3_keep_replaces_only_the_rows_a_new_run_repeats(tmp_path):
    for seed in (0, 1, 2):
        _fake_run(tmp_path / "old" / f"seed{seed}", "ibp", 0.5, seed, 0.2, 0.5)
    _table3(tmp_path / "old", "--out", tmp_path / "first")
    _fake_run(tmp_path / "new" / "seed0", "ibp", 0.5, 0, 0.2, 0.45)  # the same configuration and seed
    _fake_run(tmp_path / "new" / "lr", "ibp", 0.5, 0, 0.1, 0.4, lr=0.002)  # a new setting at the same radius
    _table3(tmp_path / "new", "--keep", tmp_path / "first" / "table3.csv", "--out", tmp_path / "second")
    rows = list(csv.DictReader(open(tmp_path / "second" / "table3.csv")))
    by_run = {(r["lr"], r["seed"]): r["verified_err_0.3"] for r in rows}
    assert by_run == {("0.001", "0"): "0.45", ("0.001", "1"): "0.5", ("0.001", "2"): "0.5", ("0.002", "0"): "0.4"}
    table = (tmp_path / "second" / "table3.md").read_text()
    assert "ibp, kappa_final 0.5, ramp 10, lr 0.001 | 0, 1, 2" in table


def _protocol():
    spec = importlib.util.spec_from_file_location("table3_protocol", ROOT / "experiments" / "gm" / "table3_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocol_selects_over_kept_rows_and_new_trials_and_runs_only_the_missing_ones(tmp_path):
    protocol = _protocol()
    first_block = protocol.trial_overrides(1)
    kept_csv = tmp_path / "table3.csv"
    with open(kept_csv, "w", newline="") as handle:  # a table3.csv from before the lr column
        writer = csv.DictWriter(
            handle, ["method", "eps_train", "kappa_final", "ramp_epochs", "seed", "val_verified_err_0.3"]
        )
        writer.writeheader()
        for i, overrides in enumerate(first_block):
            kappa, ramp, _ = protocol._setting(overrides)
            setting = dict(method="ibp", eps_train=0.5, kappa_final=kappa, ramp_epochs=ramp)
            writer.writerow({**setting, "seed": 0, "val_verified_err_0.3": 0.6 - i / 100})
            writer.writerow({**setting, "seed": 1, "val_verified_err_0.3": 0.1})  # no tuning trial
    kept = protocol.kept_objectives(kept_csv, 0.5)
    kappa, ramp, lr = protocol._setting(first_block[0])
    assert ("ibp", kappa, ramp, lr, 1) in protocol.kept_seeds(kept_csv, 0.5)  # a seed rerun that need not run again
    assert len(kept) == len(first_block) and all(key[3] == protocol.RECIPE_LR for key in kept)  # seed 1 is no trial
    jobs = protocol.tune_jobs(tmp_path, 0.5, ["ibp", "gm_ibp"], len(protocol.GRID), kept)
    all_trials = protocol.trial_overrides()
    assert len(jobs) == 2 * len(all_trials) - len(first_block)
    assert not any(run_dir.parent.name == "ibp" and "lr" not in run_dir.name for run_dir, _ in jobs)
    # the kept rows' best (0.6 - 3/100) loses to a finished new trial below it
    best_kept = protocol.best_trial(tmp_path, 0.5, "ibp", kept)
    assert best_kept == (first_block[-1], pytest.approx(0.57))
    lr_trial = all_trials[-1]
    _fake_run(protocol.tune_dir(tmp_path, 0.5, "ibp") / protocol.trial_name(lr_trial), "ibp", 0.5, 0, 0.1, 0.3)
    assert protocol.best_trial(tmp_path, 0.5, "ibp", kept) == (lr_trial, pytest.approx(0.3))
    assert protocol.seeds_dir(tmp_path, 0.5, "ibp", lr_trial).name == protocol.trial_name(lr_trial)
    assert protocol.seeds_dir(tmp_path, 0.5, "ibp", first_block[0]).name == "ibp"
