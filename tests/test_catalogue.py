"""The catalogue through the HTTP API: standard, bundled and uploaded datasets; layer lists checked before anything
is queued; regression; losses. Real data throughout (the shared ImageFolder sets, the bundled tables)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.specs import DatasetSpec, ExperimentSpec
from tests.conftest import REPO, deployment, run_cli, wait_for_status
from tests.datafiles import CIFAR_MINI, SHARED, diabetes_csv, png_bytes, zip_entries, zip_folder
from worker import datasets
from worker.datasets import load_dataset, read_cifar_batch
from worker.engine import fit
from worker.ink import ink_of
from worker.objectives import brier

BUILTIN = {"cifar10", "diabetes", "digits", "fashion-mnist", "fashion-mnist-10k", "mnist", "mnist-10k"}


@pytest.fixture(scope="module")
def api(tmp_path_factory, module_db_url: str):
    """One API for the checks that train nothing. Small caps, so that small test archives reach the limits."""
    root = tmp_path_factory.mktemp("api")
    caps = {
        "TRAINLAB_MAX_DATASET_FILES": "40",
        "TRAINLAB_MAX_COMPRESSION_RATIO": "50",
        "TRAINLAB_MAX_TABLE_CELLS": "1000",
    }
    with deployment(root, module_db_url, **caps) as dep, httpx.Client(base_url=dep.url, timeout=30) as client:
        yield dep, client


def _upload(client, name: str, data: bytes, filename: str = "data.zip", **form):
    return client.post("/datasets", data={"name": name, **form}, files={"file": (filename, data)})


def test_standard_datasets_name_their_missing_files(api) -> None:
    dep, client = api
    (dep.root / "data").mkdir(exist_ok=True)
    # The shared MNIST folder has the test split and the training labels, but not the training images.
    (dep.root / "data" / "mnist").symlink_to(SHARED / "mnist")
    listed = {d["name"]: d for d in client.get("/datasets").json() if d["source"] == "builtin"}
    assert set(listed) == BUILTIN
    assert listed["mnist"]["available"] is False and listed["mnist-10k"]["available"] is True
    assert listed["diabetes"]["task"] == "regression" and listed["diabetes"]["input_shape"] == [10, 1, 1]
    assert listed["fashion-mnist"]["available"] == datasets.SYSTEM_FASHION_DIR.is_dir()
    # scikit-learn's published per-class counts of its digits: 178 zeros ... 180 nines.
    digits = client.get("/datasets/digits").json()["counts"]["pool"]
    assert digits["0"] == 178 and digits["9"] == 180 and sum(digits.values()) == 1797

    spec = {"dataset": {"name": "mnist"}, "model": {"kind": "mlp"}}
    refused = client.post("/experiments", json=spec)
    assert refused.status_code == 422, refused.text
    error = refused.json()["detail"][0]
    assert error["loc"] == ["body", "dataset", "name"]
    assert "train-images-idx3-ubyte" in error["msg"] and str(dep.root / "data" / "mnist") in error["msg"]
    cifar = client.post("/experiments", json={"dataset": {"name": "cifar10"}, "model": {"kind": "cnn"}})
    assert cifar.status_code == 422 and "cifar-10-batches-py" in cifar.text and "data_batch_1" in cifar.text
    # This server does not download: asking for it says so.
    download = client.post("/experiments", json={**spec, "dataset": {"name": "mnist", "download": True}})
    assert download.status_code == 422 and "TRAINLAB_ALLOW_DOWNLOADS" in download.text
    assert client.get("/experiments").json()["total"] == 0


def test_cifar_python_batches_load_and_refuse_foreign_pickles(tmp_path: Path) -> None:
    from tests.datafiles import write_cifar_batches

    folder = write_cifar_batches(tmp_path)
    dataset = load_dataset(ExperimentSpec.model_validate(
        {"dataset": {"name": "cifar10", "val_fraction": 0.1}, "model": {"kind": "cnn"}}
    ).dataset, tmp_path)  # fmt: skip
    assert dataset.train.images.shape[1:] == (3, 32, 32) and dataset.train.images.dtype == torch.uint8
    assert len(dataset.train) + len(dataset.val) == 2000 and len(dataset.test) == 500
    # Pixels as the JPEG decodes them, channel-major as in the real batches.
    first = Image.open(sorted((CIFAR_MINI / "val" / "airplane").glob("*.jpg"))[0]).convert("RGB")
    assert torch.equal(dataset.test.images[0].permute(1, 2, 0), torch.from_numpy(np.array(first)))

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (folder / "evil").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="holds no"):
        read_cifar_batch(folder / "evil")
    assert not (tmp_path / "pwned").exists()


BAD_ZIPS = {
    "zip-slip": ({"train/a/../../evil.png": b"x"}, 422, "leave the archive"),
    "absolute": ({"/train/a/x.png": b"x"}, 422, "absolute paths"),
    "symlink": ({"train/a/x.png": b"/etc/passwd"}, 422, "symbolic links"),
    "bomb": ({"train/a/zeros.png": bytes(4_000_000)}, 413, "unpacks"),
    "too many files": ({f"train/a/{i}.png": b"x" for i in range(41)}, 413, "41 files"),
    "one class": ({"train/a/1.png": "IMG0", "train/a/2.png": "IMG1"}, 422, "at least two class folders"),
    "undecodable": ({"train/a/1.png": "IMG0", "train/b/2.png": b"not an image"}, 422, "train/b/2.png"),
    "layout": ({"images/a/1.png": "IMG0"}, 422, "ImageFolder layout"),
    "val class": ({"train/a/1.png": "IMG0", "train/b/2.png": "IMG1", "val/c/3.png": "IMG2"}, 422, "val/ has classes"),
    # Validation takes an image from each class that has two: here none has, and there is no val/ to use instead.
    "one image a class": ({"train/a/1.png": "IMG0", "train/b/2.png": "IMG1"}, 422, "add a val/ folder, or more"),
    "not a zip": ({}, 422, "not a readable zip"),
    "damaged entry": ({"train/a/1.png": "IMG0", "train/b/2.png": "IMG1"}, 422, "cannot be read from the zip"),
}


@pytest.mark.parametrize("case", BAD_ZIPS)
def test_bad_archives_are_refused_and_nothing_is_stored(api, case: str) -> None:
    _, client = api
    entries, status, message = BAD_ZIPS[case]
    real = {f"IMG{i}": png_bytes(CIFAR_MINI, i) for i in range(3)}
    entries = {name: real.get(data, data) if isinstance(data, str) else data for name, data in entries.items()}
    data = b"PK\x03\x04 truncated" if case == "not a zip" else zip_entries(
        entries, symlinks=("train/a/x.png",) if case == "symlink" else (), stored=case == "damaged entry"
    )  # fmt: skip
    if case == "damaged entry":  # one byte of an image flipped after zipping: its CRC no longer matches
        at = data.find(real["IMG1"]) + len(real["IMG1"]) // 2
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    response = _upload(client, "bad", data)
    assert response.status_code == status, response.text
    assert message in response.text
    assert client.get("/datasets/bad").status_code == 404
    assert "bad" not in [d["name"] for d in client.get("/datasets").json()]


def test_uploaded_image_folder_trains_and_cannot_be_deleted_while_used(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url) as dep:
        client = client_for(dep)
        # Zipped as a folder is (one top directory), with its val/ split.
        response = _upload(client, "cifar-mini", zip_folder(CIFAR_MINI, top="cifar10-mini"))
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["source"] == "uploaded" and created["input_shape"] == [3, 32, 32]
        assert created["class_names"][:3] == ["airplane", "automobile", "bird"]
        assert created["counts"]["train"]["cat"] == 200 and created["counts"]["val"]["truck"] == 50
        assert _upload(client, "cifar-mini", zip_folder(CIFAR_MINI)).status_code == 409
        assert _upload(client, "mnist", zip_folder(CIFAR_MINI)).status_code == 409  # a built-in name
        samples = client.get("/datasets/cifar-mini/samples.png")
        assert samples.status_code == 200 and Image.open(io.BytesIO(samples.content)).format == "PNG"

        spec = {
            "name": "cnn on an upload", "dataset": {"name": "cifar-mini"}, "epochs": 3,
            "model": {"kind": "cnn", "channels": [32, 64], "batchnorm": True}, "precision": "fp32",
        }  # fmt: skip
        experiment = client.post("/experiments", json=spec).json()
        # Queued on it: the dataset stays.
        refused = client.delete("/datasets/cifar-mini")
        assert refused.status_code == 409 and str(experiment["id"]) in refused.text
        dep.start_worker()
        done = wait_for_status(client, experiment["id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded", done["error"]
        # Its own val/ split is the validation set: 500 images, 10 classes (chance 0.10).
        assert done["best"]["val_accuracy"] > 0.3, done
        prediction = client.post(
            f"/experiments/{experiment['id']}/predict", files={"file": ("x.png", png_bytes(CIFAR_MINI / "val"))}
        )
        assert prediction.status_code == 200 and prediction.json()["class_name"] in created["class_names"]

        assert client.delete("/datasets/cifar-mini").status_code == 204
        assert client.get("/datasets/cifar-mini").status_code == 404
        # The trained model does not need the dataset to answer.
        again = client.post(
            f"/experiments/{experiment['id']}/predict", files={"file": ("x.png", png_bytes(CIFAR_MINI / "val"))}
        )
        assert again.status_code == 200


def test_a_table_over_the_cell_limit_is_refused(api) -> None:
    _, client = api
    response = _upload(client, "too-big", diabetes_csv(), "diabetes.csv", target="progression")
    assert response.status_code == 413 and "TRAINLAB_MAX_TABLE_CELLS" in response.text
    assert client.get("/datasets/too-big").status_code == 404


def test_photos_of_different_sizes_need_an_image_size(api) -> None:
    _, client = api
    from tests.datafiles import HYMENOPTERA_MINI

    photos = {f"train/{c}/{p.name}": p.read_bytes() for c in ("ants", "bees")
              for p in sorted((HYMENOPTERA_MINI / "train" / c).glob("*.jpg"))[:4]}  # fmt: skip
    for name in list(photos)[::3]:  # a folder's images may be PNG, JPEG or WebP
        webp = io.BytesIO()
        Image.open(io.BytesIO(photos.pop(name))).save(webp, format="WEBP")
        photos[name.replace(".jpg", ".webp")] = webp.getvalue()
    refused = _upload(client, "hymenoptera", zip_entries(photos))
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "image_size"]
    accepted = _upload(client, "hymenoptera", zip_entries(photos), image_size="64")
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["input_shape"] == [3, 64, 64] and accepted.json()["counts"]["train"] == {
        "ants": 4,
        "bees": 4,
    }


TWO_ORDERS = {
    # The same layers; batchnorm and the pool on either side of the activation.
    "conv-bn-relu-pool": ["conv2d", "batchnorm2d", "relu", "maxpool2d"],
    "conv-relu-pool-bn": ["conv2d", "relu", "maxpool2d", "batchnorm2d"],
}


def _layers(order: list[str]) -> list[dict]:
    block = {"conv2d": {"kind": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1}}
    layers = [block.get(kind, {"kind": kind}) for kind in order] * 2
    return [*layers, {"kind": "flatten"}, {"kind": "dropout", "p": 0.2}, {"kind": "linear"}]


def test_a_grayscale_dataset_says_how_its_ink_sits(api) -> None:
    """Light on dark or dark on light, how much of the frame the ink's box spans and how wide its strokes are: the
    dashboard's sketch pad frames a drawing the same way (MNIST's digits fit 20 of their 28 pixels, strokes ~2
    wide; scikit-learn's 8x8 digits fill theirs, strokes a fifth of it; so do Fashion-MNIST's clothes, whole
    shapes). Colour images and tables have none."""
    dep, client = api
    ink = {name: client.get(f"/datasets/{name}").json()["ink"] for name in ("mnist-10k", "fashion-mnist-10k", "digits")}
    assert ink == {
        "mnist-10k": {"color": "light", "extent": pytest.approx(20 / 28, abs=1e-4), "stroke": 0.0788},
        "fashion-mnist-10k": {"color": "light", "extent": 1.0, "stroke": 0.1862},
        "digits": {"color": "light", "extent": 1.0, "stroke": 0.1953},
    }, ink
    assert client.get("/datasets/diabetes").json()["ink"] is None
    assert ink_of(torch.zeros(4, 1, 8, 8, dtype=torch.uint8)) is None  # blank images
    # An upload of digits drawn dark on white (MNIST's, inverted), at 32x32 with their 20x20 box.
    mnist = load_dataset(DatasetSpec(name="mnist-10k"), dep.root / "data")
    entries = {}
    for i in range(12):
        image = Image.fromarray(255 - mnist.train.images[i, 0].numpy()).resize((32, 32), Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        entries[f"train/{mnist.train.labels[i].item() % 2}/{i}.png"] = buffer.getvalue()
    uploaded = _upload(client, "dark-digits", zip_entries(entries))
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["ink"] == {
        "color": "dark",
        "extent": pytest.approx(20 / 28, abs=0.04),
        "stroke": pytest.approx(0.08, abs=0.02),
    }
    assert client.get("/datasets/dark-digits").json()["ink"] == uploaded.json()["ink"]
    photos = {f"train/{c}/{p.name}": p.read_bytes() for c in ("cat", "dog")
              for p in sorted((CIFAR_MINI / "train" / c).glob("*.jpg"))[:3]}  # fmt: skip
    cifar = _upload(client, "cifar-few", zip_entries(photos))
    assert cifar.status_code == 201 and cifar.json()["ink"] is None, cifar.text


def test_layer_lists_are_shape_checked_before_anything_is_queued(api) -> None:
    _, client = api
    reports = {}
    for name, order in TWO_ORDERS.items():
        spec = {"dataset": {"name": "mnist-10k"}, "model": {"kind": "sequential", "layers": _layers(order)}}
        response = client.post("/experiments:validate", json=spec)
        assert response.status_code == 200, response.text
        reports[name] = response.json()
    a, b = reports.values()
    assert a["input_shape"] == [1, 28, 28]
    assert [layer["output_shape"] for layer in a["layers"]][:4] == [
        [16, 28, 28],
        [16, 28, 28],
        [16, 28, 28],
        [16, 14, 14],
    ]
    assert a["layers"][-1] == {"index": 10, "kind": "linear", "output_shape": [10], "parameters": 16 * 7 * 7 * 10 + 10}
    # Same parameters, a different order; batchnorm after the pool sees a map 4x smaller.
    assert a["parameters"] == b["parameters"] == a["trainable_parameters"] > 0
    assert a["estimated_memory_bytes"] > b["estimated_memory_bytes"] > 4 * a["parameters"]
    # The resolved spec: what was left out, inferred.
    first, last = a["spec"]["model"]["layers"][0], a["spec"]["model"]["layers"][-1]
    assert first["in_channels"] == 1 and (last["in_features"], last["out_features"]) == (16 * 7 * 7, 10)

    wrong = [({"kind": "linear", "out_features": 32}, {"kind": "flatten"}, {"kind": "linear"}), 0, "[1, 28, 28]"]
    shrinking = [
        ({"kind": "conv2d", "out_channels": 8, "kernel_size": 5}, {"kind": "maxpool2d", "kernel_size": 4},
         {"kind": "conv2d", "out_channels": 8, "kernel_size": 7}, {"kind": "flatten"}, {"kind": "linear"}),
        2, "[8, 6, 6]",
    ]  # fmt: skip
    # Batchnorm over features where the input is still a map.
    misplaced = [({"kind": "conv2d", "out_channels": 4}, {"kind": "batchnorm1d"}, {"kind": "flatten"},
                  {"kind": "linear"}), 1, "[4, 26, 26]"]  # fmt: skip
    for layers, index, shape in (wrong, shrinking, misplaced):
        spec = {"dataset": {"name": "mnist-10k"}, "model": {"kind": "sequential", "layers": list(layers)}}
        for endpoint in ("/experiments:validate", "/experiments"):
            response = client.post(endpoint, json=spec)
            assert response.status_code == 422, response.text
            error = response.json()["detail"][0]
            assert error["loc"] == ["body", "model", "layers", index]
            assert f"layer {index}" in error["msg"] and shape in error["msg"]
    assert "[8, 0, 0]" in client.post("/experiments", json={
        "dataset": {"name": "mnist-10k"}, "model": {"kind": "sequential", "layers": list(shrinking[0])}
    }).text  # fmt: skip
    # A built-in model too big for the input; a regression spec on a classification dataset.
    cnn = {
        "dataset": {"name": "digits"},
        "model": {"kind": "cnn", "channels": [8, 8, 8, 8], "pool": "none", "kernel_size": 5, "padding": 0},
    }
    assert client.post("/experiments", json=cnn).json()["detail"][0]["loc"] == ["body", "model"]
    # Batchnorm on a 1x1 map cannot train on batches of one: named before queueing, not when the job fails.
    normed = {"dataset": {"name": "digits"}, "model": {"kind": "cnn", "channels": [8, 8, 8, 8], "batchnorm": True}}
    for endpoint in ("/experiments:validate", "/experiments"):
        error = client.post(endpoint, json={**normed, "batch_size": 1}).json()["detail"][0]
        assert error["loc"] == ["body", "batch_size"] and "layer '13' one value per channel" in error["msg"], error
    assert client.post("/experiments:validate", json={**normed, "batch_size": 2}).status_code == 200
    task = client.post(
        "/experiments", json={"task": "regression", "dataset": {"name": "digits"}, "model": {"kind": "linear"}}
    )
    assert task.status_code == 422 and task.json()["detail"][0]["loc"] == ["body", "task"]
    assert client.get("/experiments").json()["total"] == 0


def test_regression_end_to_end_on_diabetes_and_an_uploaded_csv(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        upload = _upload(client, "diabetes-csv", diabetes_csv(), "diabetes.csv", target="progression")
        assert upload.status_code == 201, upload.text
        table = upload.json()
        assert table["task"] == "regression" and table["input_shape"] == [10, 1, 1] and table["counts"] == {"rows": 442}
        assert table["feature_names"][:3] == ["age", "sex", "bmi"]
        assert table["features"][0] == {"name": "age", "mean": pytest.approx(48.518, abs=1e-3), "min": 19, "max": 79}
        assert _upload(client, "t2", diabetes_csv(), "d.csv", target="nope").json()["detail"][0]["loc"] == [
            "body",
            "target",
        ]
        # A spreadsheet's export with semicolons (where the decimal mark is a comma) reads the same.
        semicolons = _upload(client, "t4", diabetes_csv().replace(b",", b";"), "d.csv", target="progression")
        assert semicolons.status_code == 201, semicolons.text
        assert {k: semicolons.json()[k] for k in ("feature_names", "counts")} == {
            k: table[k] for k in ("feature_names", "counts")
        }
        # A feature past float32's range (what tables train in) is refused at upload, not trained into a "diverged".
        lines = diabetes_csv().decode().splitlines()
        lines[5] = "1e300," + lines[5].split(",", 1)[1]
        huge = _upload(client, "t3", "\n".join(lines).encode(), "d.csv", target="progression")
        assert huge.status_code == 422 and "line 6: NaN, infinite values and values beyond" in huge.text, huge.text
        single = _upload(client, "t4", b"x,label\n1,yes\n2,no\n", "d.csv", target="label", task="classification")
        assert single.status_code == 422 and "a single row" in single.text and "add rows" in single.text, single.text

        base = {"task": "regression", "model": {"kind": "linear"}, "epochs": 30, "batch_size": 32,
                "optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.9}}  # fmt: skip
        ids = [
            client.post("/experiments", json={**base, "dataset": {"name": name}}).json()["id"]
            for name in ("diabetes", "diabetes-csv")
        ]
        ids.append(client.post("/experiments", json={
            **base, "dataset": {"name": "diabetes"}, "loss": {"kind": "huber", "delta": 1.0},
            "model": {"kind": "mlp", "hidden": [32]}, "optimizer": {"kind": "adam", "lr": 0.003},
            "early_stopping": {"monitor": "val_r2", "patience": 5},
        }).json()["id"])  # fmt: skip
        runs = [wait_for_status(client, i, {"succeeded", "failed"}) for i in ids]
        assert [r["status"] for r in runs] == ["succeeded"] * 3, [r["error"] for r in runs]
        builtin, uploaded = (client.get(f"/experiments/{i}/metrics").json() for i in ids[:2])
        # The same table from the package and from a CSV: the same numbers.
        assert [round(r["val_r2"], 6) for r in builtin] == [round(r["val_r2"], 6) for r in uploaded]
        last = builtin[-1]
        assert last["train_accuracy"] is None and last["val_accuracy"] is None
        assert last["val_r2"] > 0.35 and 40 < last["val_mae"] < last["val_rmse"] < 70, last
        best = min(builtin, key=lambda r: (r["val_loss"], r["epoch"]))
        assert runs[0]["best"] == {"epoch": best["epoch"], "val_accuracy": None, "val_loss": best["val_loss"]}
        assert client.get(f"/experiments/{ids[0]}/curves.png").status_code == 200
        assert client.get(f"/experiments/{ids[0]}/confusion").status_code == 409
        scatter = client.get(f"/experiments/{ids[0]}/predicted-vs-actual.png")  # a regression's confusion matrix
        assert scatter.status_code == 200 and Image.open(io.BytesIO(scatter.content)).format == "PNG"
        coefficients = client.get(f"/experiments/{ids[0]}/weights.png")  # a bar a feature, the largest first
        assert coefficients.status_code == 200 and coefficients.headers["content-type"] == "image/png"
        # Compared on what a regression records: by default val_loss, by which its best epoch is chosen.
        pair = {"ids": f"{ids[0]},{ids[2]}"}
        compared = client.get("/experiments/compare", params=pair).json()
        assert compared["best_val_loss"] == [runs[0]["best"]["val_loss"], runs[2]["best"]["val_loss"]]
        assert compared["best_val_loss_vs_first"][1] == runs[2]["best"]["val_loss"] - runs[0]["best"]["val_loss"]
        chart = client.get("/experiments/compare.png", params=pair)
        assert chart.content == client.get("/experiments/compare.png", params={**pair, "metric": "val_loss"}).content
        refused = client.get("/experiments/compare.png", params={**pair, "metric": "val_accuracy"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "metric"]
        assert "regression experiments do not record val_accuracy" in refused.text and "val_r2" in refused.text

        rows = [[59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.8598, 87], [48, 1, 21.6, 87, 183, 103.2, 70, 3, 3.8918, 69]]
        predicted = client.post(f"/experiments/{ids[0]}/predict/rows", json={"rows": rows})
        assert predicted.status_code == 200, predicted.text
        high, low = predicted.json()["values"]  # real targets 151 and 75
        assert high > low and 25 < low < high < 346
        assert predicted.json()["outside_training_range"] == [None, None]  # real patients: what the model learnt
        # The first patient as scikit-learn's own copy of the table has him (each column centred and scaled):
        # answered, and told which values lie outside what the model learnt from, for both copies of the table.
        scaled = [0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, -0.0434, -0.0026, 0.0199, -0.0176]
        for experiment_id in ids[:2]:
            answer = client.post(f"/experiments/{experiment_id}/predict/rows", json={"rows": [rows[0], scaled]})
            assert answer.status_code == 200 and len(answer.json()["values"]) == 2, answer.text
            fine, outside = answer.json()["outside_training_range"]
            assert fine is None and outside.startswith(
                "age = 0.0381 (learnt from 19 to 79), sex = 0.0507 (learnt from 1 to 2), bmi = 0.0617"
            ), outside
            assert outside.endswith("s6 = -0.0176 (learnt from 58 to 124)"), outside
        short = client.post(f"/experiments/{ids[0]}/predict/rows", json={"rows": [[1, 2, 3]]})
        assert short.status_code == 422 and short.json()["detail"][0]["loc"] == ["body", "rows", 0]
        # Finite in JSON, but past float32's range: the output is no number to answer with.
        huge = client.post(f"/experiments/{ids[0]}/predict/rows", json={"rows": [rows[0], [1e300] + rows[1][1:]]})
        assert huge.status_code == 422 and huge.json()["detail"][0]["loc"] == ["body", "rows", 1], huge.text
        image = client.post(f"/experiments/{ids[0]}/predict", files={"file": ("x.png", png_bytes(CIFAR_MINI))})
        assert image.status_code == 409 and "predict/rows" in image.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # about tables, not the database
def test_a_classifier_of_an_uploaded_table_predicts_rows_and_counts_its_errors(tmp_path: Path, db_url: str,
                                                                                client_for) -> None:  # fmt: skip
    """The diabetes patients classed by whether their disease progressed more than the median (140.5): from the
    upload to each row's classes and the confusion matrix; there are no images of its errors to show."""
    header, *lines = diabetes_csv().decode().splitlines()
    rows = [line.rsplit(",", 1) for line in lines]
    table = [header.replace("progression", "progressed")]
    table += [f"{features},{'more' if float(target) > 140.5 else 'less'}" for features, target in rows]
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        upload = _upload(client, "progressed", "\n".join(table).encode(), "p.csv", target="progressed",
                         task="classification")  # fmt: skip
        assert upload.status_code == 201 and upload.json()["class_names"] == ["less", "more"], upload.text
        spec = {"dataset": {"name": "progressed"}, "model": {"kind": "mlp", "hidden": [16]}, "epochs": 10}
        run = wait_for_status(client, client.post("/experiments", json=spec).json()["id"], {"succeeded", "failed"})
        assert run["status"] == "succeeded", run["error"]
        first = [float(v) for v in rows[0][0].split(",")]
        answer = client.post(f"/experiments/{run['id']}/predict/rows", params={"top_k": 2}, json={"rows": [first]})
        [classes] = answer.json()["classes"]
        assert {c["class_name"] for c in classes} == {"less", "more"}, answer.text
        assert answer.json()["values"] is None and answer.json()["outside_training_range"] == [None]
        confusion = client.get(f"/experiments/{run['id']}/confusion").json()
        assert confusion["accuracy"] == pytest.approx(run["best"]["val_accuracy"]) and confusion["accuracy"] > 0.6
        errors = client.get(f"/experiments/{run['id']}/misclassified.png")
        assert errors.status_code == 409 and "learned from a table: there are no images" in errors.text, errors.text
        scatter = client.get(f"/experiments/{run['id']}/predicted-vs-actual.png")
        assert scatter.status_code == 409 and "is a classifier" in scatter.text, scatter.text
        digit = (REPO / "examples/images/mnist-val-3.png").read_bytes()
        for figure in ("activations.png", "saliency.png"):
            refused = client.post(f"/experiments/{run['id']}/{figure}", files={"file": digit})
            assert refused.status_code == 409 and "learned from a table" in refused.text, refused.text
        weights = client.get(f"/experiments/{run['id']}/weights.png")  # its 16 hidden units' weights on each column
        assert weights.status_code == 200 and Image.open(io.BytesIO(weights.content)).format == "PNG", weights.text
        confusion = run_cli("confusion", str(run["id"]), url=dep.url, cwd=tmp_path)  # no mistakes to point at
        assert confusion.returncode == 0 and "more" in confusion.stdout, confusion.stderr
        assert "trainlab mistakes" not in confusion.stdout, confusion.stdout


