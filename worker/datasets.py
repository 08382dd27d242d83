"""Dataset registry: name -> how to load it as uint8 tensors, plus what it is (classes, input shape).

Every dataset is decoded once per machine into a uint8 tensor cache on disk, which each process memory-maps;
training slices batches out of those tensors.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from service.specs import DatasetSpec
from worker.preprocess import Preprocess

BUNDLED_DIR = Path(__file__).resolve().parent / "data"

log = logging.getLogger("trainlab.worker")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    class_names: tuple[str, ...]
    preprocess: Preprocess
    size: int  # examples split into train and val (a test split comes on top)
    # Mirrored or strongly rotated examples are other classes (digits): flips and big rotations hurt.
    orientation_matters: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split | None  # only where the dataset has an official held-out test split


@dataclass(frozen=True)
class Pool:
    """What a loader returns: the labelled examples to split into train/val, and a separate test split if any."""

    images: torch.Tensor
    labels: torch.Tensor
    test: Split | None = None


Loader = Callable[[Path], Pool]
# Raises DatasetUnavailable when the dataset's files are not on this machine; cheap (no decoding).
Locator = Callable[[Path], object]

_REGISTRY: dict[str, tuple[DatasetInfo, Loader, Locator]] = {}


class DatasetUnavailable(LookupError):
    """A registered dataset whose files are missing; the message says which files go where."""


class UnknownDataset(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown dataset {self.name!r}; known datasets: {', '.join(dataset_names())}"


def register_dataset(info: DatasetInfo, locate: Locator = lambda _: None) -> Callable[[Loader], Loader]:
    def decorator(loader: Loader) -> Loader:
        if info.name in _REGISTRY:
            raise ValueError(f"dataset {info.name!r} registered twice")
        _REGISTRY[info.name] = (info, loader, locate)
        return loader

    return decorator


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise UnknownDataset(name) from None


def check_available(name: str, data_dir: Path) -> DatasetInfo:
    """The dataset's info if it is registered and its files are here; else UnknownDataset / DatasetUnavailable."""
    info = dataset_info(name)
    _REGISTRY[name][2](data_dir)
    return info


def load_dataset(spec: DatasetSpec, data_dir: Path) -> Dataset:
    info = check_available(spec.name, data_dir)
    pool = _load_pool(spec.name, data_dir)
    train_idx, val_idx = stratified_split(pool.labels, spec.val_fraction, spec.seed)
    train = Split(pool.images[train_idx], pool.labels[train_idx])
    return Dataset(info, train, Split(pool.images[val_idx], pool.labels[val_idx]), pool.test)


# Bump when a loader's output changes: the tensor caches of the old version are then ignored.
CACHE_VERSION = 1


@lru_cache(maxsize=4)
def _load_pool(name: str, data_dir: Path) -> Pool:
    """Decoded once per machine: later processes memory-map the uint8 tensors cached under `data_dir/cache`."""
    path = data_dir / "cache" / f"{name}-v{CACHE_VERSION}.pt"
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        test = Split(raw["test_images"], raw["test_labels"]) if "test_images" in raw else None
        return Pool(raw["images"], raw["labels"], test)
    except FileNotFoundError:
        pass
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring the dataset cache %s: %s", path, exc)
    pool = _REGISTRY[name][1](data_dir)
    raw = {"images": pool.images, "labels": pool.labels}
    if pool.test is not None:
        raw.update(test_images=pool.test.images, test_labels=pool.test.labels)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(raw, partial)
        os.replace(partial, path)  # whole or absent, also with several workers writing it at once
    except OSError as exc:
        log.warning("cannot cache dataset %s at %s: %s", name, path, exc)
    return pool


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, a seeded shuffle and the first `val_fraction` of it to validation; indices sorted."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        # At least one example of each class on each side, when the class has two.
        n_val = min(max(1, round(len(idx) * val_fraction)), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or plain."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_split(images: Path, labels: Path) -> Split:
    return Split(
        torch.from_numpy(read_idx(images).copy()).unsqueeze(1), torch.from_numpy(read_idx(labels).astype(np.int64))
    )


def _bundled_test_split(folder: str) -> Pool:
    """The official 10k test split shipped in worker/data/<folder>/, as the pool to split into train/val."""
    directory = BUNDLED_DIR / folder
    split = _idx_split(directory / "t10k-images-idx3-ubyte.gz", directory / "t10k-labels-idx1-ubyte.gz")
    return Pool(split.images, split.labels)


DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
)  # fmt: skip
MNIST_PREPROCESS = Preprocess(channels=1, height=28, width=28, mean=(0.1307,), std=(0.3081,))
FASHION_PREPROCESS = Preprocess(channels=1, height=28, width=28, mean=(0.2860,), std=(0.3530,))


