"""Transfer learning with torchvision classifiers: where ImageNet weights come from, what `freeze` trains, real
transfer from MobileNetV2's ImageNet features on the hymenoptera photos, and starting from another experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from service.specs import ExperimentSpec
from tests.conftest import deployment, wait_for_status
from tests.datafiles import upload_hymenoptera
from worker import pretrained
from worker.checkpoints import load_checkpoint
from worker.datasets import load_dataset
from worker.engine import fit


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
