"""Transfer learning with torchvision classifiers: where ImageNet weights come from, what `freeze` trains, real
transfer from MobileNetV2's ImageNet features on the hymenoptera photos, and starting from another experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from service.specs import EpochMetrics, ExperimentSpec
from tests.conftest import deployment, fit_bundled, load_bundled, timing_free, wait_for_status
from tests.datafiles import upload_hymenoptera
from worker import engine, pretrained
from worker.checkpoints import load_checkpoint
from worker.datasets import load_dataset
from worker.engine import DeviceSplit, Interrupted, evaluate, fit
from worker.models import TransferNet, create_model, input_preprocess
from worker.objectives import Objective


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch) -> Path:
    """An empty torchvision cache (TORCH_HOME), in this process and in the servers the test starts."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_missing_imagenet_weights_are_named_before_queueing(tmp_path: Path, db_url: str, torch_home: Path,
                                                             client_for) -> None:  # fmt: skip
    with deployment(tmp_path, db_url) as dep:
        client = client_for(dep)
        spec = {"dataset": {"name": "digits"}, "model": {"kind": "resnet18", "pretrained": "imagenet"}}
        response = client.post("/experiments", json=spec)
        assert response.status_code == 422, response.text
        error = response.json()["detail"][0]
        assert error["loc"] == ["body", "model", "pretrained"]
        assert "resnet18-f37072fd.pth" in error["msg"] and str(torch_home / "hub" / "checkpoints") in error["msg"]
        source = {"dataset": {"name": "digits"}, "model": {"kind": "resnet18", "pretrained": {"experiment": 99}}}
        assert client.post("/experiments", json=source).json()["detail"][0]["loc"] == ["body", "model", "pretrained"]
        # Random initialisation needs no file.
        assert (
            client.post(
                "/experiments:validate", json={**spec, "model": {"kind": "resnet18", "pretrained": "none"}}
            ).status_code
            == 200
        )
        assert client.get("/experiments").json()["total"] == 0


@pytest.mark.parametrize("kind", ["resnet18", "mobilenet_v2"])
def test_weight_file_names_are_torchvisions(kind: str) -> None:
    url = pretrained.torchvision_weights(kind).url
    assert url.rsplit("/", 1)[1] == pretrained.WEIGHT_FILES[kind]


