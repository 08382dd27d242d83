"""One load-generating client of bench.predict_latency, in a process of its own.

    python -m bench.http_client URL PATH PNG_DIR START_AT COUNT [multipart|body]

Connects and sends one request to warm up a second before the wall-clock time START_AT (shared by every client,
so they start together), waits for START_AT, then sends COUNT requests back to back: a POST of the PNGs under
PNG_DIR in turn (as a multipart form's file, or as the body itself), or a GET of PATH when PNG_DIR is "-". Prints
{"latencies": [...seconds], "finished_at": wall-clock time} as JSON. Imports httpx only, so that sixteen of these
start in seconds and never wait on one another's GIL.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def timed(f: Callable[..., object], *args: object) -> float:
    """Seconds that `f(*args)` took."""
    t = time.perf_counter()
    f(*args)
    return time.perf_counter() - t


def request(client: httpx.Client, path: str, pngs: list[bytes] | None, i: int, as_body: bool = False) -> None:
    """The benchmark's i-th request: a POST of the i-th PNG (in turn) to `path`, as a multipart form's file or as
    the body itself; or a GET of `path` without PNGs."""
    if pngs and as_body:
        client.post(path, content=pngs[i % len(pngs)], headers={"Content-Type": "image/png"}).raise_for_status()
    elif pngs:
        client.post(path, files={"file": ("x.png", pngs[i % len(pngs)], "image/png")}).raise_for_status()
    else:
        client.get(path).raise_for_status()


def main() -> None:
    url, path, png_dir, start_at, count = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    as_body = sys.argv[6:] == ["body"]
    pngs = [p.read_bytes() for p in sorted(Path(png_dir).glob("*.png"))] if png_dir != "-" else None
    with httpx.Client(base_url=url, timeout=30) as client:
        # Not as soon as this process is up: uvicorn closes a connection idle for 5 s (its keep-alive timeout), and
        # a request sent just as it closes fails (a reset, or no answer: 1 of 240 clients idle 4.97-5.03 s). The
        # likely cause of one of sixteen clients failing here ("connection reset by peer") after a 4-6 s wait.
        time.sleep(max(0.0, start_at - 1.0 - time.time()))
        request(client, path, pngs, 0, as_body)
        time.sleep(max(0.0, start_at - time.time()))
        latencies = [timed(request, client, path, pngs, i, as_body) for i in range(count)]
    json.dump({"latencies": latencies, "finished_at": time.time()}, sys.stdout)


if __name__ == "__main__":
    main()
