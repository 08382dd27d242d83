"""Real data laid out as users bring it: the shared ImageFolder sets zipped, CIFAR-10-format python batches made
from real CIFAR-10 images, the bundled diabetes table as a CSV."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "data"
CIFAR_MINI = SHARED / "cifar10-mini"
HYMENOPTERA_MINI = SHARED / "hymenoptera-mini"


def zip_folder(folder: Path, *, top: str | None = None) -> bytes:
    """The folder's train/ and val/ trees as a zip (optionally all under one top folder, as zipping a folder
    gives)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.relative_to(folder).parts[0] in ("train", "val"):
                name = path.relative_to(folder).as_posix()
                archive.write(path, f"{top}/{name}" if top else name)
    return buffer.getvalue()


def zip_entries(entries: dict[str, bytes], *, symlinks: tuple[str, ...] = (), stored: bool = False) -> bytes:
    buffer = io.BytesIO()
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            if name in symlinks:
                info.external_attr = 0o120777 << 16  # S_IFLNK
            archive.writestr(info, data)
    return buffer.getvalue()


def png_bytes(folder: Path, index: int = 0) -> bytes:
    """A real image of the folder, re-encoded as PNG."""
    path = sorted(folder.rglob("*.jpg"))[index]
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def write_cifar_batches(directory: Path) -> Path:
    """cifar10-mini's real images in CIFAR-10's python format: its train/ across data_batch_1..5, its val/ as
    test_batch (JPEG re-encodings of the original pixels, see that folder's README)."""
    folder = directory / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    classes = sorted(p.name for p in (CIFAR_MINI / "train").iterdir())

    def rows(split: str) -> tuple[np.ndarray, list[int]]:
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((CIFAR_MINI / split / name).glob("*.jpg")):
                images.append(np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).reshape(-1))
                labels.append(label)
        return np.stack(images).astype(np.uint8), labels

    train, train_labels = rows("train")
    order = np.random.default_rng(0).permutation(len(train))
    for i, part in enumerate(np.array_split(order, 5), start=1):
        batch = {b"data": train[part], b"labels": [train_labels[j] for j in part]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test, test_labels = rows("val")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": test, b"labels": test_labels}))
    return folder


def diabetes_csv() -> bytes:
    """The bundled diabetes data as a user's CSV: named feature columns and the target."""
    directory = REPO / "worker" / "data" / "diabetes"
    x = np.loadtxt(directory / "diabetes_data_raw.csv.gz")
    y = np.loadtxt(directory / "diabetes_target.csv.gz")
    lines = ["age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,progression"]
    lines += [",".join(f"{v:g}" for v in row) + f",{t:g}" for row, t in zip(x, y, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def upload_hymenoptera(client, image_size: int = 224) -> dict:
    """POST /datasets the hymenoptera photos as dataset `hymenoptera`, resized for the torchvision models."""
    response = client.post(
        "/datasets", data={"name": "hymenoptera", "image_size": str(image_size)},
        files={"file": ("hymenoptera.zip", zip_folder(HYMENOPTERA_MINI))},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()
