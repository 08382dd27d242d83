"""POST /experiments/{id}/predict over loopback vs the same work in-process (decode + preprocess + forward).

    python -m bench.predict_latency [--requests 400]

The model is examples/mnist-cnn.json trained for one epoch by a real worker; the images are 200 real 28x28 PNGs
from mnist-10k's validation split, sent as a multipart form's file (as a browser does) and, where marked, as the
body itself (as trainlab's client does). Concurrency 1 (one httpx client, sequential) and 16 (16 threads, each its
own httpx client), each after a warm-up; 16 clients both as 16 threads of this process and as 16 processes
(bench/http_client.py), whose tails differ by the threads' turns at one GIL; then GET /healthz the same two ways,
the floor of each harness. Prints p50 / p99 latency and requests/s, the bare in-process p50 (at the machine's
default torch threads, the target's reference, and at the API's own), the tail of one fixed piece of arithmetic
timed between the 1-client requests (what this machine gives work that never varies: the floor under p99/p50),
and the API's peak RSS with the model cached. The clients run on the same cores as the server.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

from bench.common import REPO, header, peak_rss_mb, percentile
from bench.http_client import request, timed
from bench.service import running_service
from service.images import decode_image
from service.settings import Settings
from service.specs import ExperimentSpec
from worker.datasets import load_dataset
from worker.inference import Predictor


def real_pngs(spec: ExperimentSpec, count: int) -> list[bytes]:
    images = load_dataset(spec.dataset, Path("var/data")).val.images[:count]
    out = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels[0].numpy(), mode="L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def in_process(predictor: Predictor, pngs: list[bytes], images: range, threads: int) -> list[float]:
    """The bare work of a request for each of `images`: decode + preprocess + forward, on `threads` torch threads."""
    torch.set_num_threads(threads)

    def work(png: bytes) -> None:
        predictor.predict(decode_image(png, max_pixels=4096 * 4096), top_k=5)

    return [timed(work, pngs[i % len(pngs)]) for i in images]


def arithmetic(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def fixed_work_size(target_s: float = 0.003) -> int:
    """How many `arithmetic` steps take about `target_s` on this machine now (a request's order of time)."""
    n = 10_000
    took = min(timed(arithmetic, n) for _ in range(5))
    return max(1, round(n * target_s / took))


def one_client(
    url: str, path: str, pngs: list[bytes], predictor: Predictor, n: int, api_threads: int, rounds: int = 4
) -> list[tuple[list[float], float]]:
    """The bare work in this process (at the machine's default torch threads, the target's reference, then at the
    API's), then one HTTP client sending each image as a multipart form's file and as the body in turn, then as
    many runs of one fixed piece of arithmetic (about 3 ms: the tail the machine itself gives work that never
    varies); `rounds` such blocks, so that all five share the machine's drift. The (latencies, requests/s) of
    each, in that order."""
    default_threads = torch.get_num_threads()
    steps = fixed_work_size()
    bare, bare_api, multipart, body, fixed = [], [], [], [], []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(50):  # warm-up: the API loads and caches the model
            request(client, path, pngs, i, as_body=i % 2 == 1)
        in_process(predictor, pngs, range(50), default_threads)
        for r in range(rounds):
            block = range(r * n // rounds, (r + 1) * n // rounds)
            bare += in_process(predictor, pngs, block, default_threads)
            bare_api += in_process(predictor, pngs, block, api_threads)
            for i in block:
                for as_body, latencies in ((False, multipart), (True, body)):
                    latencies.append(timed(request, client, path, pngs, i, as_body))
            fixed += [timed(arithmetic, steps) for _ in block]
    torch.set_num_threads(default_threads)
    return [(latencies, len(latencies) / sum(latencies)) for latencies in (bare, bare_api, multipart, body, fixed)]


def concurrent(url: str, path: str, pngs: list[bytes] | None, n: int, clients: int) -> tuple[list[float], float]:
    """`clients` users at once, each a thread with its own httpx.Client (connection), requests back to back; a GET
    of `path` when `pngs` is None. Threads rather than asyncio tasks sharing one httpx.AsyncClient: that client's
    connection pool made the load generator itself the bottleneck and the tail (encode/httpx#3215; here a bare
    GET /healthz at 16 tasks had p99 8-10x its p50, and the generator used more CPU per request than the API)."""
    latencies: list[float] = []

    def one_client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(k, n, clients):
                latencies.append(timed(request, client, path, pngs, i))  # list.append is atomic under the GIL

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, n / (time.perf_counter() - started)


def client_processes(
    url: str, path: str, png_dir: Path | None, n: int, clients: int, as_body: bool = False
) -> tuple[list[float], float]:
    """As `concurrent`, but each client a process of its own (bench/http_client.py), started together once every
    one has connected and sent a first request."""
    start_at = time.time() + 3.0 + 0.25 * clients  # time for each to import httpx and warm up
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.http_client", url, path, str(png_dir or "-"), str(start_at),
             str(len(range(k, n, clients))), "body" if as_body else "multipart"],
            cwd=REPO, stdout=subprocess.PIPE,
        )  # fmt: skip
        for k in range(clients)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    if failed := [process.returncode for process in processes if process.returncode]:
        raise RuntimeError(f"{len(failed)} client process(es) failed (exit {failed[0]}); their tracebacks are above")
    results = [json.loads(output) for output in outputs]
    latencies = [t for result in results for t in result["latencies"]]
    return latencies, n / (max(result["finished_at"] for result in results) - start_at)


