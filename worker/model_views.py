"""Views inside a trained model, for a learner: what each layer makes of an image, the weights of its first
layer (as images; for a table, per feature), which pixels of an image sway a class's score, and how large the
training loss's gradient is at each layer. Each takes a `Predictor`, whose model other threads may be predicting
with meanwhile: nothing here changes the model (no hooks, no gradients of its weights; a training step's
gradients, and what its ReLUs output, are taken on a copy)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from worker.inference import Predictor
from worker.models import describe, layer_kind, meta_model, stages
from worker.objectives import Objective
from worker.preprocess import to_unit


@dataclass(frozen=True)
class LayerOutput:
    """What one step of a model's forward pass makes of an input (`worker.models.stages`)."""

    name: str  # "3 relu"
    values: torch.Tensor  # one example's output, fp32 on the CPU: (C, H, W) maps or (F,) values


@torch.inference_mode()
def layer_outputs(predictor: Predictor, image: Image.Image) -> tuple[torch.Tensor, list[LayerOutput]]:
    """The uint8 input the model takes for `image`, and what each step of its forward pass makes of it, in order;
    the last is the model's output. The steps are applied one by one."""
    pixels = predictor.pixels(image)
    x = predictor.inputs(pixels.unsqueeze(0))
    outputs = []
    for name, step in stages(predictor.model):
        x = step(x)
        # A copy: the next step may be an in-place ReLU.
        outputs.append(LayerOutput(name, x[0].float().cpu().contiguous().clone()))
    return pixels, outputs


@dataclass(frozen=True)
class FirstLayer:
    """The weights of the first layer that sees the input itself: each filter (a conv layer) or unit (a linear layer
    on the flattened input: a row of its weights, shaped as the input) of its own. For a table's model, a unit's
    weight on each (standardised) feature: (N, F, 1, 1)."""

    name: str  # "0 conv2d", as `worker.models.stages` names it
    weights: torch.Tensor  # (N, C, H, W) fp32 on the CPU
    filters: bool  # a conv layer's filters, else a linear layer's units
    outputs: bool  # a linear model's one layer: its units are the outputs (a class each, or a regression's target)


class NoPixelWeights(ValueError):
    """A model whose first layer with weights does not see the input (the pixels, a table's features) itself."""


def first_layer(predictor: Predictor) -> FirstLayer:
    """The weights of the model's first conv or linear layer, which must see the input itself (NoPixelWeights)."""
    shape = predictor.preprocess.input_shape
    steps = stages(predictor.model)
    for index, (name, step) in enumerate(steps):
        layers = step.modules() if isinstance(step, nn.Module) else ()
        layer = next((m for m in layers if isinstance(m, nn.Conv2d | nn.Linear)), None)
        if layer is None:
            continue
        weights = layer.weight.detach().float().cpu().contiguous()
        linear = isinstance(layer, nn.Linear)
        if predictor.tabular and not linear:  # a kernel over one value a feature: most of it sees only padding
            raise NoPixelWeights(f"its first layer with weights, {name}, is a convolution over a table's features")
        if linear:
            if weights.shape[1] != math.prod(shape):
                what = "features" if predictor.tabular else "pixels"
                raise NoPixelWeights(f"its first layer with weights, {name}, takes {weights.shape[1]} values, not "
                                     f"the input's {math.prod(shape)} {what}")  # fmt: skip
            weights = weights.view(-1, *shape)
        return FirstLayer(name, weights, filters=not linear, outputs=linear and index == len(steps) - 1)
    raise NoPixelWeights("it has no conv or linear layer")


@dataclass(frozen=True)
class Saliency:
    """How much each pixel of an image sways one class's score: |d score / d pixel| (Simonyan et al., 2013), with
    pixels in [0, 1], the largest over an image's channels."""

    pixels: torch.Tensor  # the uint8 (C, H, W) input the model took
    label: int
    probability: float  # the model's probability of that class for the image
    map: torch.Tensor  # (H, W), fp32 on the CPU


def saliency(predictor: Predictor, image: Image.Image, label: int | None = None) -> Saliency:
    """Which pixels of `image` sway the score of class `label` (by default the predicted class) most."""
    pixels = predictor.pixels(image)
    unit = to_unit(pixels.unsqueeze(0).to(predictor.device)).requires_grad_()
    with torch.enable_grad():  # the gradient of the input alone: the weights' gradients are neither taken nor kept
        logits = predictor.model(predictor.inputs(unit))
        label = int(logits[0].argmax()) if label is None else label
        (gradient,) = torch.autograd.grad(logits[0, label], unit)
    probability = float(torch.softmax(logits.detach()[0], dim=0)[label])
    return Saliency(pixels, label, probability, gradient[0].abs().amax(dim=0).cpu())