def _place_weights(torch_home: Path) -> dict[str, torch.Tensor]:
    """A resnet18 state dict where torchvision's cache keeps the ImageNet file (random weights: this test is about
    which tensors train, not about what they know)."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    path = pretrained.cache_file("resnet18")
    assert path.is_relative_to(torch_home)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("freeze", ["backbone", "none"])
def test_freeze_backbone_trains_only_the_head(tmp_path: Path, torch_home: Path, freeze: str) -> None:
    placed = _place_weights(torch_home)
    spec = ExperimentSpec.model_validate({
        "dataset": {"name": "digits", "val_fraction": 0.5},
        "model": {"kind": "resnet18", "pretrained": "imagenet", "freeze": freeze, "image_size": 32},
        "epochs": 1, "optimizer": {"kind": "sgd", "lr": 0.05}, "precision": "fp32",
    })  # fmt: skip
    checkpoints: list[bytes] = []
    fit(
        spec, load_dataset(spec.dataset, tmp_path), torch.device("cpu"),
        on_epoch=lambda _, checkpoint: checkpoints.append(checkpoint),
        initial_weights=pretrained.imagenet_state("resnet18", allow_download=False),
    )  # fmt: skip
    trained = load_checkpoint(checkpoints[-1]).model_state
    backbone = {k: v for k, v in placed.items() if not k.startswith("fc.")}
    changed = [k for k, v in backbone.items() if not torch.equal(trained[f"backbone.{k}"], v)]
    if freeze == "backbone":
        assert changed == []  # weights and batchnorm statistics alike
    else:
        assert "conv1.weight" in changed and "layer4.1.bn2.running_mean" in changed
    # The new head (10 digits, not ImageNet's 1000 classes) trained in both.
    assert trained["head.weight"].shape == (10, 512)


def _head_only(**overrides) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "dataset": {"name": "digits"}, "epochs": 3, "precision": "fp32", "batch_size": 64,
        "model": {"kind": "resnet18", "pretrained": "none", "freeze": "backbone", "image_size": 32, "dropout": 0.2},
        **overrides,
    })  # fmt: skip


def test_a_frozen_backbone_sees_each_image_once_and_the_recorded_metrics_are_the_whole_models(monkeypatch) -> None:
    """A frozen backbone maps an image to the same features every epoch, so they are computed once; each epoch's
    checkpoint, run whole, gives the validation metrics recorded for it."""
    seen: list[int] = []
    features = TransferNet.features
    monkeypatch.setattr(TransferNet, "features", lambda net, x: seen.append(len(x)) or features(net, x))
    standardized: list[int] = []
    normalize = engine.normalize
    monkeypatch.setattr(engine, "normalize", lambda x, p: standardized.append(len(x)) or normalize(x, p))
    spec = _head_only()
    dataset = load_bundled(spec.dataset)
    events: list[dict] = []
    runs = fit_bundled(spec, on_progress=events.append, progress_every_s=0)
    assert sum(seen) == len(dataset.train) + len(dataset.val)  # not once per epoch
    # Read once, the images are standardised batch by batch, never as a whole split's float copy.
    assert sum(standardized) == len(dataset.train) + len(dataset.val) and max(standardized) == spec.batch_size
    # Augmented training images go through the backbone every epoch; the validation images still once.
    seen.clear()
    augmented = fit_bundled(_head_only(augment=[{"kind": "gaussian_noise", "std": 0.1}]))
    assert sum(seen) == spec.epochs * len(dataset.train) + len(dataset.val)
    # Without the cache (bench.frozen_features compares the two) every image goes through it every epoch, and the
    # head learns the same: only the order of batches through the backbone differs, so the last bits may.
    seen.clear()
    uncached = fit_bundled(_head_only(epochs=2), feature_cache=False)
    assert sum(seen) == 2 * (len(dataset.train) + len(dataset.val))
    for (a, _), (b, _) in zip(uncached, runs, strict=False):
        assert (a.train_loss, a.val_loss) == pytest.approx((b.train_loss, b.val_loss), rel=1e-4)
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=1 / len(dataset.val))
    monkeypatch.undo()
    # Progress while the features are computed, at the start of epoch 1; then the training's, as for any model.
    batches = sum(-(-len(split) // spec.batch_size) for split in (dataset.train, dataset.val))
    stages = [e.get("stage") for e in events]
    assert stages[:batches] == ["features"] * batches and "features" not in stages[batches:]
    features = [(e["epoch"], e["batch"], e["batches"]) for e in events[:batches]]
    assert features == [(1, b, batches) for b in range(batches)]
    assert all(e["eta_s"] >= 0 for e in events[1:batches]) and events[batches]["epoch"] == 1

    preprocess = input_preprocess(spec.model, dataset.info.preprocess)
    val = DeviceSplit.of(dataset.val, torch.device("cpu"), preprocess)
    objective = Objective.of(spec.task, spec.loss, preprocess)
    for metrics, checkpoint in runs + augmented:
        model = create_model(spec.model, preprocess.input_shape, dataset.info.num_classes)
        model.load_state_dict(load_checkpoint(checkpoint).model_state)
        loss, whole = evaluate(model, val, preprocess, objective)
        assert loss == pytest.approx(metrics.val_loss, rel=1e-5)
        assert whole["val_accuracy"] == pytest.approx(metrics.val_accuracy, abs=1 / len(val))
    assert runs[-1][0].val_accuracy > runs[0][0].val_accuracy  # the head learns
    assert augmented[-1][0].val_accuracy > augmented[0][0].val_accuracy


def test_a_run_stopped_while_its_features_are_computed_or_later_finishes_as_if_it_never_stopped() -> None:
    spec = _head_only(epochs=2)
    whole = fit_bundled(spec)
    calls: list[int] = []
    with pytest.raises(Interrupted) as early:  # the first should_stop() comes before any training batch
        fit_bundled(spec, should_stop=lambda: calls.append(1) or len(calls) > 1)
    assert (early.value.epoch, early.value.progress.batches) == (1, 0)
    resumed = fit_bundled(spec, resume=load_checkpoint(early.value.checkpoint))
    assert [timing_free(m) for m, _ in resumed] == [timing_free(m) for m, _ in whole]

    done: list[tuple[EpochMetrics, bytes]] = []
    asked_in_epoch_2: list[int] = []

    def three_batches_into_epoch_2() -> bool:
        if done:
            asked_in_epoch_2.append(1)
        return len(asked_in_epoch_2) > 3

    with pytest.raises(Interrupted) as late:  # the resumed process computes the features anew
        fit(spec, load_bundled(spec.dataset), torch.device("cpu"), on_epoch=lambda m, c: done.append((m, c)),
            should_stop=three_batches_into_epoch_2)  # fmt: skip
    assert (late.value.epoch, late.value.progress.batches) == (2, 3)
    resumed = fit_bundled(spec, resume=load_checkpoint(late.value.checkpoint))
    assert [timing_free(m) for m, _ in resumed] == [timing_free(m) for m, _ in whole[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # about the weights, not the database
def test_imagenet_features_transfer_to_ants_and_bees(tmp_path: Path, db_url: str, client_for) -> None:
    """Real transfer learning: head-only training from MobileNetV2's ImageNet features vs the same spec from a
    random initialisation, on 80 training photos; then fine-tuning everything from the first run."""
    if pretrained.locate("mobilenet_v2", allow_download=False) is None:
        pytest.skip("no mobilenet_v2 ImageNet weights here")
    with deployment(tmp_path, db_url, workers=1) as dep:
        client = client_for(dep)
        uploaded = upload_hymenoptera(client)
        assert uploaded["counts"] == {"train": {"ants": 40, "bees": 40}, "val": {"ants": 15, "bees": 15}}
        base = {"dataset": {"name": "hymenoptera"}, "epochs": 4, "batch_size": 16}
        model = {"kind": "mobilenet_v2", "freeze": "backbone"}
        ids = [
            client.post("/experiments", json={**base, "model": {**model, "pretrained": p}}).json()["id"]
            for p in ("imagenet", "none")
        ]
        imagenet, scratch = (wait_for_status(client, i, {"succeeded", "failed"}) for i in ids)
        assert imagenet["status"] == scratch["status"] == "succeeded", (imagenet["error"], scratch["error"])
        assert imagenet["best"]["val_accuracy"] >= 0.8, imagenet["best"]
        assert imagenet["best"]["val_accuracy"] >= scratch["best"]["val_accuracy"] + 0.2, scratch["best"]

        onward = {
            **base, "epochs": 1, "optimizer": {"kind": "adam", "lr": 1e-4},
            "model": {"kind": "mobilenet_v2", "freeze": "none", "pretrained": {"experiment": ids[0]}},
        }  # fmt: skip
        fine_tuned = wait_for_status(
            client, client.post("/experiments", json=onward).json()["id"], {"succeeded", "failed"}
        )
        assert fine_tuned["status"] == "succeeded", fine_tuned["error"]
        # It started where the first run's best left off, not from scratch.
        assert fine_tuned["best"]["val_accuracy"] >= 0.7, fine_tuned["best"]
        mismatch = {**onward, "model": {"kind": "resnet18", "pretrained": {"experiment": ids[0]}}}
        refused = client.post("/experiments", json=mismatch)
        assert refused.status_code == 422 and "trained a mobilenet_v2" in refused.text
