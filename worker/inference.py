"""A trained classifier rebuilt from its checkpoint, answering for one image at a time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from worker.checkpoints import load_checkpoint
from worker.models import create_model
from worker.preprocess import image_to_uint8, normalize


@dataclass(frozen=True)
class ClassScore:
    label: int
    class_name: str
    probability: float


class Predictor:
    def __init__(self, checkpoint: bytes) -> None:
        content = load_checkpoint(checkpoint)
        self.epoch = content.epoch
        self.class_names = content.class_names
        self.preprocess = content.preprocess
        self.model = create_model(content.spec.model, content.preprocess.input_shape, len(content.class_names))
        self.model.load_state_dict(content.model_state)
        self.model.eval()

    @torch.inference_mode()
    def predict(self, image: Image.Image, top_k: int = 5) -> list[ClassScore]:
        """Classes by descending probability (at most `top_k`), after the same preprocessing as training."""
        inputs = normalize(image_to_uint8(image, self.preprocess).unsqueeze(0), self.preprocess)
        probabilities = torch.softmax(self.model(inputs), dim=1)[0]
        values, labels = probabilities.topk(min(top_k, len(self.class_names)))
        return [
            ClassScore(int(label), self.class_names[label], float(value))
            for value, label in zip(values.tolist(), labels.tolist(), strict=True)
        ]