@dataclass(frozen=True)
class LayerGradient:
    """One layer's weight and the training loss's gradient on it, as root mean squares, so that layers of any size
    compare; `gradient` is None for a frozen layer."""

    name: str  # "1 linear", "backbone.layer1.0.conv1 conv2d": its path in the model and its kind
    parameters: int  # in its weight (its bias is left out)
    weight: float
    gradient: float | None


@dataclass(frozen=True)
class DeadUnits:
    """A ReLU layer's units (a map's channels, or features) that output 0 for every example of a sample, at every
    position of a map: dead, no gradient reaches the weights before them (a learning rate too high kills them)."""

    name: str  # "2 relu"
    units: int
    dead: float  # their share


@dataclass(frozen=True)
class Gradients:
    loss: float
    examples: int
    layers: list[LayerGradient]  # in the order of the forward pass
    relus: list[DeadUnits]  # likewise


class NonFiniteGradient(ValueError):
    """A checkpoint whose loss or gradients are not finite numbers (a run on its way to diverging)."""


# The memory a gradient batch may take, by the model's own estimate (what autograd keeps for the backward pass,
# and the largest layer output twice); and the most examples one takes.
GRADIENT_MEMORY = 128 * 2**20
MAX_GRADIENT_EXAMPLES = 256


def gradient_examples(predictor: Predictor, available: int) -> int:
    """How many training examples `layer_gradients` takes: as many as fit GRADIENT_MEMORY (a ResNet18 at 224x224
    takes ~27 MB an image, ~6 MB with its backbone frozen; the default CNN on MNIST ~1.2 MB), at least 2
    (batchnorm normalises over the batch), at most 256 or `available`."""
    shape = predictor.preprocess.input_shape
    _, saved, largest = describe(meta_model(predictor.spec.model, shape, len(predictor.class_names)), shape, 2)
    fitting = GRADIENT_MEMORY // (saved // 2 + 4 * 2 * largest)
    return max(2, min(MAX_GRADIENT_EXAMPLES, available, fitting))


def layer_gradients(predictor: Predictor, images: torch.Tensor, labels: torch.Tensor) -> Gradients:
    """The gradient of the experiment's training loss over a batch of training examples (uint8 images or float
    rows), at each layer with a weight, as a training step takes it: in training mode (dropout on, batchnorm on
    the batch's statistics) without augmentation, in fp32, on a copy of the model, and each ReLU layer's dead
    units. Vanishing gradients show as first layers whose gradient is orders of magnitude below the last's.
    Raises NonFiniteGradient."""
    model = copy.deepcopy(predictor.model).train()
    objective = Objective.of(predictor.spec.task, predictor.spec.loss, predictor.preprocess)
    fired: dict[str, torch.Tensor] = {}  # by ReLU layer: whether each unit output more than 0 for any example

    def watch(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
            positive = out.detach() > 0
            units = (positive.flatten(2).any(dim=2) if positive.dim() > 2 else positive).any(dim=0)
            fired[name] = fired[name] | units if name in fired else units  # a module used twice (a ResNet block's)

        return hook

    relus = [(f"{name} {layer_kind(m)}", m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    for name, module in relus:
        module.register_forward_hook(watch(name))  # on the copy, which nothing else uses
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # dropout's masks: the same answer for the same checkpoint
        loss = objective.loss(model(predictor.inputs(images)), labels.to(predictor.device))
        if not torch.isfinite(loss):
            raise NonFiniteGradient(f"the training loss is {loss.item()}")
        loss.backward()

    def rms(tensor: torch.Tensor) -> float:
        return float(tensor.detach().float().square().mean().sqrt())

    layers = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.numel() == 0:
            continue
        label = f"{name} {layer_kind(module)}"
        gradient = rms(weight.grad) if weight.grad is not None else None
        if gradient is not None and not math.isfinite(gradient):
            raise NonFiniteGradient(f"the gradient at layer {label} is {gradient}")
        layers.append(LayerGradient(label, weight.numel(), rms(weight), gradient))
    dead = [DeadUnits(name, len(units), 1 - units.float().mean().item()) for name, units in fired.items()]
    return Gradients(loss.item(), len(labels), layers, dead)
