"""Views inside a trained model (worker/model_views.py), on a real MNIST digit: what each layer makes of it
(`POST /experiments/{id}/activations.png`; the steps, taken in order, compute the model's output for every kind of
model), which of its pixels sway a class's score (`.../saliency.png`), the first layer's weights
(`GET .../weights.png`), the training loss's gradient at each layer (`GET .../gradients`)."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from PIL import Image

from service.figures import render_feature_weights, render_layer_outputs, render_saliency, shown_channels
from service.specs import DatasetSpec, ExperimentSpec
from tests.conftest import REPO, fit_bundled, load_bundled
from worker import preprocess
from worker.checkpoints import dump_checkpoint
from worker.inference import Predictor
from worker.model_views import (
    NonFiniteGradient,
    NoPixelWeights,
    first_layer,
    gradient_examples,
    layer_gradients,
    layer_outputs,
    saliency,
)
from worker.models import create_model, input_preprocess, stages
from worker.preprocess import standardize

LAYERS = [
    {"kind": "conv2d", "out_channels": 4}, {"kind": "batchnorm2d"}, {"kind": "gelu"}, {"kind": "avgpool2d"},
    {"kind": "dropout"}, {"kind": "adaptiveavgpool2d", "output_size": 2}, {"kind": "flatten"}, {"kind": "linear"},
]  # fmt: skip
MODELS = {
    "linear": {"kind": "linear"},
    "mlp": {"kind": "mlp", "hidden": [16, 8], "dropout": 0.5},
    "cnn": {"kind": "cnn", "channels": [4, 8], "hidden": 16},
    "cnn-batchnorm-avg": {"kind": "cnn", "channels": [4], "batchnorm": True, "pool": "avg", "dropout": 0.5},
    "sequential": {"kind": "sequential", "layers": LAYERS},
    "resnet18": {"kind": "resnet18", "pretrained": "none", "image_size": 32},
    "mobilenet_v2": {"kind": "mobilenet_v2", "pretrained": "none", "image_size": 32, "dropout": 0.2},
}


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_the_steps_of_every_kind_of_model_compute_its_output(model: dict) -> None:
    spec = ExperimentSpec.model_validate({"dataset": {"name": "mnist-10k"}, "model": model})
    torch.manual_seed(0)
    net = create_model(spec.model, (1, 28, 28), 10).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected, names = net(x), []
        for name, step in stages(net):
            x = step(x)
            names.append(name)
    torch.testing.assert_close(x, expected)
    assert len(set(names)) == len(names), names


def trained(**model) -> Predictor:
    """A model (by default a small CNN) trained for an epoch on the bundled MNIST."""
    model = model if "kind" in model else {"kind": "cnn", "channels": [8, 16], "hidden": 32, **model}
    experiment = ExperimentSpec.model_validate({"dataset": {"name": "mnist-10k"}, "model": model, "epochs": 1})
    [(_, checkpoint)] = fit_bundled(experiment)
    return Predictor(checkpoint)


SEVEN = REPO / "examples" / "images" / "mnist-val-7.png"


def test_a_trained_cnn_s_layers_on_a_real_digit() -> None:
    predictor = trained()
    image = Image.open(SEVEN)
    pixels, outputs = layer_outputs(predictor, image)
    assert torch.equal(pixels, predictor.pixels(image))
    assert [(o.name, list(o.values.shape)) for o in outputs] == [
        ("0 conv2d", [8, 28, 28]), ("1 maxpool2d", [8, 14, 14]), ("2 relu", [8, 14, 14]),
        ("3 conv2d", [16, 14, 14]), ("4 maxpool2d", [16, 7, 7]), ("5 relu", [16, 7, 7]),
        ("6 flatten", [784]), ("7 linear", [32]), ("8 relu", [32]), ("9 linear", [10]),
    ]  # fmt: skip
    # Each output is kept as that layer made it, though the ReLU after it works in place.
    pooled, rectified = outputs[1].values, outputs[2].values
    assert (pooled < 0).any() and torch.equal(rectified, pooled.clamp_min(0))
    torch.testing.assert_close(outputs[-1].values, predictor.logits(pixels.unsqueeze(0))[0])
    assert int(outputs[-1].values.argmax()) == predictor.predict(image)[0].label  # what /predict answers

    # The figure follows the same channels from a conv through its pool and ReLU, the most active ones first chosen.
    shown = shown_channels(outputs)
    assert shown[0] == shown[1] == shown[2] and len(shown[0]) == 8
    assert shown[3] == shown[4] == shown[5] and len(shown[3]) == 8 and shown[3] == sorted(shown[3])
    activity = outputs[3].values.clamp_min(0).mean(dim=(1, 2))
    assert activity[shown[3]].min() >= activity.sort(descending=True).values[7]
    assert shown[6:] == [[], [], [], []]  # flat outputs are bars
    figure = Image.open(io.BytesIO(render_layer_outputs(pixels, outputs, predictor.class_names, "a 7")))
    fewer = Image.open(io.BytesIO(render_layer_outputs(pixels, outputs[-4:], predictor.class_names, "a 7")))
    assert figure.format == "PNG" and figure.width == fewer.width and figure.height > fewer.height + 500


def test_the_saliency_of_a_pixel_is_how_fast_the_class_score_moves_with_it() -> None:
    # Average pooling: a max-pool has kinks wherever a window ties (MNIST's saturated strokes make many), and there
    # a finite difference need not meet the gradient that autograd takes.
    predictor = trained(pool="avg")
    image = Image.open(SEVEN)
    # As in a fresh API process, where /predict (under inference mode) is the first to standardise an image.
    preprocess._stats.cache_clear()
    [top, *_] = predictor.predict(image)
    found = saliency(predictor, image)
    assert found.label == top.label and found.probability == pytest.approx(top.probability, abs=1e-5)
    assert found.map.shape == (28, 28)
    # The map is |d score / d pixel|, pixels in [0, 1]: checked by central differences on a float64 copy of the
    # model at the three most swaying pixels and at one that sways nothing.
    model = copy.deepcopy(predictor.model).double()
    unit = found.pixels.double().unsqueeze(0) / 255

    @torch.no_grad()
    def score(x: torch.Tensor) -> float:
        return float(model(standardize(x, predictor.preprocess))[0, found.label])

    step, flat = 1e-6, found.map.flatten()
    for pixel in [*flat.argsort(descending=True)[:3].tolist(), int(flat.argmin())]:
        nudge = torch.zeros_like(unit)
        nudge.view(-1)[pixel] = step
        slope = (score(unit + nudge) - score(unit - nudge)) / (2 * step)
        assert abs(slope) == pytest.approx(float(flat[pixel]), rel=1e-3, abs=1e-6), pixel
    other = saliency(predictor, image, label=(found.label + 1) % 10)
    assert other.label == (found.label + 1) % 10 and not torch.equal(other.map, found.map)
    figure = Image.open(io.BytesIO(render_saliency(found.pixels, found.map, "a 7")))
    assert figure.format == "PNG"


def test_the_first_layer_s_weights_as_images() -> None:
    cnn = first_layer(trained())
    assert (cnn.name, cnn.filters, cnn.outputs, tuple(cnn.weights.shape)) == ("0 conv2d", True, False, (8, 1, 3, 3))
    mlp = first_layer(trained(kind="mlp", hidden=[16]))  # a unit a hidden value, shaped as the image
    assert (mlp.name, mlp.filters, mlp.outputs, tuple(mlp.weights.shape)) == ("1 linear", False, False, (16, 1, 28, 28))
    # A linear model's one layer: an image a class, whose pixels weigh the standardised image's; its score of a
    # class is that image times the input, summed, plus the bias.
    linear = trained(kind="linear")
    first = first_layer(linear)
    assert (first.filters, first.outputs, tuple(first.weights.shape)) == (False, True, (10, 1, 28, 28))
    pixels = linear.pixels(Image.open(SEVEN))
    scores = (first.weights * standardize(pixels.float() / 255, linear.preprocess)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(scores + linear.model[1].bias.detach(), linear.logits(pixels.unsqueeze(0))[0])
    # A layer with weights that sees pooled values, not the pixels, has no images to show.
    pooled = trained(kind="sequential", layers=[{"kind": "avgpool2d"}, {"kind": "flatten"}, {"kind": "linear"}])
    with pytest.raises(NoPixelWeights, match="2 linear, takes 196 values, not the input's 784 pixels"):
        first_layer(pooled)


def test_a_linear_regression_s_weights_say_which_features_matter() -> None:
    """The diabetes example's coefficients on standardised features: bmi and s5 (a blood serum measure, log
    triglycerides) pull hardest, as in the literature (they enter first in Efron et al.'s LARS); age barely, once
    the others are known. Measured at seeds 0-2: s5 0.35-0.40, bmi 0.28-0.32, |age| at most 0.013."""
    example = REPO / "examples" / "diabetes-linear-regression.json"
    spec = ExperimentSpec.model_validate(json.loads(example.read_text()))
    predictor = Predictor(fit_bundled(spec)[-1][1])
    first = first_layer(predictor)
    assert (first.name, first.outputs, tuple(first.weights.shape)) == ("1 linear", True, (1, 10, 1, 1))
    weights = dict(zip(predictor.preprocess.feature_names, first.weights.flatten().tolist(), strict=True))
    ranked = sorted(weights, key=lambda name: -abs(weights[name]))
    assert set(ranked[:2]) == {"bmi", "s5"} and weights["bmi"] > 0 and weights["s5"] > 0, weights
    assert abs(weights["age"]) < 0.05, weights
    figure = render_feature_weights(first.weights[:, :, 0, 0], predictor.preprocess.feature_names, ["progression"], "t")
    assert Image.open(io.BytesIO(figure)).format == "PNG"
    # A CNN on the table (the API warns against it): its kernels' weights are no weights on the features.
    cnn = ExperimentSpec.model_validate({**spec.model_dump(), "model": {"kind": "cnn", "channels": [4]}, "epochs": 1})
    with pytest.raises(NoPixelWeights, match="0 conv2d, is a convolution over a table's features"):
        first_layer(Predictor(fit_bundled(cnn)[-1][1]))


def test_gradients_vanish_through_four_sigmoids_and_not_through_relus() -> None:
    """The training loss's gradient at each layer of the activations example's MLPs after an epoch (plain SGD at
    0.1 on mnist-10k): through four sigmoids (slope at most 1/4) it shrinks 2-27x a layer on its way back, the
    first layer's ~2,500x below the last's (4.8e-6 against 1.2e-2); through ReLUs it stays within 6x. Taken as a
    training step takes it, on a copy: the served model keeps its weights, mode and (no) gradients."""
    example = json.loads((REPO / "examples" / "sweep-activations-mnist.json").read_text())
    mnist = load_bundled(DatasetSpec(name="mnist-10k"))
    ratios = {}
    for activation in ("sigmoid", "relu"):
        spec = {**example["base"], "epochs": 1, "model": {**example["base"]["model"], "activation": activation}}
        predictor = Predictor(fit_bundled(ExperimentSpec.model_validate(spec))[-1][1])
        before = copy.deepcopy(predictor.model.state_dict())
        examples = gradient_examples(predictor, len(mnist.train))
        images, labels = mnist.train.images[:examples], mnist.train.labels[:examples]
        found = layer_gradients(predictor, images, labels)
        assert examples == found.examples == 256
        assert [layer.name for layer in found.layers] == ["1 linear", "3 linear", "5 linear", "7 linear", "9 linear"]
        relus = ["2 relu", "4 relu", "6 relu", "8 relu"] if activation == "relu" else []
        assert [r.name for r in found.relus] == relus, found.relus
        ratios[activation] = found.layers[0].gradient / found.layers[-1].gradient
        model = copy.deepcopy(predictor.model).train()
        torch.nn.functional.cross_entropy(model(preprocess.normalize(images, predictor.preprocess)), labels).backward()
        assert found.loss > 0 and [layer.gradient for layer in found.layers] == pytest.approx(
            [float(m.weight.grad.square().mean().sqrt()) for m in model if isinstance(m, torch.nn.Linear)], rel=1e-4
        )
        assert not predictor.model.training and all(p.grad is None for p in predictor.model.parameters())
        assert all(torch.equal(value, predictor.model.state_dict()[name]) for name, value in before.items())
    assert ratios["sigmoid"] < 1e-2 and ratios["relu"] > 0.1, ratios


def test_a_learning_rate_too_high_for_adam_leaves_most_relus_dead() -> None:
    """The optimizer example's MLP on fashion-mnist-10k after 2 epochs: at Adam's usual 0.001, 11-14% of the
    second hidden layer's units never fire on the sample and 2-4% of the first's; at 0.1 (validation accuracy
    0.14-0.34), 90-99% and 34-69% (seeds 0-2, fp32 and bf16)."""
    example = json.loads((REPO / "examples" / "sweep-optimizers.json").read_text())
    fashion = load_bundled(DatasetSpec(name="fashion-mnist-10k"))
    dead = {}
    for lr in (0.001, 0.1):
        spec = {**example["base"], "epochs": 2, "optimizer": {"kind": "adam", "lr": lr}}
        predictor = Predictor(fit_bundled(ExperimentSpec.model_validate(spec))[-1][1])
        examples = gradient_examples(predictor, len(fashion.train))
        found = layer_gradients(predictor, fashion.train.images[:examples], fashion.train.labels[:examples])
        assert [(r.name, r.units) for r in found.relus] == [("2 relu", 256), ("4 relu", 128)], found.relus
        dead[lr] = [r.dead for r in found.relus]
    assert dead[0.1][1] > 0.5 and dead[0.001][1] < 0.3 and dead[0.1][0] > dead[0.001][0], dead


def untrained(model: dict, poisoned: bool = False) -> Predictor:
    """A model for digits at its initial weights (all NaN with `poisoned`), served from a checkpoint."""
    digits = load_bundled(DatasetSpec(name="digits"))
    spec = ExperimentSpec.model_validate({"dataset": {"name": "digits"}, "model": model})
    inputs = input_preprocess(spec.model, digits.info.preprocess)
    net = create_model(spec.model, inputs.input_shape, 10)
    if poisoned:
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.fill_(float("nan"))
    return Predictor(dump_checkpoint(
        epoch=1, spec=spec, preprocess=inputs, class_names=digits.info.class_names, model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), trainer_state={},
    ))  # fmt: skip


def test_a_frozen_backbone_s_layers_have_no_gradient_and_big_inputs_take_fewer_examples() -> None:
    digits = load_bundled(DatasetSpec(name="digits"))
    predictor = untrained({"kind": "resnet18", "pretrained": "none", "freeze": "backbone", "image_size": 224})
    examples = gradient_examples(predictor, len(digits.train))
    assert 2 <= examples < 64, examples  # each 224x224 image: ~6 MB through the backbone
    found = layer_gradients(predictor, digits.train.images[:examples], digits.train.labels[:examples])
    assert found.layers[0].name == "backbone.conv1 conv2d" and found.layers[-1].name == "head linear"
    assert all(layer.gradient is None for layer in found.layers[:-1]) and found.layers[-1].gradient > 0
    # Weights gone to NaN (a run diverging): said, not answered with numbers JSON cannot hold.
    with pytest.raises(NonFiniteGradient, match="the training loss is nan"):
        layer_gradients(untrained({"kind": "mlp"}, poisoned=True), digits.train.images[:8], digits.train.labels[:8])
