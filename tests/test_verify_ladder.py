"""The evaluation ladder: every certifier beside the exact answer, and the per-sample chain
PGD <= exact <= alpha-CROWN <= CROWN (tight) <= IBP, which an unsound certifier must break."""

from __future__ import annotations

import csv
import functools
import json

import pytest
import torch
from torch import nn

from certtrain import ladder
from certtrain.bab import BabOutcome
from certtrain.ladder import LADDER_COLUMNS, LadderViolation, ladder_references, violations, write_ladder
from certtrain.verify import VerifyOptions
from certtrain.verify_app.batch import run_batch

OPTIONS = VerifyOptions(eps=0.15, time_limit=30)


def problem(n=10):
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)
    ).eval()
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = net(images.float() / 255).argmax(1)
    labels[2] = (labels[2] + 1) % 3  # one misclassified sample
    return net, images, labels


def run_ladder(out, n=10):
    net, images, labels = problem(n)
    return run_batch(
        net,
        images,
        labels,
        range(n),
        out,
        settings={"model": "tiny", "eps": OPTIONS.eps},
        options=OPTIONS,
        pgd_steps=20,
        pgd_restarts=2,
        reference_fn=ladder_references,
        columns=LADDER_COLUMNS,
        summarize_fn=write_ladder,
    )


def test_ladder_reports_every_rung_in_order(tmp_path):
    summary = run_ladder(tmp_path)
    result = json.loads((tmp_path / "ladder.json").read_text())
    assert result["violations"] == []
    error = {r["rung"]: r["error_pct"] for r in result["rungs"]}
    assert (
        error["PGD error"]
        <= error["exact (MILP), lower"]
        <= error["exact (MILP), upper"]
        <= error["alpha-CROWN verified error"]
        <= error["CROWN (tight) verified error"]
        <= error["IBP verified error"]
    )
    assert (
        error["exact (MILP), upper"]
        <= error["alpha-CROWN (full) verified error"]
        <= error["CROWN (tight) verified error"]
    )
    assert error["clean error"] == 10.0
    # the problem is chosen so that the rungs differ: the ladder is not trivially flat
    assert error["IBP verified error"] > error["exact (MILP), upper"]
    assert sum(result["exact_counts"].values()) == 10 == summary["samples"]
    rows = list(csv.DictReader(open(tmp_path / "samples.csv")))
    assert set(rows[0]) == set(LADDER_COLUMNS)
    assert all(float(r["alpha_crown_seconds"]) > 0 for r in rows if r["status"] != "misclassified")
    assert "No violation" in (tmp_path / "ladder.md").read_text()


def test_an_unsound_certifier_breaks_the_ladder_and_is_named(tmp_path, monkeypatch):
    always = lambda model, x_L, x_U, C: torch.ones(C.shape[:2])  # "certifies" everything
    monkeypatch.setitem(ladder.CERTIFIERS, "IBP", ("ibp", always))
    with pytest.raises(LadderViolation, match="certified by IBP but"):
        run_ladder(tmp_path)
    text = (tmp_path / "ladder.md").read_text()  # written before the failure
    assert "**Violations:**" in text
    assert "certified by IBP but the exact answer is adversarial" in text  # a certificate of a real attack


@pytest.mark.parametrize(
    "row,expected",
    [
        (
            {"ibp_verified": "True", "crown_tight_verified": "False"},
            "certified by IBP but not by the tighter CROWN (tight)",
        ),
        ({"crown_tight_verified": "True", "alpha_crown_verified": "False"}, "not by the tighter alpha-CROWN"),
        (
            {"alpha_crown_verified": "True", "crown_tight_verified": "True", "status": "adversarial"},
            "but the exact answer is adversarial",
        ),
        ({"crown_ibp_verified": "True", "pgd_adversarial": "True"}, "but PGD found an adversarial input"),
        ({"status": "robust", "pgd_adversarial": "True"}, "proved robust by the verifier but PGD found"),
    ],
)
def test_each_kind_of_break_is_found(row, expected):
    base = {"index": "7", "status": "timeout", "pgd_adversarial": "False"}
    found = violations([{**base, **row}])
    assert any(expected in line and line.startswith("sample 7") for line in found), found
    assert (
        violations(
            [
                {
                    **base,
                    "status": "robust",
                    "alpha_crown_verified": "True",
                    "alpha_crown_full_verified": "True",
                    "crown_tight_verified": "True",
                    "ibp_verified": "True",
                }
            ]
        )
        == []
    )


def test_an_unsound_branch_and_bound_is_caught_by_the_ladder(tmp_path, monkeypatch):
    """A planted branch and bound that proves everything: the ladder names it against the MILP."""
    monkeypatch.setattr(ladder, "robustness_bab", lambda *args, **kwargs: BabOutcome("robust"))
    with pytest.raises(LadderViolation, match="certified by .*branch and bound"):
        run_ladder(tmp_path)
    assert "branch and bound verified error" in (tmp_path / "ladder.md").read_text()


def test_the_branch_and_bound_rung_is_sound_and_at_least_the_exact_robust(tmp_path):
    run_ladder(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "samples.csv")))
    for row in rows:
        if row["bab_verified"] == "True":
            assert row["status"] == "robust" and row["pgd_adversarial"] == "False"
    assert sum(r["bab_verified"] == "True" for r in rows) >= sum(r["alpha_crown_verified"] == "True" for r in rows) - 1


def test_chosen_rungs_run_alone_and_the_chain_skips_the_others(tmp_path):
    net, images, labels = problem()
    rungs = ladder.check_rungs(["alpha_crown", "apgd"])
    run_batch(
        net,
        images,
        labels,
        range(10),
        tmp_path,
        settings={"model": "tiny", "eps": OPTIONS.eps, "verifier": "milp"},
        options=OPTIONS,
        pgd_steps=20,
        pgd_restarts=2,
        reference_fn=functools.partial(ladder_references, rungs=rungs),
        columns=LADDER_COLUMNS,
        summarize_fn=write_ladder,
    )
    names = [r["rung"] for r in json.loads((tmp_path / "ladder.json").read_text())["rungs"]]
    assert "APGD error" in names and "alpha-CROWN verified error" in names
    assert not any(name.startswith(("IBP", "CROWN", "branch")) for name in names), names
    rows = list(csv.DictReader(open(tmp_path / "samples.csv")))
    assert all(row["ibp_verified"] == "" and row["bab_seconds"] == "" for row in rows)
    for row in rows:  # APGD is an attack: it never breaks a sample the exact answer proves robust
        assert not (row["apgd_adversarial"] == "True" and row["status"] == "robust")
    assert any(row["apgd_adversarial"] == "True" for row in rows if row["status"] == "adversarial")


def test_a_certificate_that_apgd_breaks_is_named(tmp_path):
    row = {"index": "3", "status": "timeout", "pgd_adversarial": "False", "apgd_adversarial": "True"}
    assert any("but APGD found" in line for line in violations([{**row, "alpha_crown_verified": "True"}]))
    # a rung that did not run (empty column) is not a break of the chain
    assert violations([{**row, "apgd_adversarial": "", "ibp_verified": "True", "crown_tight_verified": ""}]) == []


@pytest.mark.parametrize("rungs", [["alpha"], []])
def test_unknown_or_empty_rungs_name_the_choices(rungs):
    with pytest.raises(ValueError, match="alpha_crown_full"):
        ladder.check_rungs(rungs)
