"""VNN-LIB properties: parsing (errors name the line), the exact max layers, and verdicts that
agree with dense sampling (sat) and between the MILP and branch and bound (unsat)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from certtrain.verify import VerifyOptions
from certtrain.verify_app.vnnlib import (
    VnnlibError,
    decide_vnnlib,
    format_result,
    parse_vnnlib,
    satisfies,
    spec_network,
)

HEADER = "".join(f"(declare-const X_{i} Real)\n" for i in range(3)) + "".join(
    f"(declare-const Y_{j} Real)\n" for j in range(3)
)
BOX = "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (and (>= X_1 -1) (<= X_1 1) (>= X_2 -0.5) (<= X_2 2.0)))\n"


def test_a_property_reads_into_boxes_and_output_rows():
    text = HEADER + BOX + "(assert (or (and (>= Y_1 Y_0)) (and (>= Y_2 Y_0) (<= Y_1 (* 2 Y_2)))))\n"
    prop = parse_vnnlib(text)
    assert (prop.num_inputs, prop.num_outputs) == (3, 3)
    ((lower, upper, disjuncts),) = prop.boxes()
    np.testing.assert_array_equal(lower, [-1, -1, -0.5])
    np.testing.assert_array_equal(upper, [1, 1, 2])
    assert len(disjuncts) == 2
    np.testing.assert_array_equal(disjuncts[0].rows, [[1, -1, 0]])  # Y_0 - Y_1 <= 0
    np.testing.assert_array_equal(disjuncts[1].rows, [[1, 0, -1], [0, 1, -2]])
    np.testing.assert_array_equal(disjuncts[1].bounds, [0, 0])


@pytest.mark.parametrize(
    "body, message",
    [
        ("(assert (<= X_0 1)", r":8: this '\(' is never closed"),
        ("(assert (<= X_0 1)))", r":8: a '\)' closes nothing"),
        ("(assert (<= X_7 1))", r":8: X_7 is used but not declared"),
        ("(assert (<= (+ X_0 Y_0) 1))", r":8: a constraint mixes inputs and outputs"),
        ("(assert (= Y_0 1))", r":8: expected and, or, <=, >=, < or >, got '='"),
        ("(assert (<= (* Y_0 Y_1) 1))", r":8: \(\* a b\) needs two arguments, one of them a number"),
        ("(assert (<= (+ X_0 X_1) 1))", r":8: input constraints must bound one input each"),
    ],
)
def test_malformed_properties_name_the_line_and_what_was_expected(body, message):
    with pytest.raises(VnnlibError, match=message):
        parse_vnnlib(HEADER + "\n" + body + "\n", "prop.vnnlib")


def test_an_unbounded_input_and_a_network_of_another_size_are_refused():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    prop = parse_vnnlib(HEADER + "(assert (<= X_0 1))\n(assert (>= Y_1 Y_0))\n")
    with pytest.raises(VnnlibError, match="X_0 needs a lower and an upper bound"):
        decide_vnnlib(net, prop, (3,), VerifyOptions(), time.perf_counter() + 5)
    with pytest.raises(VnnlibError, match="the property has 3 inputs, the network takes"):
        decide_vnnlib(nn.Linear(4, 3), prop, (4,), VerifyOptions(), time.perf_counter() + 5)


def test_the_spec_network_computes_minus_the_max_of_each_disjunct_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    prop = parse_vnnlib(
        HEADER + BOX + "(assert (or (and (>= Y_1 Y_0) (<= Y_2 0.3) (>= Y_2 -4)) (and (>= Y_2 Y_0)) "
        "(and (<= Y_0 1) (<= Y_1 1) (<= Y_2 1) (<= (- Y_0 Y_1) 0.1) (>= Y_0 -1))))\n"
    )
    disjuncts = prop.disjuncts
    spec = spec_network(net, disjuncts).double()
    x = torch.rand(500, 3, dtype=torch.float64) * 4 - 2
    with torch.no_grad():
        y = net(x).numpy()
        out = spec(x).numpy()
    assert np.all(out[:, 0] == 0)
    for d, disjunct in enumerate(disjuncts):
        expected = -(y @ disjunct.rows.T - disjunct.bounds).max(1)
        np.testing.assert_allclose(out[:, 1 + d], expected, atol=1e-12)


def _random_case(seed):
    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    centre = gen.uniform(-1, 1, 3)
    radius = gen.uniform(0.3, 1.5)
    atoms = "".join(
        f"(assert (>= X_{i} {c - radius:.6f}))\n(assert (<= X_{i} {c + radius:.6f}))\n" for i, c in enumerate(centre)
    )
    with torch.no_grad():
        top = int(net(torch.tensor(centre, dtype=torch.float32)).argmax())
    others = [j for j in range(3) if j != top]
    first = f"(and (>= Y_{others[0]} Y_{top}))"
    second = f"(and (>= Y_{others[1]} Y_{top}) (<= Y_{others[1]} {gen.uniform(-0.5, 1.0):.4f}))"
    return net, parse_vnnlib(HEADER + atoms + f"(assert (or {first} {second}))\n"), centre, radius


def _sampled_sat(net, prop, centre, radius):
    gen = torch.Generator().manual_seed(1)
    points = torch.tensor(centre) + radius * (2 * torch.rand(20000, 3, generator=gen, dtype=torch.float64) - 1)
    with torch.no_grad():
        y = net.double()(points).numpy()
    net.float()
    return any(np.any(np.all(y @ d.rows.T <= d.bounds, axis=1)) for d in prop.disjuncts)


def test_verdicts_agree_with_sampling_and_between_the_milp_and_branch_and_bound():
    verdicts = []
    for seed in range(24):
        net, prop, centre, radius = _random_case(seed)
        truth_sat = _sampled_sat(net, prop, centre, radius)
        found = {}
        for method in ("milp", "bab"):
            options = VerifyOptions(method=method, time_limit=20, pgd_steps=10)
            result = decide_vnnlib(net, prop, (3,), options, time.perf_counter() + 20)
            found[method] = result.verdict
            if result.verdict == "sat":
                assert any(satisfies(net, result.witness, d, (3,)) for d in prop.disjuncts)
                assert format_result(result).startswith("sat\n((X_0 ")
        assert found["milp"] == found["bab"], (seed, found)
        assert found["milp"] in ("sat", "unsat"), (seed, found)
        if truth_sat:
            assert found["milp"] == "sat", f"seed {seed}: sampling found a counterexample the verifiers missed"
        verdicts.append(found["milp"])
    assert {"sat", "unsat"} <= set(verdicts), verdicts


def _robustness_property(x: np.ndarray, eps: float, label: int, classes: int) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(x.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    for i, v in enumerate(x.reshape(-1)):
        lines += [f"(assert (>= X_{i} {max(v - eps, 0.0):.9f}))", f"(assert (<= X_{i} {min(v + eps, 1.0):.9f}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label)
    return "\n".join(lines + [f"(assert (or {others}))", ""])


def test_verify_py_decides_a_property_of_an_onnx_network_as_verify_decides_its_ball(tmp_path):
    import subprocess
    import sys
    import warnings
    from pathlib import Path

    from certtrain.verify import verify
    from tests.test_verify_onnx import small_cnn

    net = small_cnn()
    onnx_path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 1, 6, 6),), str(onnx_path), dynamo=False)
    root = Path(__file__).resolve().parents[1]
    seen = set()
    for seed, eps in ((1, 0.02), (4, 0.2)):
        x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
        label = int(net(x).argmax())
        truth = verify(net, x, label, VerifyOptions(eps=eps, time_limit=60)).status
        prop = tmp_path / f"prop{seed}.vnnlib"
        prop.write_text(_robustness_property(x.numpy(), eps, label, 4))
        command = [sys.executable, str(root / "verify.py"), "model=onnx", f"weights={onnx_path}", f"vnnlib={prop}"]
        command += [f"out={tmp_path / 'out'}", "time_limit=60"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
        assert run.returncode == 0, run.stderr[-2000:]
        verdict = (tmp_path / "out" / f"prop{seed}.txt").read_text().splitlines()[0]
        assert verdict == {"robust": "unsat", "adversarial": "sat"}[truth]
        seen.add(verdict)
        again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
        assert again.returncode == 0 and "already decided" in again.stderr + again.stdout
    assert seen == {"sat", "unsat"}
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)\n")
    run = subprocess.run(
        [
            sys.executable,
            str(root / "verify.py"),
            "model=onnx",
            f"weights={onnx_path}",
            f"vnnlib={bad}",
            f"out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert run.returncode == 1 and "bad.vnnlib:2: this '(' is never closed" in run.stderr + run.stdout


def test_a_property_that_pins_inputs_to_values_float32_cannot_hold_is_decided():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 3))
    pins = "(assert (>= X_0 0.1))(assert (<= X_0 0.1))(assert (>= X_1 -0.3))(assert (<= X_1 0.7))"
    pins += "(assert (>= X_2 0.2))(assert (<= X_2 0.2))\n"
    prop = parse_vnnlib(HEADER + pins + "(assert (>= Y_1 Y_0))\n")
    for method in ("milp", "bab"):
        result = decide_vnnlib(net, prop, (3,), VerifyOptions(method=method, time_limit=10), time.perf_counter() + 10)
        assert result.verdict in ("sat", "unsat")
        if result.verdict == "sat":
            assert result.witness[0] == 0.1 and result.witness[2] == 0.2
