"""From a POST to a trained MNIST classifier answering /predict, through a real server and a real worker."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from service.specs import DatasetSpec
from tests.conftest import REPO, deployment, tiny_spec, wait_for_status
from worker.datasets import load_dataset
from worker.inference import Predictor


def test_cnn_on_mnist_trains_and_predicts(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        # The README's quickstart, verbatim.
        spec = json.loads((REPO / "examples" / "mnist-cnn.json").read_text())
        response = client.post("/experiments", json=spec)
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["status"] == "queued"
        assert response.headers["location"] == f"/experiments/{created['id']}"
        # Every default is filled in.
        assert created["spec"]["optimizer"] == {"kind": "adam", "lr": 0.001, "weight_decay": 0.0}
        assert created["spec"]["dataset"] == {"name": "mnist-10k", "val_fraction": 0.2, "seed": 0, "download": False}
        experiment_id = created["id"]

        # Poll as a client would: only newer rows each time.
        rows: list[dict] = []
        deadline = time.monotonic() + 300
        while len(rows) < 2 and time.monotonic() < deadline:
            since = rows[-1]["epoch"] if rows else 0
            new = client.get(f"/experiments/{experiment_id}/metrics", params={"since_epoch": since}).json()
            assert all(row["epoch"] > since for row in new)
            rows += new
            time.sleep(0.5)
        assert [row["epoch"] for row in rows] == [1, 2], dep.logs("worker")
        for row in rows:
            assert {k for k, v in row.items() if v is not None} == {
                "epoch", "train_loss", "train_loss_curve", "train_accuracy", "val_loss", "val_accuracy", "lr",
                "duration_s", "samples_per_s", "train_samples",
            }  # fmt: skip
            assert len(row["train_loss_curve"]) == 20  # 125 batches: a point each sixth or so
            assert {"train_mae", "val_mae", "val_rmse", "val_r2"} <= set(row)  # regression's, null here
            assert row["duration_s"] > 0 and row["samples_per_s"] > 0 and row["lr"] == 0.001
        assert rows[-1]["val_accuracy"] >= 0.95, rows

        experiment = wait_for_status(client, experiment_id, {"succeeded", "failed"})
        assert experiment["status"] == "succeeded", experiment["error"]
        assert experiment["current_epoch"] == 2 and experiment["attempt"] == 1
        best = max(rows, key=lambda row: row["val_accuracy"])
        assert experiment["best"] == {
            "epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"]
        }  # fmt: skip
        assert experiment["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        assert experiment["environment"]["torch"] == torch.__version__
        assert experiment["environment"]["device"] == experiment["device"]

        curves = client.get(f"/experiments/{experiment_id}/curves.png")
        assert curves.status_code == 200 and curves.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(curves.content))
        assert image.format == "PNG" and image.width >= 600

        # Ten real validation images, written to PNG files as a user would have them.
        val = load_dataset(DatasetSpec(name="mnist-10k"), tmp_path).val
        correct = 0
        for i in range(10):
            path = tmp_path / f"val-{i}.png"
            Image.fromarray(val.images[i * 150, 0].numpy()).save(path)
            with path.open("rb") as f:
                response = client.post(
                    f"/experiments/{experiment_id}/predict", files={"file": (path.name, f, "image/png")}
                )
            assert response.status_code == 200, response.text
            prediction = response.json()
            assert prediction["epoch"] == best["epoch"]
            assert prediction["class_name"] == str(prediction["label"])
            probabilities = [p["probability"] for p in prediction["probabilities"]]
            assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
            assert prediction["probabilities"][0]["label"] == prediction["label"]
            correct += prediction["label"] == int(val.labels[i * 150])
            assert prediction["outside_training_range"] is None  # digits like those it learnt from
        assert correct >= 9
        for digit in (3, 7):
            path = REPO / "examples" / "images" / f"mnist-val-{digit}.png"
            response = client.post(f"/experiments/{experiment_id}/predict", files={"file": path.read_bytes()})
            assert response.json()["label"] == digit, response.text
        # A digit drawn dark on white, where MNIST's are white on black: answered, and said to be unlike them all.
        buffer = io.BytesIO()
        ImageOps.invert(Image.open(path).convert("L")).save(buffer, format="PNG")
        inverted = client.post(f"/experiments/{experiment_id}/predict", files={"file": buffer.getvalue()}).json()
        outside = inverted["outside_training_range"]
        assert re.fullmatch(r"mean brightness = 0\.9\d \(learnt from 0\.0\d to 0\.[23]\d\)", outside), outside

        # A named epoch's checkpoint answers too, as long as retention (best + last by default) kept it.
        buffer = io.BytesIO()
        Image.fromarray(val.images[0, 0].numpy()).save(buffer, format="JPEG")
        jpeg = {"file": ("x.jpg", buffer.getvalue(), "image/jpeg")}
        response = client.post(f"/experiments/{experiment_id}/predict", params={"epoch": 2, "top_k": 3}, files=jpeg)
        assert response.status_code == 200, response.text
        assert response.json()["epoch"] == 2 and len(response.json()["probabilities"]) == 3
        assert best["epoch"] == 2  # so epoch 1 was neither best nor last:
        response = client.post(f"/experiments/{experiment_id}/predict", params={"epoch": 1}, files=jpeg)
        assert response.status_code == 404 and "kept: 2" in response.json()["detail"]

        # The trained model leaves as a file that plain torch reads, and that answers as /predict does.
        download = client.get(f"/experiments/{experiment_id}/checkpoint.pt")
        assert download.status_code == 200 and download.headers["x-trainlab-epoch"] == "2"
        sha256 = hashlib.sha256(download.content).hexdigest()
        assert download.headers["etag"] == f'"{sha256}"'
        assert client.get(f"/experiments/{experiment_id}/checkpoints").json() == [{"epoch": 2, "sha256": sha256}]
        assert f'filename="experiment-{experiment_id}-epoch-2.pt"' in download.headers["content-disposition"]
        raw = torch.load(io.BytesIO(download.content), weights_only=True)
        assert {"model", "spec", "preprocess", "class_names"} <= set(raw) and raw["class_names"] == list("0123456789")
        seven = REPO / "examples" / "images" / "mnist-val-7.png"
        served = client.post(f"/experiments/{experiment_id}/predict", files={"file": seven.read_bytes()}).json()
        local = Predictor(download.content).predict(Image.open(seven))
        assert [s.label for s in local] == [p["label"] for p in served["probabilities"]]
        assert [s.probability for s in local] == pytest.approx([p["probability"] for p in served["probabilities"]])
        assert client.get(f"/experiments/{experiment_id}/checkpoint.pt", params={"epoch": 1}).status_code == 404


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a worker without CUDA to make a job fail")
def test_failed_job_records_error_and_worker_goes_on(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        bad = client.post("/experiments", json=tiny_spec(device="cuda")).json()
        good = client.post("/experiments", json=tiny_spec()).json()
        failed = wait_for_status(client, bad["id"], {"succeeded", "failed"})
        assert failed["status"] == "failed"
        assert "CUDA" in failed["error"] and failed["finished_at"] is not None
        assert client.get(f"/experiments/{bad['id']}/metrics").json() == []
        assert wait_for_status(client, good["id"], {"succeeded", "failed"})["status"] == "succeeded"
        listed = client.get("/experiments", params={"status": "failed"}).json()
        assert [e["id"] for e in listed["items"]] == [bad["id"]] and listed["total"] == 1
