"""A model as plain PyTorch (worker/export.py): the script's network takes the checkpoint's weights and answers as
trainlab's own Predictor does, run in a process that imports nothing of trainlab."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageOps

from service.specs import CNNSpec, DatasetSpec, ExperimentSpec
from tests.conftest import load_bundled
from worker.checkpoints import dump_checkpoint
from worker.export import model_code, model_script
from worker.inference import Predictor
from worker.models import create_model, input_preprocess, meta_model, model_kinds
from worker.preprocess import Preprocess, normalize, with_training_range

LAYERS = [
    {"kind": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1, "bias": False},
    {"kind": "batchnorm2d"},
    {"kind": "gelu"},
    {"kind": "maxpool2d"},
    {"kind": "conv2d", "out_channels": 8, "stride": 2},
    {"kind": "relu"},
    {"kind": "conv2d", "out_channels": 8, "kernel_size": 1},
    {"kind": "leaky_relu", "negative_slope": 0.2},
    {"kind": "adaptiveavgpool2d", "output_size": 1},
    {"kind": "flatten"},
    {"kind": "linear", "out_features": 12},
    {"kind": "batchnorm1d"},
    {"kind": "tanh"},
    {"kind": "dropout", "p": 0.2},
    {"kind": "linear", "out_features": 12},
    {"kind": "sigmoid"},
    {"kind": "linear"},
]
# Every model kind, and every layer and option that changes the module tree.
MODELS = {
    "linear": {"kind": "linear"},
    "mlp": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.1, "activation": "tanh", "batchnorm": True},
    "cnn": {"kind": "cnn", "channels": [4, 8], "batchnorm": True, "dropout": 0.3, "activation": "leaky_relu"},
    "cnn-avg": {"kind": "cnn", "channels": [4], "pool": "avg", "kernel_size": 5, "padding": 0, "activation": "sigmoid"},
    "sequential": {"kind": "sequential", "layers": LAYERS},
    "resnet18": {"kind": "resnet18", "pretrained": "none", "image_size": 32},
    "mobilenet_v2": {"kind": "mobilenet_v2", "pretrained": "none", "image_size": 32, "dropout": 0.2},
    "regression": {"kind": "mlp", "hidden": [8]},
}
# Runs each script as `python script.py CHECKPOINT INPUT...` would, in one process to import torch once.
DRIVER = """
import contextlib, io, json, runpy, sys
answers = {}
for name, script, args in json.loads(sys.argv[1]):
    sys.argv = [script, *args]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(script, run_name="__main__")
    answers[name] = out.getvalue()
