"""Dataset registry: name -> how to load it as uint8 tensors, plus what it is (classes, input shape).

Every dataset is decoded once per machine into a uint8 tensor cache on disk, which each process memory-maps;
training slices batches out of those tensors.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
from collections.abc import Callable, Sequence
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
    # Regression datasets have one "class": the target's name, and float labels.
    task: str = "classification"
    # How to fetch the files where downloads are allowed (standard datasets only).
    download: Callable[[Path], None] | None = None

    @property
    def num_classes(self) -> int:
        """The model's outputs: one per class, or the one target of a regression."""
        return len(self.class_names)

    @property
    def tabular(self) -> bool:
        return self.preprocess.height == self.preprocess.width == 1

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """Tables: the columns of a row, in the order the model takes them."""
        return self.preprocess.feature_names or None


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W); float32 (N, F, 1, 1) for tabular rows
    labels: torch.Tensor  # int64 (N,) class indices; float32 (N,) regression targets

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


def load_dataset(spec: DatasetSpec, data_dir: Path, allow_download: bool = False) -> Dataset:
    try:
        info = check_available(spec.name, data_dir)
    except DatasetUnavailable:
        info = dataset_info(spec.name)
        if not (spec.download and allow_download and info.download is not None):
            raise
        log.info("downloading dataset %s into %s", spec.name, data_dir)
        info.download(data_dir)
        check_available(spec.name, data_dir)
    return split_pool(info, _load_pool(spec.name, data_dir), spec)


def split_pool(info: DatasetInfo, pool: Pool, spec: DatasetSpec) -> Dataset:
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
    """Per class, a seeded shuffle and the first `val_fraction` of it to validation; indices sorted. Regression
    targets (floats) are split as one group."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    groups = [labels] if labels.is_floating_point() else [labels == cls for cls in torch.unique(labels)]
    for group in groups:
        idx = torch.arange(len(labels)) if group is labels else torch.nonzero(group).flatten()
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


IDX_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
)  # fmt: skip
# Where Debian's dataset-fashion-mnist package puts the four files.
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _idx_locator(
    name: str, torchvision_class: str, system: Callable[[], Path] | None = None, hint: str = ""
) -> Locator:
    """The four IDX files (each gzipped or plain) in `data_dir/<name>/`, in torchvision's download layout
    `data_dir/<Class>/raw/`, or in a system folder (looked up at each call)."""

    def locate(data_dir: Path) -> dict[str, Path]:
        system_dir = system() if system else None
        folders = [data_dir / name, data_dir / torchvision_class / "raw", *([system_dir] if system_dir else [])]
        for folder in folders:
            found = {stem: next((f for f in (folder / f"{stem}.gz", folder / stem) if f.is_file()), None)
                     for stem in IDX_FILES}  # fmt: skip
            if all(found.values()):
                return found  # type: ignore[return-value]
        where = f"{data_dir / name} (TRAINLAB_DATA_DIR)" + (f" or {system_dir}{hint}" if system_dir else "")
        raise DatasetUnavailable(
            f"dataset {name!r} needs the files {', '.join(f + '[.gz]' for f in IDX_FILES)} in {where}, "
            'or "download": true where the server allows downloads'
        )

    return locate


def _idx_loader(locate: Locator) -> Loader:
    def load(data_dir: Path) -> Pool:
        files = locate(data_dir)
        train = _idx_split(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
        test = _idx_split(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
        return Pool(train.images, train.labels, test=test)

    return load


def _torchvision_download(dataset_class: str) -> Callable[[Path], None]:
    def download(data_dir: Path) -> None:
        import torchvision.datasets  # only where a download is asked for

        getattr(torchvision.datasets, dataset_class)(str(data_dir), download=True)

    return download


_mnist_files = _idx_locator("mnist", "MNIST")
register_dataset(
    DatasetInfo(
        name="mnist",
        description="MNIST (LeCun, Cortes, Burges; CC BY-SA 3.0): 60k training digits split into train/val, "
        "plus the 10k test split",
        class_names=DIGIT_NAMES,
        preprocess=MNIST_PREPROCESS,
        size=60_000,
        orientation_matters=True,
        download=_torchvision_download("MNIST"),
    ),
    locate=_mnist_files,
)(_idx_loader(_mnist_files))

_fashion_files = _idx_locator(
    "fashion-mnist", "FashionMNIST", lambda: SYSTEM_FASHION_DIR, " (Debian: apt-get install dataset-fashion-mnist)"
)
register_dataset(
    DatasetInfo(
        name="fashion-mnist",
        description="Fashion-MNIST (Zalando, MIT): 60k training images split into train/val, plus the 10k test split",
        class_names=FASHION_NAMES,
        preprocess=FASHION_PREPROCESS,
        size=60_000,
        download=_torchvision_download("FashionMNIST"),
    ),
    locate=_fashion_files,
)(_idx_loader(_fashion_files))

CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar_dir(data_dir: Path) -> Path:
    for folder in (data_dir / "cifar10" / "cifar-10-batches-py", data_dir / "cifar-10-batches-py"):
        if all((folder / batch).is_file() for batch in CIFAR_BATCHES):
            return folder
    raise DatasetUnavailable(
        f"dataset 'cifar10' needs CIFAR-10's python batches ({', '.join(CIFAR_BATCHES)}) in "
        f"{data_dir / 'cifar10' / 'cifar-10-batches-py'} (TRAINLAB_DATA_DIR; the folder inside "
        'cifar-10-python.tar.gz), or "download": true where the server allows downloads'
    )


def read_cifar_batch(path: Path) -> Split:
    """One of CIFAR-10's python batches: a pickled dict of uint8 rows (3x32x32, channel-major) and labels.
    Unpickled with a loader that builds only the plain types and numpy arrays such a batch holds."""
    with path.open("rb") as f:
        batch = _BatchUnpickler(f, encoding="bytes").load()
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return Split(torch.from_numpy(images.copy()), torch.tensor(batch[b"labels"], dtype=torch.int64))


class _BatchUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}  # fmt: skip

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"a CIFAR-10 batch holds no {module}.{name}")
        return super().find_class(module, name)


@register_dataset(
    DatasetInfo(
        name="cifar10",
        description="CIFAR-10 (Krizhevsky 2009): 50k 32x32 colour training images split into train/val, plus the "
        "10k test split",
        class_names=CIFAR_NAMES,
        preprocess=Preprocess(
            channels=3, height=32, width=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
        ),
        size=50_000,
        download=_torchvision_download("CIFAR10"),
    ),
    locate=_cifar_dir,
)
def _cifar10(data_dir: Path) -> Pool:
    folder = _cifar_dir(data_dir)
    train = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = read_cifar_batch(folder / "test_batch")
    return Pool(torch.cat([b.images for b in train]), torch.cat([b.labels for b in train]), test=test)


DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def _diabetes_table() -> tuple[np.ndarray, np.ndarray]:
    directory = BUNDLED_DIR / "diabetes"
    return np.loadtxt(directory / "diabetes_data_raw.csv.gz"), np.loadtxt(directory / "diabetes_target.csv.gz")


def tabular_preprocess(features: np.ndarray, names: Sequence[str], targets: np.ndarray | None = None) -> Preprocess:
    """Per-feature (and target) standardisation for a table of float rows, seen as (F, 1, 1) inputs; with the
    columns' names and ranges, which /predict/rows names rows beyond."""
    std = np.where(features.std(0) > 0, features.std(0), 1.0)
    target = {} if targets is None else {"target_mean": float(targets.mean()), "target_std": float(targets.std() or 1)}
    return Preprocess(
        features.shape[1], 1, 1, tuple(features.mean(0).tolist()), tuple(std.tolist()), **target,
        feature_names=tuple(names), low=tuple(features.min(0).tolist()), high=tuple(features.max(0).tolist()),
    )  # fmt: skip


