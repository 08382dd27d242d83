"""Dataset registry: name -> how to load it as uint8 tensors, plus what it is (classes, input shape).

Every dataset is decoded once per process into memory; training slices batches out of those tensors.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from service.specs import DatasetSpec
from worker.preprocess import Preprocess

BUNDLED_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    class_names: tuple[str, ...]
    preprocess: Preprocess

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


# A loader returns the whole pool of labelled examples; the spec's val_fraction and seed split it.
Loader = Callable[[Path], tuple[torch.Tensor, torch.Tensor]]

_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {}


class UnknownDataset(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown dataset {self.name!r}; known datasets: {', '.join(dataset_names())}"


def register_dataset(info: DatasetInfo) -> Callable[[Loader], Loader]:
    def decorator(loader: Loader) -> Loader:
        if info.name in _REGISTRY:
            raise ValueError(f"dataset {info.name!r} registered twice")
        _REGISTRY[info.name] = (info, loader)
        return loader

    return decorator


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise UnknownDataset(name) from None


def load_dataset(spec: DatasetSpec, data_dir: Path) -> Dataset:
    info = dataset_info(spec.name)
    images, labels = _load_pool(spec.name, data_dir)
    train_idx, val_idx = stratified_split(labels, spec.val_fraction, spec.seed)
    return Dataset(info, Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx]))


@lru_cache(maxsize=4)
def _load_pool(name: str, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return _REGISTRY[name][1](data_dir)


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, a seeded shuffle and the first `val_fraction` of it to validation; indices sorted."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or plain."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


DIGIT_NAMES = tuple(str(d) for d in range(10))


@register_dataset(
    DatasetInfo(
        name="mnist-10k",
        description="MNIST's official 10k test split (LeCun, Cortes, Burges; CC BY-SA 3.0), 28x28 grayscale digits",
        class_names=DIGIT_NAMES,
        preprocess=Preprocess(channels=1, height=28, width=28, mean=(0.1307,), std=(0.3081,)),
    )
)
def _mnist_10k(_: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(BUNDLED_DIR / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(BUNDLED_DIR / "mnist" / "t10k-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@register_dataset(
    DatasetInfo(
        name="digits",
        description="UCI's 1,797 handwritten digits as shipped by scikit-learn (CC BY 4.0), 8x8 grayscale",
        class_names=DIGIT_NAMES,
        preprocess=Preprocess(channels=1, height=8, width=8, mean=(0.3053,), std=(0.3759,)),
    )
)
def _digits(_: Path) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.loadtxt(BUNDLED_DIR / "digits" / "digits.csv.gz", delimiter=",", dtype=np.float64)
    # Pixels are 0..16; stored as 0..255 like every other dataset.
    images = np.round(rows[:, :64] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return torch.from_numpy(images), torch.from_numpy(rows[:, 64].astype(np.int64))
