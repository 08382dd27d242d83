"""A trained model rebuilt from its checkpoint: for one uploaded image, rows of a table, or a whole split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from worker.checkpoints import load_checkpoint
from worker.models import create_model
from worker.numerics import eval_batch_size, resolve_numerics
from worker.preprocess import image_to_uint8, normalize


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

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What the model takes for a batch of uint8 images (or of float ones in [0, 1], or float table rows):
        standardised as in training, on its device, in its memory layout."""
        return self._numerics.layout(normalize(images.to(self.device), self.preprocess))

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
            outputs.append(self.model(self.inputs(images[i : i + size])).float().cpu())
        return torch.cat(outputs)
