"""`python -m worker`: claim and train queued experiments until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from service.settings import Settings
from service.store import DatabaseUnavailable, SchemaOutOfDate, Store
from worker.allocator import keep_freed_memory
from worker.checkpoints import UnsafeEnvironment, refuse_unsafe_loading
from worker.loop import Worker


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit when the queue is empty instead of polling")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the schema check is not news

    keep_freed_memory()  # before the first training step: see worker/allocator.py
    # Deterministic cuBLAS (spec.deterministic) needs this before the first CUDA call.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    settings = Settings()
    # A worker stopped inside a transaction (SIGSTOP, a suspended VM) holds its job's row lock, which other
    # workers' claims skip: on PostgreSQL the server ends that transaction once it has idled for a lease.
    store = Store(settings.database_url, idle_transaction_s=settings.lease_s)
    try:
        refuse_unsafe_loading()
        store.check_schema()
    except (SchemaOutOfDate, UnsafeEnvironment, DatabaseUnavailable) as exc:
        logging.getLogger("trainlab.worker").error("refusing to start: %s", getattr(exc, "reason", exc))
        store.close()
        return 2

    worker = Worker(store, settings)

    def request_stop(signum: int, _frame) -> None:
        logging.getLogger("trainlab.worker").info("received %s; stopping", signal.Signals(signum).name)
        worker.stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # torch.optim imports torch._dynamo the first time an optimizer is built (1.1 s here): import it now, before
    # the first poll, rather than inside the first job a user waits on. After the handlers: a stop meanwhile is
    # honoured before any claim.
    import torch._dynamo  # noqa: F401

    try:
        worker.run(once=args.once)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
