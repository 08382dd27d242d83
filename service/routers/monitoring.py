"""GET /metrics for Prometheus: what the database knows (experiments, queue, epochs, workers), read at scrape
time so that every API replica answers alike, and this process's /predict latency."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from service.store import Store

router = APIRouter(tags=["monitoring"])

EPOCH_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
PREDICT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class StoreCollector:
    """Metrics computed from the database on each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        counts = self.store.status_counts()
        experiments = GaugeMetricFamily("trainlab_experiments", "Experiments by status", labels=["status"])
        for status, n in counts.items():
            experiments.add_metric([status], n)
        yield experiments
        yield GaugeMetricFamily("trainlab_queue_depth", "Experiments waiting for a worker", value=counts["queued"])
        epochs, samples = self.store.training_totals()
        yield CounterMetricFamily("trainlab_epochs_trained", "Epochs recorded, all experiments", value=epochs)
        yield CounterMetricFamily("trainlab_samples_trained", "Training examples processed, all epochs", value=samples)
        below, count, total = self.store.epoch_duration_histogram(EPOCH_BUCKETS)
        yield HistogramMetricFamily(
            "trainlab_epoch_duration_seconds", "Wall time of each recorded epoch (training and evaluation)",
            buckets=[*zip(map(str, EPOCH_BUCKETS), below, strict=True), ("+Inf", count)], sum_value=total,
        )  # fmt: skip
        now = time.time()
        seen = GaugeMetricFamily(
            "trainlab_worker_last_seen_seconds",
            "Seconds since each worker's last heartbeat",
            labels=["worker", "device"],
        )
        busy = GaugeMetricFamily("trainlab_worker_busy", "1 while the worker trains an experiment", labels=["worker"])
        for worker in self.store.live_workers(within_s=3600):
            seen.add_metric([worker.worker_id, worker.device], now - worker.last_seen_at.timestamp())
            busy.add_metric([worker.worker_id], 1.0 if worker.experiment_id is not None else 0.0)
        yield seen
        yield busy


def metrics_registry(store: Store) -> tuple[CollectorRegistry, Histogram, Histogram]:
    """This app's registry (not the global one: several apps may live in one process, as in tests), the
    /predict latency histogram the predict route observes and the batch sizes its inference thread runs."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    latency = Histogram(
        "trainlab_predict_latency_seconds", "POST .../predict, from request to answer (this API process)",
        buckets=PREDICT_BUCKETS, registry=registry,
    )  # fmt: skip
    batch_sizes = Histogram(
        "trainlab_predict_batch_size", "Images per batch of /predict's inference thread (concurrent requests)",
        buckets=(1, 2, 4, 8, 16, 32), registry=registry,
    )  # fmt: skip
    return registry, latency, batch_sizes


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus_metrics(request: Request):
    """Prometheus text format: experiments by status, queue depth, epochs and samples trained, epoch durations,
    workers' heartbeats, /predict latency and batch sizes."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