imported = sorted({m.split(".")[0] for m in sys.modules} & {"service", "worker", "tests"})
print(json.dumps({"answers": answers, "trainlab_modules": imported}))
"""


def _checkpoint(name: str, model_spec: dict, tmp_path: Path) -> tuple[bytes, list[str]]:
    """A checkpoint of the model, its weights and batchnorm statistics not at their initial values, and the
    arguments of one prediction: a real validation image of `digits`, or a row of `diabetes`."""
    regression = name == "regression"
    dataset = load_bundled(DatasetSpec(name="diabetes" if regression else "digits"))
    spec = ExperimentSpec.model_validate(
        {"dataset": {"name": dataset.info.name}, "model": model_spec, "task": "regression" if regression else
         "classification", "loss": {"kind": "mse" if regression else "cross_entropy"}}
    )  # fmt: skip
    preprocess = input_preprocess(spec.model, dataset.info.preprocess)
    torch.manual_seed(0)
    model = create_model(spec.model, preprocess.input_shape, dataset.info.num_classes)
    with torch.no_grad():
        model.train()(normalize(dataset.train.images[:16], preprocess))  # moves batchnorm's running statistics
    checkpoint = dump_checkpoint(
        epoch=1, spec=spec, preprocess=preprocess, class_names=dataset.info.class_names, model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1), trainer_state={},
    )  # fmt: skip
    if regression:
        return checkpoint, [repr(float(v)) for v in dataset.val.images[0].flatten()]
    image = tmp_path / f"{name}.png"
    Image.fromarray(dataset.val.images[0, 0].numpy()).save(image)
    return checkpoint, [str(image)]


def test_the_script_builds_the_model_that_loads_the_checkpoint_and_predicts_the_same(tmp_path: Path) -> None:
    runs, expected = [], {}
    for name, model_spec in MODELS.items():
        data, args = _checkpoint(name, model_spec, tmp_path)
        predictor = Predictor(data)
        script = model_script(predictor.model, predictor.spec, name)
        compile(script, name, "exec")
        (tmp_path / f"{name}.pt").write_bytes(data)
        (tmp_path / f"{name}.py").write_text(script)
        runs.append((name, str(tmp_path / f"{name}.py"), [str(tmp_path / f"{name}.pt"), *args]))
        if name == "regression":
            expected[name] = predictor.predict_rows(torch.tensor([[float(a) for a in args]]))
        else:
            expected[name] = [(s.class_name, s.probability) for s in predictor.predict(Image.open(args[0]))]
    # Each activation a spec names is in the network the script builds; an mlp's batchnorm takes its bias's place.
    scripts = {name: Path(script).read_text() for name, script, _ in runs}
    assert "nn.Tanh()" in scripts["mlp"] and "nn.Sigmoid()" in scripts["cnn-avg"], scripts
    assert "nn.Linear(in_features=64, out_features=32, bias=False),\n        nn.BatchNorm1d(32)" in scripts["mlp"]
    assert "nn.LeakyReLU(inplace=True)" in scripts["cnn"]
    assert "nn.LeakyReLU(negative_slope=0.2)" in scripts["sequential"]
    answers = _run_scripts(runs, tmp_path)
    for name, answer in answers.items():
        if name == "regression":
            assert float(answer) == pytest.approx(expected[name][0], rel=1e-4)
        else:
            _assert_same_classes(name, answer, expected[name])
    assert set(answers) == set(MODELS)
    # A new model kind needs a case here: the endpoint writes every kind the registry has.
    assert {spec["kind"] for spec in MODELS.values()} == set(model_kinds())


def test_the_script_names_the_values_a_row_needs_and_those_outside_the_training_range(tmp_path: Path) -> None:
    data, _ = _checkpoint("regression", MODELS["regression"], tmp_path)
    (tmp_path / "row.pt").write_bytes(data)
    predictor = Predictor(data)
    (tmp_path / "row.py").write_text(model_script(predictor.model, predictor.spec, "regression"))
    result = subprocess.run(
        [sys.executable, "row.py", "row.pt", "59", "2", "32.1"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result
    assert result.stderr.strip() == "give the row's 10 values, in this order: age sex bmi bp s1 s2 s3 s4 s5 s6"
    # A row scaled as scikit-learn's copy of the table has it: answered, with what lies outside the training range.
    scaled = ["0.0381", "0.0507", "0.0617", "0.0219", "-0.0442", "-0.0348", "-0.0434", "-0.0026", "0.0199", "-0.0176"]
    result = subprocess.run(
        [sys.executable, "row.py", "row.pt", *scaled], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0 and float(result.stdout), result
    assert result.stderr.startswith("note: age = 0.0381 (learnt from 19 to 79), sex = 0.0507 (learnt from 1 to 2)")
    assert result.stderr.rstrip().endswith(": outside what the model learnt from, so its prediction extrapolates")


def test_the_script_reads_an_image_as_trainlab_does(tmp_path: Path) -> None:
    """A photo stored sideways (EXIF), transparency (grey with alpha, a palette), 16-bit grey, colour, another
    size: the script's model sees what /predict's does, in grey and in colour."""
    digit = Image.fromarray(load_bundled(DatasetSpec(name="digits")).val.images[3, 0].numpy())
    tall = digit.resize((24, 40), Image.Resampling.NEAREST)  # neither square nor the model's 8x8
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "turn 90° clockwise to view"
    palette = tall.convert("RGB").quantize(16)
    images = {
        "sideways.jpg": (tall.transpose(Image.Transpose.ROTATE_90), {"exif": exif, "quality": 95}),
        "alpha.png": (Image.merge("LA", (Image.new("L", tall.size, 40), tall)), {}),
        "16-bit.png": (Image.fromarray(np.asarray(tall, dtype=np.uint16) * 256 + 100), {}),
        "palette.png": (palette, {"transparency": palette.getpixel((0, 0))}),  # the background's colour
        "colour.png": (Image.merge("RGB", (tall, tall.transpose(Image.Transpose.FLIP_LEFT_RIGHT), digit.resize(tall.size))), {}),
    }  # fmt: skip
    for file, (image, options) in images.items():
        image.save(tmp_path / file, **options)
    runs, expected = [], {}
    for channels in (1, 3):
        data = _image_checkpoint(channels)
        predictor = Predictor(data)
        (tmp_path / f"c{channels}.pt").write_bytes(data)
        (tmp_path / f"c{channels}.py").write_text(model_script(predictor.model, predictor.spec, "image"))
        for file in images:
            name = f"{channels} channels, {file}"
            runs.append((name, str(tmp_path / f"c{channels}.py"), [str(tmp_path / f"c{channels}.pt"), file]))
            expected[name] = [(s.class_name, s.probability) for s in predictor.predict(Image.open(tmp_path / file))]
    answers = _run_scripts(runs, tmp_path)
    assert set(answers) == set(expected)
    for name, answer in answers.items():
        _assert_same_classes(name, answer, expected[name])


def test_the_script_notes_an_image_unlike_every_training_image(tmp_path: Path) -> None:
    """Light digits on dark, as `digits` has them, pass; the same digit dark on light is pointed out."""
    digits = load_bundled(DatasetSpec(name="digits"))
    spec = ExperimentSpec.model_validate({"dataset": {"name": "digits"}, "model": {"kind": "mlp"}})
    preprocess = with_training_range(digits.info.preprocess, digits.train.images)
    model = create_model(spec.model, preprocess.input_shape, 10)
    data = dump_checkpoint(
        epoch=1, spec=spec, preprocess=preprocess, class_names=digits.info.class_names, model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1), trainer_state={},
    )  # fmt: skip
    (tmp_path / "digits.pt").write_bytes(data)
    (tmp_path / "digits.py").write_text(model_script(Predictor(data).model, spec, "digits"))
    digit = Image.fromarray(digits.val.images[3, 0].numpy())
    digit.save(tmp_path / "light.png")
    ImageOps.invert(digit).save(tmp_path / "dark.png")
    notes = {}
    for name in ("light.png", "dark.png"):
        result = subprocess.run(
            [sys.executable, "digits.py", "digits.pt", name], cwd=tmp_path, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0 and len(result.stdout.splitlines()) == 5, result
        notes[name] = result.stderr
    (low, high), dark = preprocess.brightness, np.asarray(ImageOps.invert(digit)).mean() / 255
    assert notes["light.png"] == "", notes
    assert notes["dark.png"] == (
        f"note: mean brightness = {dark:.2f} (learnt from {low:.2f} to {high:.2f}): outside what the model learnt "
        "from, so its prediction extrapolates\n"
    ), notes


def _image_checkpoint(channels: int) -> bytes:
    """A small CNN's checkpoint for 8x8 images of `channels`, its weights drawn at random."""
    spec = ExperimentSpec.model_validate({"dataset": {"name": "digits"}, "model": {"kind": "cnn", "channels": [4]}})
    preprocess = Preprocess(channels=channels, height=8, width=8, mean=(0.4,) * channels, std=(0.3,) * channels)
    torch.manual_seed(channels)
    model = create_model(spec.model, preprocess.input_shape, 10)
    return dump_checkpoint(
        epoch=1, spec=spec, preprocess=preprocess, class_names=tuple("0123456789"), model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1), trainer_state={},
    )  # fmt: skip


