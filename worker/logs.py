"""The worker's log lines about an experiment, kept with its events (GET /experiments/{id}/logs, the SSE stream)."""

from __future__ import annotations

import logging

from service.store import DatabaseUnavailable, Store

log = logging.getLogger("trainlab.worker")


def job_log(experiment_id: int) -> logging.LoggerAdapter:
    """The worker's logger for lines about one experiment: they also go to its log (GET .../logs)."""
    return logging.LoggerAdapter(log, {"experiment_id": experiment_id})


class ExperimentLogHandler(logging.Handler):
    """Stores each log line that names an experiment (`job_log`) with that experiment's events."""

    def __init__(self, store: Store) -> None:
        super().__init__(logging.INFO)
        self.store = store

    def emit(self, record: logging.LogRecord) -> None:
        experiment_id = getattr(record, "experiment_id", None)
        if experiment_id is None:
            return
        try:
            self.store.log(experiment_id, record.levelname, record.getMessage())
        except DatabaseUnavailable:
            pass  # the line is still in the worker's own output; a traceback per line would bury it
        except Exception:  # noqa: BLE001 (logging must never take the job down)
            self.handleError(record)
