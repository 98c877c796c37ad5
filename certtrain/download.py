"""Fetch a missing dataset with torchvision, when it is installed; otherwise explain where files go."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from certtrain.data import DataError, Split, load_split

log = logging.getLogger(__name__)

TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _files_missing(err: DataError) -> bool:
    return isinstance(err.__cause__, FileNotFoundError)


def download(dataset: str, data_dir: Path) -> None:
    """Download both splits of `dataset` into data_dir in the layout load_split reads."""
    import torchvision.datasets  # optional dependency: the `download` extra

    cls = getattr(torchvision.datasets, TORCHVISION_CLASSES[dataset])
    for train in (True, False):
        cls(root=str(data_dir), train=train, download=True)


def load_or_download(dataset: str, split: str, data_dir: str | Path) -> Split:
    """load_split, downloading with torchvision first if the files are missing.

    Truncated or malformed files are never replaced silently: their DataError propagates.
    """
    try:
        return load_split(dataset, split, data_dir)
    except DataError as err:
        if not _files_missing(err) or dataset not in TORCHVISION_CLASSES:
            raise
        if importlib.util.find_spec("torchvision") is None:
            raise DataError(f"{err}; or install torchvision (pip install -e '.[download]') to download them") from err
        log.info("%s not found under %s: downloading it with torchvision", dataset, Path(data_dir).resolve())
        try:
            download(dataset, Path(data_dir))
        except Exception as download_err:  # network, disk, checksum: all end the same way
            raise DataError(f"{err}; downloading with torchvision failed too ({download_err})") from download_err
    return load_split(dataset, split, data_dir)