def row(label: str, latencies: list[float], rate: float) -> None:
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    print(f"{label:<27} {p50:>8.2f} {p99:>8.2f} {p99 / p50:>8.2f} {rate:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    header(torch.device("cpu"), "predict_latency: POST /predict over loopback vs in-process")
    recipe = json.loads((REPO / "examples" / "mnist-cnn.json").read_text())
    spec = ExperimentSpec.model_validate({**recipe, "epochs": 1, "device": "cpu"})
    pngs = real_pngs(spec, 200)
    with tempfile.TemporaryDirectory() as root, running_service(Path(root), workers=1) as (url, store, processes):
        png_dir = Path(root) / "pngs"
        png_dir.mkdir()
        for i, png in enumerate(pngs):
            (png_dir / f"{i:03d}.png").write_bytes(png)
        with httpx.Client(base_url=url, timeout=30) as client:
            experiment_id = client.post("/experiments", json=spec.model_dump(mode="json")).json()["id"]
            while client.get(f"/experiments/{experiment_id}").json()["status"] in ("queued", "running"):
                time.sleep(0.2)
        processes[1].terminate()  # the worker is done; leave the cores to the API and the client
        processes[1].wait()
        path = f"/experiments/{experiment_id}/predict"

        predictor = Predictor(store.checkpoint_data(store.find_checkpoint(experiment_id)))
        api_threads = Settings().inference_threads  # TRAINLAB_INFERENCE_THREADS
        bare, bare_api, one, one_body, fixed = one_client(url, path, pngs, predictor, args.requests, api_threads)
        concurrent(url, path, pngs, 64, 16)
        sixteen = concurrent(url, path, pngs, args.requests, 16)
        floor = concurrent(url, "/healthz", None, args.requests, 16)
        sixteen_processes = client_processes(url, path, png_dir, args.requests, 16)
        sixteen_processes_body = client_processes(url, path, png_dir, args.requests, 16, as_body=True)
        floor_processes = client_processes(url, "/healthz", None, args.requests, 16)
        print(f"{'':<27} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>8} {'req/s':>9}")
        row("in-process (bare)", *bare)
        row(f"in-process, threads={api_threads}", *bare_api)
        row("HTTP, 1 client", *one)
        row("HTTP, 1 client, body", *one_body)
        row("fixed work (this VM's tail)", *fixed)
        row("HTTP, 16 client threads", *sixteen)
        row("GET /healthz, 16 threads", *floor)
        row("HTTP, 16 client processes", *sixteen_processes)
        row("HTTP, 16 processes, body", *sixteen_processes_body)
        row("GET /healthz, 16 processes", *floor_processes)
        over = [(percentile(latencies, 50) - percentile(bare[0], 50)) * 1000 for latencies, _ in (one, one_body)]
        print(f"# p50 over bare at 1 client: +{over[0]:.2f} ms (multipart), +{over[1]:.2f} ms (image as the body)")
        print(f"# API peak RSS with the model cached: {peak_rss_mb(processes[0].pid):.0f} MB")


if __name__ == "__main__":
    main()