def _diabetes_preprocess() -> Preprocess:
    features, targets = _diabetes_table()
    return tabular_preprocess(features, DIABETES_FEATURES, targets)


def tabular_pool(features: np.ndarray, targets: np.ndarray) -> Pool:
    rows = torch.from_numpy(features.astype(np.float32)).view(len(features), -1, 1, 1)
    dtype = np.int64 if np.issubdtype(targets.dtype, np.integer) else np.float32
    return Pool(rows, torch.from_numpy(targets.astype(dtype)))


@register_dataset(
    DatasetInfo(
        name="diabetes",
        description="Diabetes (Efron et al. 2004, via scikit-learn): 442 patients, 10 baseline variables; "
        "regression target: disease progression after one year (25-346)",
        class_names=("progression",),
        preprocess=_diabetes_preprocess(),
        size=442,
        task="regression",
    )
)
def _diabetes(_: Path) -> Pool:
    return tabular_pool(*_diabetes_table())


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


def uploaded_info(name: str, meta: dict) -> DatasetInfo:
    """An uploaded dataset's description, as `service.uploads` stored it."""
    return DatasetInfo(
        name=name,
        description=meta["description"],
        class_names=tuple(meta["class_names"]),
        # Uploads stored before the preprocess record kept the columns' names have them beside it.
        preprocess=Preprocess.from_dict({"feature_names": meta.get("feature_names", ()), **meta["preprocess"]}),
        size=int(meta["size"]),
        task=meta["task"],
    )


def load_uploaded(info: DatasetInfo, payload: bytes, spec: DatasetSpec) -> Dataset:
    """An uploaded dataset's tensors. Its own `val/` split, when it came with one, is the validation split
    (`val_fraction` then does not apply)."""
    raw = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    if "val_images" in raw:
        return Dataset(info, Split(raw["images"], raw["labels"]), Split(raw["val_images"], raw["val_labels"]), None)
    return split_pool(info, Pool(raw["images"], raw["labels"]), spec)
