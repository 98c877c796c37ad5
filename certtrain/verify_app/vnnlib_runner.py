"""`python verify.py model=onnx weights=net.onnx vnnlib=prop.vnnlib`: decide one VNN-LIB property.

Writes <out>/<property>.txt in the competition's layout (sat with its witness, unsat, timeout,
unknown) and <out>/<property>.json (verdict, per-box details, settings, command, commit). A
property already decided in <out> is reported, not recomputed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import onnx

from certtrain.atomic import atomic_write_text
from certtrain.models import DATASET_STATS
from certtrain.provenance import git_commit
from certtrain.verify_app.vnnlib import decide_vnnlib, format_result, read_vnnlib

log = logging.getLogger(__name__)


def _onnx_input_shape(path: str) -> tuple[int, ...] | None:
    """The per-sample input shape the ONNX graph declares (batch dimension dropped), if fixed."""
    graph = onnx.load(path).graph
    initializers = {init.name for init in graph.initializer}
    (data,) = [i for i in graph.input if i.name not in initializers]
    dims = [d.dim_value for d in data.type.tensor_type.shape.dim]
    return tuple(dims[1:]) if dims and all(d > 0 for d in dims[1:]) else None


def input_shape(model_name: str, weights: str | None, dataset: str, num_inputs: int) -> tuple[int, ...]:
    if model_name == "onnx" and weights:
        shape = _onnx_input_shape(weights)
        if shape is not None:
            return shape
    channels = len(DATASET_STATS[dataset][0])
    size = 32 if dataset == "cifar10" else 28
    image = (channels, size, size)
    return image if channels * size * size == num_inputs else (num_inputs,)


def run_vnnlib(cfg, network, model_name: str, weights: str | None, dataset: str, options) -> dict:
    prop = read_vnnlib(cfg.vnnlib)
    out = Path(cfg.out)
    stem = Path(cfg.vnnlib).stem
    report = out / f"{stem}.json"
    if report.is_file():
        previous = json.loads(report.read_text())
        log.info("%s: %s (already decided in %s; delete it to decide again)", cfg.vnnlib, previous["verdict"], report)
        return previous
    shape = input_shape(model_name, weights, dataset, prop.num_inputs)
    started = time.perf_counter()
    result = decide_vnnlib(network, prop, shape, options, started + float(cfg.time_limit))
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.txt", format_result(result))
    summary = {
        "property": str(cfg.vnnlib),
        "verdict": result.verdict,
        "seconds": round(seconds, 3),
        "boxes": result.boxes,
        "disjuncts": len(prop.disjuncts),
        "details": result.details,
        "model": model_name,
        "weights": weights,
        "verifier": cfg.verifier,
        "solver": cfg.solver,
        "time_limit": cfg.time_limit,
        "command": "python verify.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
    }
    atomic_write_text(report, json.dumps(summary, indent=2) + "\n")
    log.info("%s: %s in %.2f s; %s", cfg.vnnlib, result.verdict, seconds, out / f"{stem}.txt")
    return summary
