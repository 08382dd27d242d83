"""The contract: defaults filled in, every number bounded, unknown fields refused, and no heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.specs import ExperimentSpec
from tests.conftest import REPO


def test_minimal_spec_gets_every_default() -> None:
    spec = ExperimentSpec.model_validate({"dataset": {"name": "mnist-10k"}, "model": {"kind": "cnn"}})
    assert spec.model_dump() == {
        "name": "experiment", "task": "classification",
        "dataset": {"name": "mnist-10k", "val_fraction": 0.2, "seed": 0, "download": False},
        "model": {"kind": "cnn", "channels": [32, 64], "kernel_size": 3, "stride": 1, "padding": None, "pool": "max",
                  "batchnorm": False, "activation": "relu", "hidden": 128, "dropout": 0.0, "init": "default",
                  "pretrained": "none"},
        "loss": {"kind": "cross_entropy", "label_smoothing": 0.0},
        "optimizer": {"kind": "adam", "lr": 0.001, "weight_decay": 0.0},
        "scheduler": None, "grad_clip_norm": None, "augment": [],
        "batch_size": 64, "epochs": 5, "early_stopping": None, "checkpoints": {"keep_best": 1, "keep_last": 1},
        "seed": 0, "deterministic": True, "device": "auto", "precision": "auto", "compile": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("patch", "optimizer", "loss"),
    [
        ({"optimizer": {"lr": 0.01}}, {"kind": "adam", "lr": 0.01}, {"kind": "cross_entropy"}),
        ({"loss": {"label_smoothing": 0.1}}, {"kind": "adam"}, {"kind": "cross_entropy", "label_smoothing": 0.1}),
        ({"loss": None}, {"kind": "adam"}, {"kind": "cross_entropy"}),
        ({"task": "regression", "loss": {}}, {"kind": "adam"}, {"kind": "mse"}),
        ({"task": "regression", "loss": None}, {"kind": "adam"}, {"kind": "mse"}),
    ],
)
def test_a_section_with_a_default_kind_may_leave_kind_out(patch: dict, optimizer: dict, loss: dict) -> None:
    """The section gets the default kind (Adam; the task's default loss), with the fields it gave."""
    spec = ExperimentSpec.model_validate({"dataset": {"name": "digits"}, "model": {"kind": "mlp"}, **patch})
    assert optimizer.items() <= spec.optimizer.model_dump().items()
    assert loss.items() <= spec.loss.model_dump().items()


@pytest.mark.parametrize(
    "patch",
    [
        # Left without `kind`: the default kind, whose fields these are not (or no default kind at all).
        {"optimizer": {"momentum": 0.9}},
        {"task": "regression", "loss": {"label_smoothing": 0.1}},
        {"scheduler": {"step_size": 2}},
        {"model": {"hidden": [8]}},
        {"optimizer": {"kind": "sgd", "lr": float("nan")}},
        {"optimizer": {"kind": "adam", "lr": float("inf")}},
        {"optimizer": {"kind": "sgd", "momentum": 1.0}},
        {"optimizer": {"kind": "adam", "weight_decay": -1}},
        {"model": {"kind": "mlp", "hidden": [0]}},
        {"model": {"kind": "mlp", "hidden": [8] * 9}},
        {"model": {"kind": "mlp", "dropout": 1.0}},
        {"model": {"kind": "cnn", "channels": [2048]}},
        {"model": {"kind": "cnn", "kernel_size": 12}},
        {"model": {"kind": "cnn", "pool": "median"}},
        {"model": {"kind": "mlp", "activation": "softmax"}},
        {"model": {"kind": "mlp", "init": "he"}},
        {"model": {"kind": "resnet18", "init": "kaiming"}},  # a torchvision net comes with its own
        {"model": {"kind": "sequential", "layers": [{"kind": "leaky_relu", "negative_slope": -0.1}]}},
        {"model": {"kind": "sequential", "layers": [{"kind": "sigmoid", "inplace": True}]}},
        {"batch_size": 8193},
        {"seed": -1},
        {"name": ""},
        {"precision": "fp8"},
        {"task": "survival"},
        {"task": "regression", "loss": {"kind": "cross_entropy"}},
        {"loss": {"kind": "l1"}},  # a regression loss
        {"early_stopping": {"monitor": "val_r2"}},
        {"model": {"kind": "sequential", "layers": []}},
        {"model": {"kind": "sequential", "layers": [{"kind": "conv2d"}]}},
        # `pretrained` belongs to the model, not to one of its layers.
        {"model": {"kind": "sequential", "layers": [{"kind": "linear", "pretrained": "none"}]}},
        {"model": {"kind": "resnet18", "freeze": "head"}},
        {"model": {"kind": "resnet18", "pretrained": {"experiment": 0}}},
        {"dataset": {"name": "digits", "extra": 1}},
        {"model": {"kind": "mlp", "channels": [3]}},
    ],
)
def test_out_of_bounds_values_are_refused(patch: dict) -> None:
    base = {"dataset": {"name": "digits"}, "model": {"kind": "mlp"}}
    with pytest.raises(ValidationError):
        ExperimentSpec.model_validate({**base, **patch})


def test_json_round_trip_is_lossless() -> None:
    spec = ExperimentSpec.model_validate(
        {"dataset": {"name": "digits"}, "model": {"kind": "cnn", "channels": [8]},
         "optimizer": {"kind": "sgd", "lr": 0.1, "nesterov": True}}
    )  # fmt: skip
    assert ExperimentSpec.model_validate_json(spec.model_dump_json()) == spec


def test_contract_imports_neither_torch_nor_sqlalchemy() -> None:
    code = "import sys, service.specs; print(sorted(m for m in ('torch', 'sqlalchemy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("loc", "hint"),
    [
        (("epoch",), "did you mean 'epochs'?"),
        (("optimiser",), "did you mean 'optimizer'?"),
        (("model", "cnn", "hiden"), "did you mean 'hidden'?"),
        (("model", "sequential", "layers", 0, "conv2d", "channels"), "did you mean 'in_channels' or 'out_channels'?"),
        (("lr",), "'lr' is set as optimizer.lr"),
        (("learning_rate",), "'learning_rate' is set as optimizer.lr"),  # Keras' name for it
        (("optimizer", "adam", "learning_rate"), "did you mean 'lr'?"),
        (("optimizer", "adam", "momentum"), "'momentum' is set as optimizer.momentum (with kind sgd, rmsprop)"),
        (("model", "mlp", "channels"), "'channels' is set as model.channels (with kind cnn)"),
        (("augment", 0, "hflip", "degrees"), "'degrees' is set as augment[i].degrees (with kind rotation)"),
        (("model", "resnet18", "freze"), "did you mean 'freeze'?"),  # a member that is more than one kind
        (("colour",), None),  # nothing near it, nowhere in the spec
        (("model", "cnn", "hidden"), None),  # a field the model has is no unknown field
    ],
)
def test_an_unknown_field_gets_the_name_it_likely_meant_or_where_it_belongs(loc: tuple, hint: str | None) -> None:
    from service.hints import unknown_field_hint

    assert unknown_field_hint(ExperimentSpec, loc) == hint


