"""Uploaded datasets: a zip in ImageFolder layout or a CSV table, checked whole before anything is stored.

A zip is refused (422, or 413 for sizes) for paths that escape the archive (absolute, `..`), symlinks, more files
or more unpacked bytes than the server allows, an entry compressed beyond the allowed ratio (a zip bomb), files
outside `train/<class>/` and `val/<class>/`, fewer than two classes, or any image that does not decode. The
images are decoded once, here, into uint8 tensors (the workers never see the zip).
"""

from __future__ import annotations

import csv
import io
import re
import stat
import zipfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import numpy as np
import torch
from PIL import Image

from service.errors import InvalidInput, PayloadTooLarge
from service.images import decode_image
from service.settings import Settings
from service.tables import csv_rows
from worker.datasets import tabular_pool, tabular_preprocess
from worker.ink import ink_of
from worker.preprocess import GRAYSCALE_MODES, Preprocess, image_to_uint8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Left by macOS' and Windows' archivers; never data.
_JUNK = re.compile(r"(^|/)(__MACOSX|\.DS_Store|Thumbs\.db|\._[^/]*)(/|$)")


@dataclass(frozen=True)
class Upload:
    meta: dict  # what `worker.datasets.uploaded_info` reads, and GET /datasets/{name} shows
    payload: bytes  # torch.save of the tensors


def _refuse(message: str, field: str = "file") -> InvalidInput:
    return InvalidInput(message, loc=["body", field])


def _refuse_unsplittable(counts: Counter[str], what: str, remedy: str, field: str = "file") -> None:
    """Validation takes examples of each class that has two or more (`worker.datasets.stratified_split`): with no
    such class, nothing would be left to validate on."""
    if max(counts.values()) < 2:
        raise _refuse(f"every {what}: nothing would be left to validate on (validation takes examples of each class "
                      f"that has two or more); {remedy}", field)  # fmt: skip


