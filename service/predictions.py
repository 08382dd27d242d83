"""POST /experiments/{id}/predict off the event loop, with concurrent requests answered in batches.

One inference thread serves every image request of the API process. Requests wait on the event loop; whatever
arrived while the thread was busy goes in its next batch, one forward pass per model. Under load this answers
16 concurrent clients with a few forward passes instead of 16 threads taking turns at the GIL, and the first
request of a quiet server starts at once (no batching window). Checkpoint lookup, model loading and image decoding
run on that thread too: nothing that touches the database or decodes pixels runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from prometheus_client import Histogram

from service.cache import LRUCache
from service.errors import Conflict
from service.images import decode_image
from service.schemas import ClassProbability, Prediction
from service.store import CheckpointRef, CorruptCheckpoint, Store
from worker.checkpoints import UnreadableCheckpoint
from worker.inference import ClassScore, Predictor

# Enough to take every request of a busy moment at once; more would only delay the first answers of a batch.
MAX_BATCH = 32


def load_predictor(ref: CheckpointRef, store: Store, predictors: LRUCache[Predictor]) -> Predictor:
    """The model of a checkpoint, from the cache or rebuilt from the database."""

    def load() -> Predictor:
        try:
            return Predictor(store.checkpoint_data(ref))
        except UnreadableCheckpoint as exc:
            raise CorruptCheckpoint(
                f"the checkpoint of experiment {ref.experiment_id} epoch {ref.epoch} {exc}"
            ) from None

    return predictors.get(ref, load)


def image_predictor(experiment_id: int, epoch: int | None, store: Store, predictors: LRUCache[Predictor]) -> Predictor:
    """The model of an experiment's best checkpoint (or `epoch`'s), which must have learned from images."""
    predictor = load_predictor(store.find_checkpoint(experiment_id, epoch), store, predictors)
    if predictor.tabular:
        raise Conflict(f"experiment {experiment_id} learned from a table: POST its rows to .../predict/rows")
    return predictor


@dataclass
class _Request:
    experiment_id: int
    epoch: int | None
    data: bytes
    top_k: int
    answer: asyncio.Future[Prediction]
    # Set on the inference thread: the answer, or why there is none.
    result: Prediction | None = None
    error: Exception | None = None


def probabilities(scores: Iterable[ClassScore]) -> list[ClassProbability]:
    return [ClassProbability(label=s.label, class_name=s.class_name, probability=s.probability) for s in scores]


class ImagePredictions:
    """Classifies uploaded images on one thread, in batches; see the module's docstring."""

    def __init__(
        self,
        store: Store,
        predictors: LRUCache[Predictor],
        latency: Histogram,
        batch_sizes: Histogram,
        *,
        max_upload_bytes: int,
        max_pixels: int,
    ) -> None:
        self._store, self._predictors, self._max_pixels = store, predictors, max_pixels
        self.latency, self.max_upload_bytes, self._batch_sizes = latency, max_upload_bytes, batch_sizes
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inference")
        # Touched only on the event loop's thread, so no lock.
        self._waiting: list[_Request] = []
        self._busy = False

    async def predict(self, experiment_id: int, epoch: int | None, data: bytes, top_k: int) -> Prediction:
        loop = asyncio.get_running_loop()
        request = _Request(experiment_id, epoch, data, top_k, loop.create_future())
        self._waiting.append(request)
        if not self._busy:
            self._next_batch(loop)
        return await request.answer

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _next_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._busy = True
        self._batch_sizes.observe(len(batch))
        done = loop.run_in_executor(self._thread, self._answer, batch)
        done.add_done_callback(lambda finished: self._deliver(loop, batch, finished))

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[_Request], finished: asyncio.Future) -> None:
        self._busy = False
        for request in batch:
            if request.answer.done():  # the client went away
                continue
            if finished.cancelled():  # the API is shutting down
                request.answer.cancel()
            elif (error := request.error or finished.exception()) is not None:
                request.answer.set_exception(error)
            else:
                request.answer.set_result(request.result)
        if self._waiting:
            self._next_batch(loop)

    def _answer(self, batch: list[_Request]) -> None:
        """On the inference thread: each request's model (looked up once per experiment and epoch in the batch)
        and pixels, or its own 4xx; then one forward pass per model."""
        models: dict[tuple[int, int | None], Predictor] = {}
        inputs: dict[Predictor, list[tuple[_Request, torch.Tensor]]] = defaultdict(list)
        for request in batch:
            key = (request.experiment_id, request.epoch)
            try:
                # The checkpoint first: an unknown id or an untrained model is answered before any decoding.
                if key not in models:
                    models[key] = self._model(*key)
                pixels = models[key].pixels(decode_image(request.data, max_pixels=self._max_pixels))
            except Exception as exc:  # answered to that request alone, as the API's error mapping says
                request.error = exc
                continue
            inputs[models[key]].append((request, pixels))
        for predictor, prepared in inputs.items():
            images = torch.stack([p for _, p in prepared])
            ranked = predictor.classify(images, top_k=max(r.top_k for r, _ in prepared))
            outside = predictor.preprocess.outside_training_range(images)
            for (request, _), scores, note in zip(prepared, ranked, outside, strict=True):
                request.result = Prediction(
                    label=scores[0].label,
                    class_name=scores[0].class_name,
                    probabilities=probabilities(scores[: request.top_k]),
                    epoch=predictor.epoch,
                    outside_training_range=note,
                )

    def _model(self, experiment_id: int, epoch: int | None) -> Predictor:
        return image_predictor(experiment_id, epoch, self._store, self._predictors)