def test_a_table_uploaded_before_ranges_were_kept_keeps_its_names_and_warns_of_nothing() -> None:
    """Uploads stored before the preprocess record held the columns' names and ranges: the names come from beside
    it, and no row is said to lie outside a range that was never recorded."""
    from worker.datasets import uploaded_info

    preprocess = {"channels": 2, "height": 1, "width": 1, "mean": [0.0, 1.0], "std": [1.0, 2.0]}
    meta = {"description": "old", "class_names": ["y"], "preprocess": preprocess, "size": 9, "task": "regression",
            "feature_names": ["a", "b"]}  # fmt: skip
    info = uploaded_info("old", meta)
    assert info.feature_names == ("a", "b") and info.preprocess.low == ()
    assert info.preprocess.outside_training_range(torch.tensor([[1e6, -1e6]])) == [None]


def _fit(spec: dict, data_dir: Path) -> list:
    parsed = ExperimentSpec.model_validate(spec)
    rows: list = []
    fit(parsed, load_dataset(parsed.dataset, data_dir), torch.device("cpu"), on_epoch=lambda m, _: rows.append(m))
    return rows


def test_losses_by_task(tmp_path: Path) -> None:
    base = {"dataset": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [32]}, "epochs": 2, "precision": "fp32"}
    ce = _fit({**base, "loss": {"kind": "cross_entropy"}}, tmp_path)
    nll = _fit({**base, "loss": {"kind": "nll"}}, tmp_path)
    smoothed = _fit({**base, "loss": {"kind": "cross_entropy", "label_smoothing": 0.2}}, tmp_path)
    # NLL of log-softmax is cross-entropy: the same run, step for step.
    assert [r.val_loss for r in ce] == pytest.approx([r.val_loss for r in nll], rel=1e-5)
    # Smoothed targets cap the confidence the loss rewards: a higher loss, still a classifier that learns.
    assert smoothed[-1].train_loss > ce[-1].train_loss and smoothed[-1].val_accuracy > 0.8
    # The squared error of the probabilities (the Brier score): 0 to 2 an example; a classifier that learns too, if
    # slower (tests/test_examples.py: the losses' sweep).
    squared = _fit({**base, "loss": {"kind": "mse"}}, tmp_path)
    assert all(0 <= r.train_loss <= 2 and 0 <= r.val_loss <= 2 for r in squared) and squared[-1].val_accuracy > 0.6
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert brier(logits, labels).item() == pytest.approx(((logits.softmax(1) - one_hot) ** 2).sum().item() / 5)
    assert brier(logits, labels, reduction="sum").item() == pytest.approx(5 * brier(logits, labels).item())
    regression = {"task": "regression", "dataset": {"name": "diabetes"}, "model": {"kind": "linear"}, "epochs": 10}
    for kind in ("mse", "l1", "huber"):
        rows = _fit({**regression, "loss": {"kind": kind}, "optimizer": {"kind": "adam", "lr": 0.01}}, tmp_path)
        assert rows[-1].val_r2 > 0.2 and rows[-1].val_accuracy is None, (kind, rows[-1])