def read_image_zip(data: bytes, settings: Settings, image_size: int | None) -> Upload:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise _refuse(f"not a readable zip file: {exc}") from None
    entries = [info for info in archive.infolist() if not info.is_dir() and not _JUNK.search(info.filename)]
    _check_entries(entries, settings)
    files = _layout(entries)
    splits: dict[str, list[tuple[str, Image.Image]]] = {"train": [], "val": []}
    for split, class_name, info in files:
        try:
            with archive.open(info) as f:
                raw = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, zlib.error) as exc:  # bad CRC, encrypted, ...
            raise _refuse(f"{info.filename!r} cannot be read from the zip: {exc}") from None
        try:
            image = decode_image(raw, max_pixels=settings.max_image_pixels)
        except (InvalidInput, PayloadTooLarge) as exc:
            raise type(exc)(f"{info.filename}: {exc.detail}", loc=["body", "file"]) from None
        except Exception as exc:  # UnsupportedMediaType and the like: named, as a 422
            raise _refuse(f"{info.filename}: {getattr(exc, 'detail', exc)}") from None
        splits[split].append((class_name, image))
    class_names = sorted({name for name, _ in splits["train"]})
    if len(class_names) < 2:
        raise _refuse(f"train/ must hold at least two class folders; found {class_names or 'none'}")
    if unknown := sorted({name for name, _ in splits["val"]} - set(class_names)):
        raise _refuse(f"val/ has classes that train/ lacks: {', '.join(unknown)}")
    if not splits["val"]:
        _refuse_unsplittable(
            Counter(name for name, _ in splits["train"]),
            "class in train/ has a single image and there is no val/ folder",
            "add a val/ folder, or more images to the classes",
        )
    channels = 1 if all(image.mode in GRAYSCALE_MODES for _, image in splits["train"]) else 3
    size = _common_size([image for split in splits.values() for _, image in split], image_size)
    pixels = len(files) * channels * size[0] * size[1]
    if pixels > settings.max_dataset_unpacked_bytes:
        raise PayloadTooLarge(
            f"{len(files)} images of {channels}x{size[1]}x{size[0]} are {pixels:,} bytes decoded; "
            f"the limit is {settings.max_dataset_unpacked_bytes:,} (pass a smaller image_size)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for split, items in splits.items():
        if not items:
            continue
        prefix = "" if split == "train" else "val_"
        tensors[f"{prefix}images"] = torch.stack([image_to_uint8(image, channels, size) for _, image in items])
        tensors[f"{prefix}labels"] = torch.tensor([class_names.index(name) for name, _ in items], dtype=torch.int64)
    unit = tensors["images"].float() / 255
    preprocess = Preprocess(
        channels, size[1], size[0],
        mean=tuple(unit.mean(dim=(0, 2, 3)).tolist()),
        std=tuple(max(s, 1e-3) for s in unit.std(dim=(0, 2, 3)).tolist()),
    )  # fmt: skip
    counts = {split: dict(sorted(Counter(name for name, _ in items).items())) for split, items in splits.items()}
    meta = {
        "kind": "images",
        "task": "classification",
        "class_names": class_names,
        "counts": counts,
        "size": len(files),
        "preprocess": preprocess.to_dict(),
        "description": f"uploaded ImageFolder zip: {len(class_names)} classes, {counts_text(counts)}",
    }
    if ink := ink_of(tensors["images"]):
        meta["ink"] = asdict(ink)
    return Upload(meta, _save(tensors))


def counts_text(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{sum(c.values())} {split}" for split, c in counts.items() if c)


def _check_entries(entries: list[zipfile.ZipInfo], settings: Settings) -> None:
    if len(entries) > settings.max_dataset_files:
        raise PayloadTooLarge(f"the zip holds {len(entries):,} files; the limit is {settings.max_dataset_files:,}")
    total = 0
    for info in entries:
        name = info.filename
        path = PurePosixPath(name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or path.is_absolute():
            raise _refuse(f"{name!r}: absolute paths are not allowed in the zip")
        if ".." in path.parts or "\\" in name:
            raise _refuse(f"{name!r}: paths that leave the archive's folder ('..', backslashes) are not allowed")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _refuse(f"{name!r}: symbolic links are not allowed in the zip")
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > settings.max_compression_ratio:
            raise PayloadTooLarge(
                f"{name!r} unpacks {ratio:.0f}x its compressed size; the limit is {settings.max_compression_ratio:g}x"
            )
        total += info.file_size
        if total > settings.max_dataset_unpacked_bytes:
            raise PayloadTooLarge(f"the zip unpacks to more than {settings.max_dataset_unpacked_bytes:,} bytes")


def _layout(entries: list[zipfile.ZipInfo]) -> list[tuple[str, str, zipfile.ZipInfo]]:
    """(split, class, entry) for each image: `train/<class>/<file>`, `val/<class>/<file>`, optionally all under
    one top folder (what zipping a folder gives)."""
    parts = [PurePosixPath(info.filename).parts for info in entries]
    tops = {p[0] for p in parts if p}
    strip = 1 if len(tops) == 1 and not tops & {"train", "val"} else 0
    files = []
    for info, p in zip(entries, parts, strict=True):
        p = p[strip:]
        if len(p) != 3 or p[0] not in ("train", "val"):
            raise _refuse(f"{info.filename!r} is not in train/<class>/ or val/<class>/ (ImageFolder layout)")
        if not p[2].lower().endswith(IMAGE_SUFFIXES):
            raise _refuse(f"{info.filename!r}: only {', '.join(IMAGE_SUFFIXES)} images are accepted")
        files.append((p[0], p[1], info))
    if not any(split == "train" for split, _, _ in files):
        raise _refuse("the zip has no train/<class>/ images")
    return files


def _common_size(images: list[Image.Image], image_size: int | None) -> tuple[int, int]:
    """(width, height) every image gets: `image_size` square, or the one size they all share."""
    if image_size is not None:
        return image_size, image_size
    sizes = Counter(image.size for image in images)
    if len(sizes) > 1:
        (a, _), (b, _) = sizes.most_common(2)
        raise _refuse(
            f"the images have {len(sizes)} different sizes (e.g. {a[0]}x{a[1]} and {b[0]}x{b[1]}): pass image_size "
            "to resize them (shorter side, then a centre crop), e.g. 224 for the torchvision models",
            "image_size",
        )
    return next(iter(sizes))


# Tables train in float32: a value past its range would become infinite there, and the run fail as "diverged".
FLOAT32_MAX = float(np.finfo(np.float32).max)


def read_csv_table(data: bytes, target: str | None, task: str, max_cells: int) -> Upload:
    """A header row, then one row per example: every column but `target` a number (the features)."""
    if not target:
        raise _refuse("a CSV upload needs the name of its target column (form field target)", "target")
    rows = _csv_rows(data, max_cells)
    if len(rows) < 3:
        raise _refuse("the CSV needs a header row and at least two data rows")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise _refuse(f"no column {target!r} in the CSV header ({', '.join(header)})", "target")
    t = header.index(target)
    features = [h for i, h in enumerate(header) if i != t]
    if not features:
        raise _refuse("the CSV has no feature columns besides the target")
    values, targets = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _refuse(f"line {line} has {len(row)} fields; the header has {len(header)}")
        try:
            numbers = [float(v) for i, v in enumerate(row) if i != t]
        except ValueError:
            raise _refuse(f"line {line}: every feature must be a number ({row})") from None
        if not all(abs(v) <= FLOAT32_MAX for v in numbers):  # False for NaN too
            raise _refuse(f"line {line}: NaN, infinite values and values beyond float32's ±3.4e38 are not accepted")
        values.append(numbers)
        targets.append(row[t].strip())
    x = np.asarray(values, dtype=np.float64)
    if task == "regression":
        try:
            y = np.asarray([float(v) for v in targets], dtype=np.float64)
        except ValueError:
            raise _refuse(
                f"the target column {target!r} must be numeric for regression (for classes, pass task=classification)",
                "target",
            ) from None
        if not (np.abs(y) <= FLOAT32_MAX).all():
            raise _refuse(f"the target column {target!r} has NaN, infinite or beyond-float32 values", "target")
        class_names, preprocess = [target], tabular_preprocess(x, features, y)
    else:
        class_names = sorted(set(targets))
        if len(class_names) < 2:
            raise _refuse(f"the target column {target!r} needs at least two classes", "target")
        _refuse_unsplittable(
            Counter(targets), f"class of the target column {target!r} has a single row", "add rows", "target"
        )
        y = np.asarray([class_names.index(v) for v in targets], dtype=np.int64)
        preprocess = tabular_preprocess(x, features)
    pool = tabular_pool(x, y)
    meta = {
        "kind": "table",
        "task": task,
        "class_names": class_names,
        "feature_names": features,
        "counts": {"rows": len(values)},
        "size": len(values),
        "preprocess": preprocess.to_dict(),
        "description": f"uploaded CSV: {len(values)} rows, {len(features)} features, target {target!r} ({task})",
    }
    return Upload(meta, _save({"images": pool.images, "labels": pool.labels}))


def _csv_rows(data: bytes, max_cells: int) -> list[list[str]]:
    """The non-empty rows, read until `max_cells` values (a 413 beyond: the parsed table lives in memory)."""
    rows, cells = [], 0
    try:
        for row in csv_rows(data.decode("utf-8-sig")):
            cells += len(row)
            if cells > max_cells:
                raise PayloadTooLarge(f"the CSV has more than {max_cells:,} values (TRAINLAB_MAX_TABLE_CELLS)")
            rows.append(row)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _refuse(f"not a readable UTF-8 CSV file: {exc}") from None
    return rows


def _save(tensors: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()