@register_dataset(
    DatasetInfo(
        name="mnist-10k",
        description="MNIST's official 10k test split (LeCun, Cortes, Burges; CC BY-SA 3.0), 28x28 grayscale digits",
        class_names=DIGIT_NAMES,
        preprocess=MNIST_PREPROCESS,
        size=10_000,
        orientation_matters=True,
    )
)
def _mnist_10k(_: Path) -> Pool:
    return _bundled_test_split("mnist")


@register_dataset(
    DatasetInfo(
        name="fashion-mnist-10k",
        description="Fashion-MNIST's official 10k test split (Zalando, MIT), 28x28 grayscale clothing",
        class_names=FASHION_NAMES,
        preprocess=FASHION_PREPROCESS,
        size=10_000,
    )
)
def _fashion_mnist_10k(_: Path) -> Pool:
    return _bundled_test_split("fashion-mnist")


FASHION_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
)  # fmt: skip
# Where Debian's dataset-fashion-mnist package puts the four files.
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _fashion_files(data_dir: Path) -> dict[str, Path]:
    for folder in (data_dir / "fashion-mnist", SYSTEM_FASHION_DIR):
        found = {}
        for stem in FASHION_FILES:
            candidates = [folder / f"{stem}.gz", folder / stem]
            found[stem] = next((c for c in candidates if c.is_file()), None)
        if all(found.values()):
            return found
    raise DatasetUnavailable(
        f"dataset 'fashion-mnist' needs the files {', '.join(f + '[.gz]' for f in FASHION_FILES)} in "
        f"{data_dir / 'fashion-mnist'} (TRAINLAB_DATA_DIR) or {SYSTEM_FASHION_DIR} "
        "(Debian: apt-get install dataset-fashion-mnist); the bundled 'fashion-mnist-10k' needs nothing"
    )


@register_dataset(
    DatasetInfo(
        name="fashion-mnist",
        description="Fashion-MNIST (Zalando, MIT): 60k training images split into train/val, plus the 10k test split",
        class_names=FASHION_NAMES,
        preprocess=FASHION_PREPROCESS,
        size=60_000,
    ),
    locate=_fashion_files,
)
def _fashion_mnist(data_dir: Path) -> Pool:
    files = _fashion_files(data_dir)
    train = _idx_split(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
    test = _idx_split(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
    return Pool(train.images, train.labels, test=test)


@register_dataset(
    DatasetInfo(
        name="digits",
        description="UCI's 1,797 handwritten digits as shipped by scikit-learn (CC BY 4.0), 8x8 grayscale",
        class_names=DIGIT_NAMES,
        preprocess=Preprocess(channels=1, height=8, width=8, mean=(0.3053,), std=(0.3759,)),
        size=1_797,
        orientation_matters=True,
    )
)
def _digits(_: Path) -> Pool:
    rows = np.loadtxt(BUNDLED_DIR / "digits" / "digits.csv.gz", delimiter=",", dtype=np.float64)
    # Pixels are 0..16; stored as 0..255 like every other dataset.
    images = np.round(rows[:, :64] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return Pool(torch.from_numpy(images), torch.from_numpy(rows[:, 64].astype(np.int64)))
