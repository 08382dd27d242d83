"""Trained models held in memory for /predict, least recently used evicted first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from service.store import CheckpointRef
from worker.inference import Predictor


class PredictorCache:
    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._items: OrderedDict[CheckpointRef, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: CheckpointRef, load: Callable[[], bytes]) -> Predictor:
        """The predictor for `ref`; `load` fetches the checkpoint bytes on a miss."""
        with self._lock:
            if ref in self._items:
                self._items.move_to_end(ref)
                return self._items[ref]
        # Built outside the lock: a slow load must not hold up predictions from cached models.
        predictor = Predictor(load())
        with self._lock:
            self._items[ref] = predictor
            self._items.move_to_end(ref)
            while len(self._items) > self._max_size:
                self._items.popitem(last=False)
        return predictor