KINDS = "kind one of 'linear', 'mlp', 'cnn', 'sequential', 'resnet18', 'mobilenet_v2'"
AUGMENTS = "kind one of 'hflip', 'vflip', 'rotation', 'random_crop', 'gaussian_noise', 'color_jitter', 'random_erasing'"


@pytest.mark.parametrize(
    ("spec", "loc", "hint"),
    [
        # A section written as its kind or name, as in other tools' configs.
        ({"loss": "mse"}, ("loss",), 'write it as {"kind": "mse"}'),
        ({"optimizer": "Adam"}, ("optimizer",), 'write it as {"kind": "adam"}'),
        ({"model": "resnet"}, ("model",), 'write it as {"kind": "resnet18"}'),
        ({"augment": ["hflip"]}, ("augment", 0), 'write it as {"kind": "hflip"}'),
        ({"dataset": "mnist-10k"}, ("dataset",), 'write it as {"name": "mnist-10k"}'),
        ({"dataset": "x" * 200}, ("dataset",), 'write it as {"name": …}'),  # not echoed at any length
        ({"model": 3}, ("model",), f'write it as {{"kind": …}} with {KINDS}'),
        # A list written as its one item.
        ({"augment": "hflip"}, ("augment",), 'write it as [{"kind": "hflip"}]'),
        ({"augment": "blur"}, ("augment",), f'write it as [{{"kind": …}}] with {AUGMENTS}'),
        ({"augment": {"kind": "hflip", "p": 0.3}}, ("augment",), 'write it as [{"kind": "hflip", "p": 0.3}]'),
        ({"model": {"kind": "mlp", "hidden": 128}}, ("model", "mlp", "hidden"), "write it as [128]"),
        ({"model": {"kind": "cnn", "channels": "32,64"}}, ("model", "cnn", "channels"), None),
        # A section left out, or its kind.
        ({"model": None}, ("model",), f'give {{"kind": …}} with {KINDS}'),
        ({"model": {}}, ("model",), f'give {{"kind": …}} with {KINDS}'),
        # A kind or a choice spelled differently.
        ({"model": {"kind": "CNN"}}, ("model",), "did you mean 'cnn'?"),
        ({"model": {"kind": "mobilenet"}}, ("model",), "did you mean 'mobilenet_v2'?"),
        ({"precision": "BF16"}, ("precision",), "did you mean 'bf16'?"),
        ({"model": {"kind": "cnn", "pool": "Max"}}, ("model", "cnn", "pool"), "did you mean 'max'?"),
        ({"model": {"kind": "mlp", "activation": "Sigmoid"}}, ("model", "mlp", "activation"), "did you mean 'sigmoid'?"),
        ({"model": {"kind": "mlp", "activation": "leakyrelu"}}, ("model", "mlp", "activation"),
         "did you mean 'leaky_relu'?"),
        ({"model": {"kind": "transformer"}}, ("model",), None),  # nothing close: the message lists the kinds
    ],
)
def test_a_misshapen_or_misspelt_value_gets_what_to_write_instead(spec: dict, loc: tuple, hint: str | None) -> None:
    from service.hints import message_with_hint

    spec = {"dataset": {"name": "digits"}, "model": {"kind": "mlp"}, **spec}
    if spec["model"] is None:
        del spec["model"]
    with pytest.raises(ValidationError) as info:
        ExperimentSpec.model_validate(spec)
    [error] = [e for e in info.value.errors() if e["loc"] == loc]
    assert message_with_hint(ExperimentSpec, error, loc) == (f"{error['msg']}: {hint}" if hint else error["msg"])


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"optimizer": ["sgd", "adam"]}, "vary optimizer.kind to give each trial its kind"),
        ({"dataset": ["digits", "mnist-10k"]}, "vary dataset.name to give each trial its name"),
        ({"optimizer.lr": ["fast"]}, None),  # a value, not a section: pydantic's message alone
    ],
)
def test_a_sweep_over_a_section_by_name_is_told_which_path_to_vary(grid: dict, message: str | None) -> None:
    from service.errors import InvalidInput
    from service.sweeps import SweepCreate, expand

    request = SweepCreate.model_validate(
        {"base": {"dataset": {"name": "digits"}, "model": {"kind": "mlp"}}, "grid": grid}
    )
    with pytest.raises(InvalidInput) as info:
        expand(request)
    [(path, values)] = grid.items()
    detail = info.value.detail
    assert detail.startswith(f"trial {path}={values[0]}: "), detail
    if message is None:
        assert "vary" not in detail, detail
    else:
        assert info.value.loc == ["body", path] and detail.endswith(f": {message}"), detail


