"""Networks to verify: a zoo architecture with weights (a plain state_dict, or a train.py
checkpoint: a dict whose "model" entry is the state_dict and whose "arch" names the model), or
an ONNX file (`model=onnx`)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from certtrain.checkpoints import read_state
from certtrain.models import ARCHITECTURES, build_model
from certtrain.verify_app.onnx_import import load_onnx

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """The weights file is missing, unreadable or does not fit the architecture."""


def _state_dict(path: Path) -> tuple[dict, dict]:
    state = read_state(path, WeightsError, "pass weights=<a .pth/.pt state_dict or a train.py checkpoint>")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state["model"], state.get("arch", {})
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        return state["state_dict"], {}
    if isinstance(state, dict):
        return state, {}
    raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict; save model.state_dict()")


def load_network(model: str, weights: str | None, dataset: str = "mnist") -> nn.Module:
    """An eval-mode network ready for verify()."""
    if model == "onnx":
        if not weights:
            raise WeightsError("model=onnx needs weights=<file.onnx>")
        return load_onnx(weights).eval()
    if model not in ARCHITECTURES:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(ARCHITECTURES)} or onnx")
    if not weights:
        log.warning("no weights= given: verifying the untrained %s", model)
        return build_model(model, dataset).eval()
    state, arch = _state_dict(Path(weights))
    if arch.get("model") not in (None, model):
        raise WeightsError(
            f"{weights} is a checkpoint of model={arch['model']}, not {model}; pass model={arch['model']}"
        )
    # a train.py checkpoint records the model.options it was built with (hidden sizes, ...)
    network = build_model(model, dataset, **arch.get("options", {}))
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[:3]
        raise WeightsError(
            f"weights {weights} do not fit model={model} on dataset={dataset} ({' '.join(first)}); "
            "pass the model= and dataset= the weights were trained with"
        ) from err
    return network.eval()
