"""Recipes end to end through HTTP, with one real server and one real worker for the module."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, Deployment, deployment, tiny_spec, wait_for_status
from worker import datasets
from worker.datasets import SYSTEM_FASHION_DIR

DONE = {"succeeded", "failed"}


@pytest.fixture(scope="module")
def service(tmp_path_factory, module_db_url: str) -> Iterator[tuple[Deployment, httpx.Client]]:
    with deployment(tmp_path_factory.mktemp("recipes"), module_db_url, workers=1) as dep, httpx.Client(
        base_url=dep.url, timeout=60
    ) as client:
        yield dep, client


def submit(client: httpx.Client, spec: dict) -> dict:
    response = client.post("/experiments", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def finished(client: httpx.Client, experiment_id: int, dep: Deployment) -> dict:
    experiment = wait_for_status(client, experiment_id, DONE)
    assert experiment["status"] == "succeeded", (experiment["error"], dep.logs("worker"))
    return experiment


def assert_png(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return image


def test_validate_warns_and_queues_nothing(service) -> None:
    _, client = service
    before = client.get("/experiments").json()["total"]
    spec = tiny_spec(dataset={"name": "mnist-10k"}, augment=[{"kind": "vflip"}, {"kind": "rotation", "degrees": 90}])
    response = client.post("/experiments:validate", json=spec)
    assert response.status_code == 200
    body = response.json()
    assert body["spec"]["augment"] == [{"kind": "vflip", "p": 0.5}, {"kind": "rotation", "degrees": 90.0}]
    assert len(body["warnings"]) == 2 and "digits" in body["warnings"][0] and "30 degrees" in body["warnings"][1]
    assert "nn.Linear(in_features=784, out_features=32)," in body["model_code"], body["model_code"]
    assert client.get("/experiments").json()["total"] == before
    bad = client.post("/experiments:validate", json=tiny_spec(dataset={"name": "nope"}))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "dataset", "name"]
    preview = assert_png(client.post("/experiments:validate/augmentations.png", json=spec))
    assert preview.width > 400
    table = tiny_spec(dataset={"name": "diabetes"}, task="regression", loss={"kind": "mse"})
    convolutions = [{"kind": "conv2d", "out_channels": 4, "padding": 1}, {"kind": "flatten"}, {"kind": "linear"}]
    for model in ({"kind": "cnn"}, {"kind": "sequential", "layers": convolutions}):
        [warning] = client.post("/experiments:validate", json={**table, "model": model}).json()["warnings"]
        assert "diabetes is a table" in warning and "an mlp does the same" in warning, warning
    assert client.post("/experiments:validate", json=table).json()["warnings"] == []
    head_only = tiny_spec(model={"kind": "resnet18", "pretrained": "none", "freeze": "backbone"}, compile=True)
    [warning] = client.post("/experiments:validate", json=head_only).json()["warnings"]
    assert "compile: true compiles nothing" in warning, warning
    augmented = {**head_only, "augment": [{"kind": "gaussian_noise", "std": 0.1}]}  # the backbone runs every epoch
    assert client.post("/experiments:validate", json=augmented).json()["warnings"] == []
    refused = client.post("/experiments:validate/augmentations.png", json=table)  # was a 500 (found by fuzzing)
    assert refused.status_code == 409 and "diabetes is a table" in refused.text, refused.text
    assert client.get("/experiments").json()["total"] == before


def test_augmented_run_keeps_its_warnings_and_shows_its_augmentations(service) -> None:
    dep, client = service
    spec = tiny_spec(augment=[{"kind": "hflip"}, {"kind": "gaussian_noise", "std": 0.05}], epochs=1)
    created = submit(client, spec)
    assert len(created["warnings"]) == 1 and "hflip" in created["warnings"][0]
    experiment = finished(client, created["id"], dep)
    assert experiment["warnings"] == created["warnings"]
    assert_png(client.get(f"/experiments/{created['id']}/augmentations.png"))


def test_early_stopping_reduce_on_plateau_and_retention(service) -> None:
    dep, client = service
    spec = tiny_spec(
        epochs=40,
        optimizer={"kind": "adamw", "lr": 0.01},
        scheduler={"kind": "reduce_on_plateau", "monitor": "val_accuracy", "patience": 0, "factor": 0.5},
        early_stopping={"monitor": "val_accuracy", "patience": 2},
        checkpoints={"keep_best": 1, "keep_last": 2},
    )
    experiment = finished(client, submit(client, spec)["id"], dep)
    rows = client.get(f"/experiments/{experiment['id']}/metrics").json()
    last = rows[-1]["epoch"]
    assert experiment["current_epoch"] == last < 40
    assert experiment["stop_reason"].startswith(f"early stopping after epoch {last}: val_accuracy")
    assert rows[-1]["lr"] < rows[0]["lr"]  # the plateau schedule cut the lr on the way
    kept = {
        epoch for epoch in range(1, last + 1)
        if client.post(f"/experiments/{experiment['id']}/predict", params={"epoch": epoch},
                       files={"file": (REPO / "examples/images/mnist-val-3.png").read_bytes()}).status_code == 200
    }  # fmt: skip
    assert kept == {experiment["best"]["epoch"], last - 1, last}


def test_confusion_and_misclassified(service) -> None:
    dep, client = service
    experiment = finished(client, submit(client, tiny_spec(epochs=3))["id"], dep)
    confusion = client.get(f"/experiments/{experiment['id']}/confusion").json()
    matrix = torch.tensor(confusion["matrix"])
    assert matrix.shape == (10, 10) and int(matrix.sum()) == 359  # digits' validation split
    assert confusion["accuracy"] == pytest.approx(experiment["best"]["val_accuracy"], abs=1e-6)
    assert confusion["epoch"] == experiment["best"]["epoch"]
    for i, accuracy in enumerate(confusion["per_class_accuracy"]):
        assert accuracy == pytest.approx(float(matrix[i, i] / matrix[i].sum()))
    for j, precision in enumerate(confusion["per_class_precision"]):  # by columns: of those called j, the true js
        assert precision == (pytest.approx(float(matrix[j, j] / matrix[:, j].sum())) if matrix[:, j].sum() else None)
    everything = assert_png(client.get(f"/experiments/{experiment['id']}/misclassified.png", params={"limit": 8}))
    assert client.get("/experiments/999/confusion").status_code == 404
    # One cell of mistakes (the dashboard's confusion matrix links each): its images alone.
    true, predicted = max(((i, j) for i in range(10) for j in range(10) if i != j), key=lambda c: matrix[c])
    assert matrix[true, predicted] > 0, matrix
    cell = {"true": true, "predicted": predicted, "limit": 8}
    assert assert_png(client.get(f"/experiments/{experiment['id']}/misclassified.png", params=cell)) != everything
    for wrong, field in (({"true": 10}, "true"), ({"predicted": 12}, "predicted"), ({"true": 3, "predicted": 3},
                         "predicted")):  # fmt: skip
        refused = client.get(f"/experiments/{experiment['id']}/misclassified.png", params=wrong)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", field], refused.text
    # What each layer makes of an image, sent as to /predict (tests/test_model_views.py checks the layers).
    png = (REPO / "examples/images/mnist-val-3.png").read_bytes()
    digit = {"content": png, "headers": {"content-type": "image/png"}}
    assert_png(client.post(f"/experiments/{experiment['id']}/activations.png", **digit))
    assert_png(client.get(f"/experiments/{experiment['id']}/weights.png"))  # the MLP's first units, as 8x8 images
    assert_png(client.post(f"/experiments/{experiment['id']}/saliency.png", params={"label": 9}, **digit))
    refused = client.post(f"/experiments/{experiment['id']}/saliency.png", params={"label": 10}, **digit)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "label"], refused.text
    # The training loss's gradient at each of the MLP's two linear layers (tests/test_model_views.py: the values).
    gradients = client.get(f"/experiments/{experiment['id']}/gradients").json()
    assert (gradients["epoch"], gradients["examples"]) == (experiment["best"]["epoch"], 256), gradients
    layers = [(layer["name"], layer["parameters"]) for layer in gradients["layers"]]
    assert layers == [("1 linear", 64 * 32), ("3 linear", 32 * 10)], layers
    assert all(layer["gradient_rms"] > 0 and layer["weight_rms"] > 0 for layer in gradients["layers"]), gradients
    [relu] = gradients["relus"]  # its one hidden layer's ReLU: how many of its 32 units never fire on the sample
    assert (relu["name"], relu["units"]) == ("2 relu", 32) and 0 <= relu["dead"] < 0.5, relu
    kept = {c["epoch"] for c in client.get(f"/experiments/{experiment['id']}/checkpoints").json()}
    for epoch in range(1, 4):
        response = client.get(f"/experiments/{experiment['id']}/gradients", params={"epoch": epoch})
        assert response.status_code == (200 if epoch in kept else 404), response.text
    assert_png(client.get(f"/experiments/{experiment['id']}/gradients.png"))
    assert client.get("/experiments/999/gradients.png").status_code == 404
    text = client.post(f"/experiments/{experiment['id']}/activations.png", files={"file": ("a.png", b"not an image")})
    assert text.status_code == 415 and "not a PNG, JPEG or WebP image" in text.text, text.text
    assert client.post("/experiments/999/activations.png", **digit).status_code == 404


def test_rerun_reproduces_and_compare_shows_the_difference(service) -> None:
    dep, client = service
    original = finished(client, submit(client, tiny_spec(epochs=3, model={"kind": "mlp", "dropout": 0.2}))["id"], dep)
    response = client.post(f"/experiments/{original['id']}/rerun")
    assert response.status_code == 201 and response.json()["rerun_of"] == original["id"]
    rerun = finished(client, response.json()["id"], dep)
    other = finished(client, submit(client, tiny_spec(epochs=2, optimizer={"kind": "sgd", "lr": 0.1}))["id"], dep)

    def metrics(e: dict) -> list[dict]:
        rows = client.get(f"/experiments/{e['id']}/metrics").json()
        return [{k: v for k, v in row.items() if k not in ("duration_s", "samples_per_s")} for row in rows]

    assert metrics(rerun) == metrics(original)  # same spec and seed on the CPU: identical
    assert rerun["environment"] == original["environment"]
    comparison = client.get("/experiments/compare", params={"ids": f"{original['id']},{other['id']}"}).json()
    differences = {d["path"]: d["values"] for d in comparison["spec_differences"]}
    assert differences["optimizer.kind"] == ["adam", "sgd"] and differences["epochs"] == [3, 2]
    assert "optimizer.momentum" in differences and "name" not in differences
    # Each run's values where they differ, in brief, as one line to label it by.
    first, second = comparison["labels"]
    assert first.startswith("epochs=3, ") and "optimizer.kind=adam" in first, first
    assert second.startswith("epochs=2, ") and "optimizer.kind=sgd" in second, second
    assert [row["epoch"] for row in comparison["epochs"]] == [1, 2, 3]
    assert comparison["epochs"][2]["values"]["val_accuracy"][1] is None
    best = comparison["best_val_accuracy"]
    assert comparison["best_val_accuracy_vs_first"] == pytest.approx([0.0, best[1] - best[0]])
    for ids in ("1", "a,b", "1,99999"):
        assert client.get("/experiments/compare", params={"ids": ids}).status_code in (404, 422), ids


def test_sweep_grid_runs_every_trial_and_ranks_them(service) -> None:
    dep, client = service
    request = {
        "name": "tiny grid",
        "base": tiny_spec(epochs=2, optimizer={"kind": "sgd", "lr": 0.1}),
        "grid": {"optimizer.lr": [0.3, 0.001], "batch_size": [16, 128]},
        "max_trials": 4,
    }
    response = client.post("/sweeps", json=request)
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert response.headers["location"] == f"/sweeps/{sweep['id']}" and len(sweep["trials"]) == 4
    assert {(t["params"]["optimizer.lr"], t["params"]["batch_size"]) for t in sweep["trials"]} == {
        (0.3, 16), (0.3, 128), (0.001, 16), (0.001, 128)
    }  # fmt: skip
    for trial in sweep["trials"]:
        finished(client, trial["experiment_id"], dep)
    ranked = client.get(f"/sweeps/{sweep['id']}").json()["trials"]
    scores = [t["best_val_accuracy"] for t in ranked]
    assert scores == sorted(scores, reverse=True)
    assert ranked[-1]["params"] == {"optimizer.lr": 0.001, "batch_size": 128}  # fewest, tiniest steps learn least
    assert ranked[-1]["label"] == "optimizer.lr=0.001, batch_size=128"
    assert ranked[-1]["name"] == f"tiny grid [{ranked[-1]['label']}]"
    assert_png(client.get(f"/sweeps/{sweep['id']}/compare.png"))
    assert_png(client.get(f"/sweeps/{sweep['id']}/compare.png", params={"metric": "train_loss"}))
    assert client.get(f"/sweeps/{sweep['id']}/compare.png", params={"metric": "xval_lossx"}).status_code == 422
    [summary] = [s for s in client.get("/sweeps").json() if s["id"] == sweep["id"]]
    assert summary["trials"] == summary["finished"] == 4 and summary["best_val_accuracy"] == scores[0]

    assert all(t["warnings"] == [] for t in ranked)
    # What the curves show: 22 steps at 0.001 barely move the loss, and the accuracy stays at chance (0.109 at
    # seed 0 in-process); the best trial's curves show nothing wrong.
    assert ranked[-1]["findings"] == ["not_learning"] and ranked[0]["findings"] == [], ranked
    # A trial whose spec deserves a warning carries it, as the experiment would from POST /experiments.
    flips = {"name": "flips", "base": tiny_spec(epochs=1), "grid": {"augment": [[], [{"kind": "hflip"}]]}}
    trials = {t["label"]: t for t in client.post("/sweeps", json=flips).json()["trials"]}
    assert trials["augment=[]"]["warnings"] == [], trials
    [warning] = trials["augment=[hflip()]"]["warnings"]
    assert warning.startswith("augment[0] (hflip): digits holds digits, whose mirror images are not digits"), warning
    for trial in trials.values():
        finished(client, trial["experiment_id"], dep)
    assert client.delete(f"/sweeps/{sweep['id']}").status_code == 204  # with all its trials
    assert client.get(f"/sweeps/{sweep['id']}").status_code == 404
    assert all(client.get(f"/experiments/{t['experiment_id']}").status_code == 404 for t in sweep["trials"])
    assert sweep["id"] not in [s["id"] for s in client.get("/sweeps").json()]


def test_a_regression_sweep_ranks_its_trials_by_validation_loss(service) -> None:
    dep, client = service
    line = json.loads((REPO / "examples" / "diabetes-linear-regression.json").read_text()) | {"epochs": 3}
    request = {"name": "line", "base": line, "grid": {"optimizer.lr": [0.0001, 0.01]}, "max_trials": 2}
    sweep = client.post("/sweeps", json=request).json()
    for trial in sweep["trials"]:
        finished(client, trial["experiment_id"], dep)
    ranked = client.get(f"/sweeps/{sweep['id']}").json()["trials"]
    losses = [t["best_val_loss"] for t in ranked]
    assert losses == sorted(losses) and ranked[0]["params"] == {"optimizer.lr": 0.01}, ranked
    assert all(t["best_val_accuracy"] is None for t in ranked)
    [summary] = [s for s in client.get("/sweeps").json() if s["id"] == sweep["id"]]
    assert summary["best_val_loss"] == losses[0] and summary["best_val_accuracy"] is None
    chart = client.get(f"/sweeps/{sweep['id']}/compare.png")  # the metric the trials are ranked by
    assert chart.content == client.get(f"/sweeps/{sweep['id']}/compare.png", params={"metric": "val_loss"}).content
    refused = client.get(f"/sweeps/{sweep['id']}/compare.png", params={"metric": "train_accuracy"})
    assert refused.status_code == 422 and "do not record train_accuracy" in refused.text


def test_any_model_can_start_from_an_earlier_experiments_weights(service) -> None:
    dep, client = service
    base = tiny_spec(epochs=3, optimizer={"kind": "adam", "lr": 0.003})
    first = finished(client, client.post("/experiments", json=base).json()["id"], dep)
    slow = {"epochs": 1, "optimizer": {"kind": "adam", "lr": 1e-5}}  # too slow to learn much in one epoch
    onward = {**base, **slow, "model": {**base["model"], "pretrained": {"experiment": first["id"]}}}
    ids = [client.post("/experiments", json=s).json()["id"] for s in (onward, {**base, **slow})]
    warm, cold = (finished(client, i, dep) for i in ids)
    # It went on from the first run's best, where the same spec from random weights has learnt little.
    assert warm["best"]["val_accuracy"] >= first["best"]["val_accuracy"] - 0.02, (first["best"], warm["best"])
    assert cold["best"]["val_accuracy"] < first["best"]["val_accuracy"] - 0.3, cold["best"]

    wider = {**onward, "model": {**onward["model"], "hidden": [64]}}
    refused = client.post("/experiments", json=wider)
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "model", "pretrained"]
    assert error["msg"].startswith(f"experiment {first['id']}'s weights do not fit this model: 1.weight is 32x64 there")
    other_input = {**onward, "dataset": {"name": "mnist-10k"}}  # 28x28 images, where the digits are 8x8
    assert "1.weight is 32x64 there, 32x784 here" in client.post("/experiments", json=other_input).text


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"grid": {"optimizer.lr": [0.1, -1.0]}}, "greater than 0"),
        ({"grid": {"model.depth": [1, 2]}}, "Extra inputs"),
        ({"grid": {"nothing.lr": [1]}}, "not a section"),
        ({"grid": {"batch_size": list(range(1, 30))}, "max_trials": 10}, "more than max_trials"),
        ({"grid": {}}, "give `grid` or `random`"),
        ({"grid": {"loss.kind": ["cross_entropy", "huber"]}}, "=huber: loss: loss 'huber' is not a classification"),
        ({"grid": {"dataset.name": ["digits", "nope"]}}, "trial dataset.name=nope: unknown dataset 'nope'"),
    ],
)
def test_bad_sweeps_are_refused_whole(service, patch, needle) -> None:
    _, client = service
    before = client.get("/experiments").json()["total"]
    response = client.post("/sweeps", json={"base": tiny_spec(), **patch})
    assert response.status_code == 422 and needle in json.dumps(response.json()), response.text
    assert client.get("/experiments").json()["total"] == before
    assert client.get("/sweeps/999").status_code == 404


def test_random_search_draws_within_the_space(service) -> None:
    _, client = service
    request = {
        "base": tiny_spec(epochs=1),
        "random": {"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "batch_size": {"values": [16, 32]}},
        "max_trials": 3,
        "seed": 7,
    }
    sweep = client.post("/sweeps", json=request).json()
    assert len(sweep["trials"]) == 3
    refused = client.delete(f"/sweeps/{sweep['id']}")  # its trials have only just been queued
    assert refused.status_code == 409 and "queued or running trials" in refused.json()["detail"]
    for trial in sweep["trials"]:
        assert 1e-4 <= trial["params"]["optimizer.lr"] <= 1e-1 and trial["params"]["batch_size"] in (16, 32)
    again = client.post("/sweeps", json=request).json()
    assert sorted(map(str, (t["params"] for t in again["trials"]))) == sorted(
        map(str, (t["params"] for t in sweep["trials"]))
    )  # seeded


def test_a_sweep_over_kinds_gives_each_trial_the_new_kinds_defaults(service) -> None:
    """Comparing losses, optimizers or schedulers: a trial's new `kind` must not inherit the base kind's defaults
    (cross_entropy's label_smoothing under nll was a 422), but keeps what the base spec itself set."""
    dep, client = service
    request = {
        "base": tiny_spec(epochs=1, optimizer={"kind": "adam", "lr": 0.01}),
        "grid": {"loss.kind": ["cross_entropy", "nll"], "optimizer.kind": ["adam", "sgd"], "scheduler.kind": ["step"]},
    }
    response = client.post("/sweeps", json=request)
    assert response.status_code == 201, response.text
    specs = {}
    for trial in response.json()["trials"]:
        experiment = finished(client, trial["experiment_id"], dep)
        specs[trial["params"]["loss.kind"], trial["params"]["optimizer.kind"]] = experiment["spec"]
    assert specs["nll", "sgd"]["loss"] == {"kind": "nll"}
    assert specs["cross_entropy", "adam"]["loss"] == {"kind": "cross_entropy", "label_smoothing": 0.0}
    assert specs["nll", "sgd"]["optimizer"] == {"kind": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False,
                                                 "weight_decay": 0.0}  # fmt: skip
    assert {json.dumps(spec["scheduler"]) for spec in specs.values()} == {
        json.dumps({"kind": "step", "step_size": 10, "gamma": 0.1})
    }


@pytest.mark.skipif(not SYSTEM_FASHION_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")
def test_full_fashion_mnist_reports_test_split_accuracy(service) -> None:
    dep, client = service
    spec = {"dataset": {"name": "fashion-mnist"}, "model": {"kind": "mlp", "hidden": [128]}, "epochs": 1,
            "batch_size": 256}  # fmt: skip
    experiment = finished(client, submit(client, spec)["id"], dep)
    assert experiment["test"]["accuracy"] > 0.75 and experiment["test"]["loss"] > 0


def test_missing_dataset_files_are_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_DIR", tmp_path / "not-installed")
    with pytest.raises(datasets.DatasetUnavailable) as missing:
        datasets.check_available("fashion-mnist", tmp_path)
    message = str(missing.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message
    # The same files placed under the data dir are found.
    source = SYSTEM_FASHION_DIR if SYSTEM_FASHION_DIR.is_dir() else None
    if source is not None:
        (tmp_path / "fashion-mnist").mkdir()
        for file in source.iterdir():
            (tmp_path / "fashion-mnist" / file.name).symlink_to(file)
        assert datasets.check_available("fashion-mnist", tmp_path).name == "fashion-mnist"


def test_views_of_an_experiment_whose_dataset_is_gone_are_409(service) -> None:
    from service.specs import ExperimentSpec
    from service.store import Store

    dep, client = service
    store = Store(dep.db_url)
    # Stored directly: the API itself refuses such a spec, but a server can lose a dataset after the fact.
    experiment, _ = store.create_experiment(ExperimentSpec.model_validate(tiny_spec(dataset={"name": "retired-set"})))
    store.close()
    response = client.get(f"/experiments/{experiment.id}/augmentations.png")
    assert response.status_code == 409 and "retired-set" in response.json()["detail"]
    assert client.post(f"/experiments/{experiment.id}/rerun").status_code == 422
