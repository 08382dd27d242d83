"""Keeping a claimed job: a background thread renews its lease while it trains and notices when it is lost."""

from __future__ import annotations

import logging
import threading
import time

from service.store import ClaimedJob, DatabaseUnavailable, LeaseLost, Store
from worker.logs import job_log

log = logging.getLogger("trainlab.worker")

# How often the job's status is read between heartbeats, so that a cancel is seen within about a second.
CHECK_S = 1.0


class Lease:
    """Renews `job`'s lease every `heartbeat_s` while the job trains, and sets `lost` as soon as the job is no
    longer this worker's (cancelled, or taken over after a lease expired). Use as a context manager."""

    def __init__(self, store: Store, job: ClaimedJob, *, heartbeat_s: float, lease_s: float) -> None:
        self.store, self.job = store, job
        self.heartbeat_s, self.lease_s = heartbeat_s, lease_s
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        last_beat = time.monotonic()
        unreachable_since: float | None = None  # while the database cannot be reached: since when
        while not self._done.wait(min(CHECK_S, self.heartbeat_s)):
            try:
                if time.monotonic() - last_beat >= self.heartbeat_s:
                    self.store.heartbeat(self.job, lease_s=self.lease_s)
                    last_beat = time.monotonic()
                elif not self.store.owns(self.job):
                    raise LeaseLost(f"experiment {self.job.id} attempt {self.job.attempt} is no longer ours")
            except LeaseLost as exc:
                job_log(self.job.id).warning("experiment %d: %s; stopping it", self.job.id, exc)
                self.lost.set()
                return
            except DatabaseUnavailable as exc:  # e.g. its server restarting: keep trying, the lease has slack
                if unreachable_since is None:  # one line per outage, not one a second
                    unreachable_since = time.monotonic()
                    log.warning("experiment %d: the lease cannot be renewed (%s); trying every %.1fs",
                                self.job.id, exc.reason, min(CHECK_S, self.heartbeat_s))  # fmt: skip
                continue
            if unreachable_since is not None:
                log.info("experiment %d: the database answers again, after %.1fs", self.job.id,
                         time.monotonic() - unreachable_since)  # fmt: skip
                unreachable_since = None
