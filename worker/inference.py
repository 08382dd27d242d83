"""A trained classifier rebuilt from its checkpoint: for one uploaded image, or for a whole split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from worker.checkpoints import load_checkpoint
from worker.models import create_model
from worker.preprocess import image_to_uint8, normalize

BATCH_SIZE = 1024


@dataclass(frozen=True)
class ClassScore:
    label: int
    class_name: str
    probability: float


class Predictor:
    def __init__(self, checkpoint: bytes, device: torch.device | str = "cpu") -> None:
        content = load_checkpoint(checkpoint, map_location=device)
        self.device = torch.device(device)
        self.epoch = content.epoch
        self.spec = content.spec
        self.class_names = content.class_names
        self.preprocess = content.preprocess
        self.model = create_model(content.spec.model, content.preprocess.input_shape, len(content.class_names))
        self.model.load_state_dict(content.model_state)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def predict(self, image: Image.Image, top_k: int = 5) -> list[ClassScore]:
        """Classes by descending probability (at most `top_k`), after the same preprocessing as training."""
        probabilities = torch.softmax(self.logits(image_to_uint8(image, self.preprocess).unsqueeze(0)), dim=1)[0]
        values, labels = probabilities.topk(min(top_k, len(self.class_names)))
        return [
            ClassScore(int(label), self.class_names[label], float(value))
            for value, label in zip(values.tolist(), labels.tolist(), strict=True)
        ]

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw outputs for uint8 (N, C, H, W) images, computed in batches; on the CPU."""
        outputs = [
            self.model(normalize(images[i : i + BATCH_SIZE].to(self.device), self.preprocess)).float().cpu()
            for i in range(0, len(images), BATCH_SIZE)
        ]
        return torch.cat(outputs)
