"""A trained model rebuilt from its checkpoint: for one uploaded image, rows of a table, or a whole split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from worker.checkpoints import load_checkpoint
from worker.models import create_model, stages
from worker.numerics import eval_batch_size, resolve_numerics
from worker.preprocess import image_to_uint8, normalize, standardize, to_unit


@dataclass(frozen=True)
class LayerOutput:
    """What one step of a model's forward pass makes of an input (`worker.models.stages`)."""

    name: str  # "3 relu"
    values: torch.Tensor  # one example's output, fp32 on the CPU: (C, H, W) maps or (F,) values


@dataclass(frozen=True)
class FirstLayer:
    """The weights of the first layer that sees an image's pixels, each filter (a conv layer) or unit (a linear layer
    on the flattened image: a row of its weights, shaped as the image) as an image of its own."""

    name: str  # "0 conv2d", as `worker.models.stages` names it
    weights: torch.Tensor  # (N, C, H, W) fp32 on the CPU
    filters: bool  # a conv layer's filters, else a linear layer's units
    classes: bool  # a linear model's one layer: a unit per class


class NoPixelWeights(ValueError):
    """A model whose first layer with weights does not see the pixels themselves."""


@dataclass(frozen=True)
class Saliency:
    """How much each pixel of an image sways one class's score: |d score / d pixel| (Simonyan et al., 2013), with
    pixels in [0, 1], the largest over an image's channels."""

    pixels: torch.Tensor  # the uint8 (C, H, W) input the model took
    label: int
    probability: float  # the model's probability of that class for the image
    map: torch.Tensor  # (H, W), fp32 on the CPU


@dataclass(frozen=True)
class ClassScore:
    label: int
    class_name: str
    probability: float


class RowOutOfRange(ValueError):
    """A row whose values are so far out (or past float32's ±3.4e38) that the model's output is not a number."""

    def __init__(self, row: int) -> None:
        super().__init__(
            f"row {row}: the model's output is not a finite number; its values are far outside "
            "the range of the training data"
        )
        self.row = row


class Predictor:
    def __init__(self, checkpoint: bytes, device: torch.device | str = "cpu") -> None:
        content = load_checkpoint(checkpoint, map_location=device)
        self.device = torch.device(device)
        self.epoch = content.epoch
        self.spec = content.spec
        self.class_names = content.class_names
        self.preprocess = content.preprocess
        self.tabular = content.preprocess.height == content.preprocess.width == 1
        self.model = create_model(content.spec.model, content.preprocess.input_shape, len(content.class_names))
        self.model.load_state_dict(content.model_state)
        # The engine's evaluation numerics: fp32, conv nets channels-last (the default CNN answers one image 1.3x
        # and a batch of 16 2.9x faster on this CPU than in the contiguous layout).
        self._numerics = resolve_numerics("fp32", self.device, self.model)
        self._numerics.place(self.model, self.device).eval()

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The uint8 (C, H, W) input the model takes for `image`: converted and resized as in training."""
        return image_to_uint8(image, self.preprocess.channels, self.preprocess.size)

    def predict(self, image: Image.Image, top_k: int = 5) -> list[ClassScore]:
        """Classes by descending probability (at most `top_k`), after the same preprocessing as training."""
        return self.classify(self.pixels(image).unsqueeze(0), top_k=top_k)[0]

    @torch.inference_mode()
    def layer_outputs(self, image: Image.Image) -> tuple[torch.Tensor, list[LayerOutput]]:
        """The uint8 input the model takes for `image`, and what each step of its forward pass makes of it, in
        order; the last is the model's output. Steps are applied one by one (no hooks on the shared model: other
        threads predict with it meanwhile)."""
        pixels = self.pixels(image)
        x = self._numerics.layout(normalize(pixels.unsqueeze(0).to(self.device), self.preprocess))
        outputs = []
        for name, step in stages(self.model):
            x = step(x)
            # A copy: the next step may be an in-place ReLU.
            outputs.append(LayerOutput(name, x[0].float().cpu().contiguous().clone()))
        return pixels, outputs

    def first_layer(self) -> FirstLayer:
        """The weights of the first conv or linear layer, which must see the image's pixels (NoPixelWeights)."""
        steps = stages(self.model)
        for index, (name, step) in enumerate(steps):
            layers = step.modules() if isinstance(step, nn.Module) else ()
            layer = next((m for m in layers if isinstance(m, nn.Conv2d | nn.Linear)), None)
            if layer is None:
                continue
            weights = layer.weight.detach().float().cpu().contiguous()
            if isinstance(layer, nn.Linear):
                pixels = math.prod(self.preprocess.input_shape)
                if weights.shape[1] != pixels:
                    raise NoPixelWeights(f"its first layer with weights, {name}, takes {weights.shape[1]} values, not "
                                         f"the image's {pixels} pixels")  # fmt: skip
                weights = weights.view(-1, *self.preprocess.input_shape)
            linear = isinstance(layer, nn.Linear)
            return FirstLayer(name, weights, filters=not linear, classes=linear and index == len(steps) - 1)
        raise NoPixelWeights("it has no conv or linear layer")

    def saliency(self, image: Image.Image, label: int | None = None) -> Saliency:
        """Which pixels of `image` sway the score of class `label` (by default the predicted class) most."""
        pixels = self.pixels(image)
        unit = to_unit(pixels.unsqueeze(0).to(self.device)).requires_grad_()
        with torch.enable_grad():  # the gradient of the input alone: the shared model's weights are not touched
            logits = self.model(self._numerics.layout(standardize(unit, self.preprocess)))
            label = int(logits[0].argmax()) if label is None else label
            (gradient,) = torch.autograd.grad(logits[0, label], unit)
        probability = float(torch.softmax(logits.detach()[0], dim=0)[label])
        return Saliency(pixels, label, probability, gradient[0].abs().amax(dim=0).cpu())

    @torch.inference_mode()
    def classify(self, images: torch.Tensor, top_k: int = 5) -> list[list[ClassScore]]:
        """For each of a batch of uint8 images (or float table rows), its classes by descending probability."""
        return self._ranked(self.logits(images), top_k)

    @torch.inference_mode()
    def predict_rows(self, rows: torch.Tensor, top_k: int = 1) -> list[float] | list[list[ClassScore]]:
        """For a model trained on a table: each row's predicted target (regression, in the target's units) or
        classes by descending probability."""
        outputs = self.logits(rows.float().view(len(rows), -1, 1, 1))
        regression = self.spec.task == "regression"
        if regression:
            outputs = outputs[:, :1] * self.preprocess.target_std + self.preprocess.target_mean
        if not (finite := torch.isfinite(outputs).all(dim=1)).all():
            raise RowOutOfRange(int((~finite).nonzero()[0]))
        return outputs[:, 0].tolist() if regression else self._ranked(outputs, top_k)

    def _ranked(self, logits: torch.Tensor, top_k: int) -> list[list[ClassScore]]:
        values, labels = torch.softmax(logits, dim=1).topk(min(top_k, len(self.class_names)), dim=1)
        return [
            [ClassScore(int(k), self.class_names[k], float(v)) for v, k in zip(vs, ks, strict=True)]
            for vs, ks in zip(values.tolist(), labels.tolist(), strict=True)
        ]

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw outputs for uint8 (N, C, H, W) images (or float (N, F, 1, 1) rows), in batches; on the CPU."""
        size = eval_batch_size(self.device)
        outputs = []
        for i in range(0, len(images), size):
            inputs = normalize(images[i : i + size].to(self.device), self.preprocess)
            outputs.append(self.model(self._numerics.layout(inputs)).float().cpu())
        return torch.cat(outputs)
