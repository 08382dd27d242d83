"""`python -m service`: the API and one worker together, for one machine (what `make run` starts).

Ctrl-C (or SIGTERM) reaches both; each stops cleanly (the worker hands a running job back to the queue).
If either exits on its own, the other is stopped too.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes to start (default 1)")
    args = parser.parse_args()

    api = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--host", args.host]
    commands = [[*api, "--port", str(args.port)]] + [[sys.executable, "-m", "worker"]] * args.workers
    # Own sessions: a terminal's Ctrl-C reaches only this process, which forwards it.
    children = [subprocess.Popen(command, start_new_session=True) for command in commands]

    signalled = False

    def stop(signum: int, _frame) -> None:
        # Once only: uvicorn treats a second signal as "quit now", skipping its clean shutdown.
        nonlocal signalled
        if signalled:
            return
        signalled = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
        stop(signal.SIGTERM, None)
        deadline = time.monotonic() + 60
        for child in children:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for child in children:
            child.kill()
    return 0 if all(child.returncode == 0 for child in children) else 1


if __name__ == "__main__":
    sys.exit(main())
