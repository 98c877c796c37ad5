"""What verify.py needs from a train.py run folder: its checkpoint's weights, architecture,
normalisation, dataset and radius (`python verify.py run=outputs/<run>`).

Also: quoting of path overrides, so a run folder named by its overrides (`eps=0.5,method=ibp`)
can be passed unquoted: Hydra's parser reads `=` and `,` inside a value as syntax.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from certtrain.checkpoints import CHECKPOINT_NAME, read_state, weights_hash
from certtrain.models import ARCHITECTURES

log = logging.getLogger(__name__)

PATH_KEYS = ("run", "weights", "out", "data_dir", "vnnlib")
_HYDRA_SYNTAX = set("=,[]{}()'\" \\")


class RunFolderError(ValueError):
    """The run folder cannot be verified; the message names the fix."""


@dataclass(frozen=True)
class TrainedRun:
    folder: Path
    checkpoint: Path
    model: str  # architecture name (certtrain.models)
    stats: str  # dataset whose normalisation the network was built with
    dataset: str  # dataset trained on (its test split is verified)
    eps: float  # evaluation radius of the run
    eps_train: float  # radius it was trained at
    weights_sha256: str


def read_run(folder: str | Path) -> TrainedRun:
    """The trained network's description from <folder>/checkpoint.pt (train.py writes it)."""
    folder = Path(folder)
    checkpoint = folder / CHECKPOINT_NAME
    if not folder.is_dir():
        raise RunFolderError(
            f"run={folder} is not a folder; pass a train.py run folder (outputs/<run> or multirun/<date>/<job>)"
        )
    if not checkpoint.is_file():
        raise RunFolderError(
            f"run={folder} holds no {CHECKPOINT_NAME}; pass the folder train.py wrote for the run "
            "(it writes the checkpoint after every epoch), or weights=<file> with model= and dataset="
        )
    state = read_state(checkpoint, RunFolderError, "rerun or resume the training to write it again")
    config = state.get("config") if isinstance(state, dict) else None
    if not config:
        raise RunFolderError(
            f"{checkpoint} does not record its run's config (written before checkpoints did); "
            "pass weights=<checkpoint> with model= and dataset= instead of run="
        )
    model = config["model"]["name"]
    if model not in ARCHITECTURES:
        raise RunFolderError(
            f"{checkpoint} is a {model!r} network, which this certtrain does not know; verify it "
            f"with the certtrain that trained it, or export it to ONNX (model=onnx weights=...)"
        )
    eps = float(config["eps"])
    eps_train = float(config["eps_train"]) if config.get("eps_train") is not None else eps
    return TrainedRun(
        folder=folder,
        checkpoint=checkpoint,
        model=model,
        stats=state.get("arch", {}).get("dataset", "mnist"),
        dataset=config["dataset"]["name"],
        eps=eps,
        eps_train=eps_train,
        weights_sha256=state.get("weights_sha256") or weights_hash(state["model"]),
    )


def quote_path_overrides(argv: list[str]) -> list[str]:
    """`run=a/eps=0.5,method=ibp` -> `run='a/eps=0.5,method=ibp'` for the path keys, so the shell
    form works unquoted. Values already quoted, or holding a quote or backslash, are left alone."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if (
            sep
            and key in PATH_KEYS
            and value
            and value[0] not in "'\""
            and set(value) & _HYDRA_SYNTAX
            and not set(value) & set("'\\")
        ):
            arg = f"{key}='{value}'"
        quoted.append(arg)
    return quoted
