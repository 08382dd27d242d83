"""`POST /experiments:validate`'s training-memory estimate, checked against what PyTorch really keeps: the tensors
autograd saves for a real batch, and a real optimizer's state after a step."""

from __future__ import annotations

import pytest
import torch

from service.specs import DatasetSpec, ExperimentSpec
from tests.conftest import fit_bundled, load_bundled
from worker import engine
from worker.engine import frozen_features
from worker.models import create_model, describe, describe_model, meta_model


def _saved_bytes(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    """What autograd keeps for the backward pass of a training step's forward pass, on real tensors."""
    kept: dict[int, int] = {}

    def save(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter):
            kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(save, lambda tensor: tensor):
        model.train()(inputs)
    return sum(kept.values())


def test_the_memory_estimate_counts_what_the_backward_pass_keeps_and_what_trains() -> None:
    digits = load_bundled(DatasetSpec(name="digits"))
    shape = digits.info.preprocess.input_shape
    batch = digits.train.images[:16].float()
    estimates = {}
    for model in (
        {"kind": "mlp"}, {"kind": "cnn", "batchnorm": True, "dropout": 0.3},
        {"kind": "resnet18", "image_size": 64, "freeze": "none"},
        {"kind": "resnet18", "image_size": 64, "freeze": "backbone"},
    ):  # fmt: skip
        experiment = ExperimentSpec.model_validate({"dataset": {"name": "digits"}, "model": model, "batch_size": 16})
        meta = meta_model(experiment.model, shape, 10)
        # Counted on the meta device, it is what a real batch saves on the CPU, to the byte.
        saved = _saved_bytes(create_model(experiment.model, shape, 10), batch)
        assert describe(meta, shape, 16)[1] == saved > 0, model
        if "freeze" in model:
            estimates[model["freeze"]] = describe_model(experiment, meta, digits.info).memory
    frozen, tuned = estimates["backbone"], estimates["none"]
    # The same 11.2M parameters; fine-tuning keeps the backbone's activations, its gradients and Adam's moments,
    # where a frozen backbone keeps only the head's (512 x 10 + 10 parameters).
    assert frozen.weights == tuned.weights == 4 * sum(p.numel() for p in meta.parameters())
    assert (frozen.gradients, frozen.optimizer_state) == (4 * 5130, 8 * 5130)
    assert (tuned.gradients, tuned.optimizer_state) == (tuned.weights, 2 * tuned.weights)
    assert frozen.activations < tuned.activations / 3 and frozen.total < tuned.total / 3
    assert tuned.features == 0


@pytest.mark.parametrize(
    "optimizer",
    [{"kind": "adam"}, {"kind": "adamw"}, {"kind": "sgd"}, {"kind": "sgd", "momentum": 0},
     {"kind": "rmsprop"}, {"kind": "rmsprop", "momentum": 0.9}],
)  # fmt: skip
def test_the_memory_estimate_counts_the_state_each_optimizer_keeps(optimizer: dict) -> None:
    digits = load_bundled(DatasetSpec(name="digits"))
    shape = digits.info.preprocess.input_shape
    experiment = ExperimentSpec.model_validate({"dataset": {"name": "digits"}, "model": {"kind": "mlp"},
                                                "optimizer": optimizer})  # fmt: skip
    model = create_model(experiment.model, shape, 10)
    step = engine.build_optimizer(experiment.optimizer, model.parameters())
    torch.nn.functional.cross_entropy(model(digits.train.images[:64].float()), digits.train.labels[:64]).backward()
    step.step()
    kept = sum(v.nbytes for state in step.state.values() for v in state.values() if v.dim() > 0)  # not step counts
    memory = describe_model(experiment, meta_model(experiment.model, shape, 10), digits.info).memory
    assert memory.optimizer_state == kept


FROZEN = {"kind": "resnet18", "pretrained": "none", "freeze": "backbone", "image_size": 32}
NOISE = [{"kind": "gaussian_noise", "std": 0.1}]


@pytest.mark.parametrize(
    ("dataset", "model", "augment"),
    [("digits", {"kind": "mlp"}, []), ("digits", {"kind": "mlp"}, NOISE), ("digits", FROZEN, []),
     ("digits", FROZEN, NOISE), ("diabetes", {"kind": "linear"}, [])],
)  # fmt: skip
def test_the_memory_estimate_counts_the_data_and_features_a_run_keeps(
    monkeypatch, dataset: str, model: dict, augment: list
) -> None:
    """`fit` keeps the dataset's examples, an fp32 copy of each split it standardises once (the validation split,
    and with no augmentation the training split), and a frozen backbone's features of those splits instead of
    the copies: the estimate counts the bytes of the tensors a real run makes."""
    experiment = ExperimentSpec.model_validate(
        {
            "dataset": {"name": dataset},
            "epochs": 1,
            "augment": augment,
            "model": model,
            "task": "regression" if dataset == "diabetes" else "classification",
        }
    )
    kept = {"data": 0, "features": 0}

    def placed(split, device, preprocess=None) -> engine.DeviceSplit:
        data = device_split(split, device, preprocess)
        kept["data"] += data.images.nbytes + (data.standardized.nbytes if data.standardized is not None else 0)
        return data

    def computed(*args, **kwargs) -> list[engine.DeviceSplit]:
        splits = frozen_features(*args, **kwargs)
        kept["features"] += sum(split.images.nbytes for split in splits)
        return splits

    device_split = engine.DeviceSplit.of
    monkeypatch.setattr(engine.DeviceSplit, "of", placed)
    monkeypatch.setattr(engine, "frozen_features", computed)
    fit_bundled(experiment)
    data = load_bundled(experiment.dataset)
    meta = meta_model(experiment.model, data.info.preprocess.input_shape, data.info.num_classes)
    estimate = describe_model(experiment, meta, data.info).memory
    assert (estimate.data, estimate.features) == (kept["data"], kept["features"]), kept
    assert kept["data"] >= data.train.images.nbytes > 0