def test_trials_are_named_by_the_values_they_try_in_brief() -> None:
    """A trial's name ends with what it tried, as the CLI's compare writes values: a section by its kind and
    fields, not a Python repr of the JSON."""
    from service.sweeps import SweepCreate, expand

    augment = [[], [{"kind": "hflip"}], [{"kind": "gaussian_noise", "std": 0.1}, {"kind": "rotation", "degrees": 15}]]
    request = SweepCreate.model_validate({
        "name": "flips", "base": {"dataset": {"name": "digits"}, "model": {"kind": "mlp"}},
        "grid": {"augment": augment, "optimizer.lr": [0.01], "deterministic": [False]},
    })  # fmt: skip
    assert [spec.name for _, spec in expand(request)] == [
        "flips [augment=[], optimizer.lr=0.01, deterministic=false]",
        "flips [augment=[hflip()], optimizer.lr=0.01, deterministic=false]",
        "flips [augment=[gaussian_noise(std=0.1), rotation(degrees=15)], optimizer.lr=0.01, deterministic=false]",
    ]


def test_a_list_of_lists_given_one_number_gets_no_hint_of_one_level() -> None:
    """`[5]` would still be refused where a table's rows are expected: no hint rather than a wrong one."""
    from pydantic import BaseModel

    from service.hints import message_with_hint

    class Table(BaseModel):
        rows: list[list[float]]
        widths: list[int]

    with pytest.raises(ValidationError) as info:
        Table.model_validate({"rows": 5, "widths": 3})
    messages = {e["loc"]: message_with_hint(Table, e, e["loc"]) for e in info.value.errors()}
    assert messages == {
        ("rows",): "Input should be a valid list",
        ("widths",): "Input should be a valid list: write it as [3]",
    }