def _run_scripts(runs: list[tuple[str, str, list[str]]], folder: Path) -> dict[str, str]:
    """Each (name, script, arguments) run in a fresh interpreter in `folder`, as a user's own machine with torch
    would run it: name -> what it printed. Checks that none of them imported trainlab."""
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(runs)], cwd=folder, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.splitlines()[-1])
    assert output["trainlab_modules"] == []
    return output["answers"]


def _assert_same_classes(name: str, answer: str, expected: list[tuple[str, float]]) -> None:
    lines = [line.split("\t") for line in answer.splitlines()]
    assert [c for c, _ in lines] == [c for c, _ in expected], (name, answer)
    assert [float(p) for _, p in lines] == pytest.approx([p for _, p in expected], abs=1e-4), name


def test_the_default_cnn_reads_as_one_would_write_it() -> None:
    """What POST /experiments:validate shows: torch.nn calls with only the arguments that differ from the defaults
    (max-pooling before the ReLU: the two commute, worker/models.py)."""
    assert model_code(meta_model(CNNSpec(), (1, 28, 28), 10), "cnn") == (
        "def build_model() -> nn.Module:\n"
        "    return nn.Sequential(\n"
        "        nn.Conv2d(1, 32, kernel_size=3, padding=1),\n"
        "        nn.MaxPool2d(kernel_size=2, stride=2),\n"
        "        nn.ReLU(inplace=True),\n"
        "        nn.Conv2d(32, 64, kernel_size=3, padding=1),\n"
        "        nn.MaxPool2d(kernel_size=2, stride=2),\n"
        "        nn.ReLU(inplace=True),\n"
        "        nn.Flatten(),\n"
        "        nn.Linear(in_features=3136, out_features=128),\n"
        "        nn.ReLU(inplace=True),\n"
        "        nn.Linear(in_features=128, out_features=10),\n"
        "    )\n"
    )
