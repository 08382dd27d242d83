"""Several real worker processes on one SQLite queue, and the one-machine launcher."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import REPO, deployment, free_port, make_env, tiny_spec, wait_for_status


def test_two_workers_run_every_job_exactly_once(tmp_path: Path, db_url: str, client_for) -> None:
    with deployment(tmp_path, db_url, workers=2) as dep:
        client = client_for(dep)
        ids = [client.post("/experiments", json=tiny_spec(name=f"job-{i}")).json()["id"] for i in range(6)]
        finished = [wait_for_status(client, i, {"succeeded", "failed"}) for i in ids]
        assert [e["status"] for e in finished] == ["succeeded"] * 6, dep.logs("worker")
        assert all(e["attempt"] == 1 for e in finished)
        for experiment_id in ids:
            assert [m["epoch"] for m in client.get(f"/experiments/{experiment_id}/metrics").json()] == [1, 2]
        claims = Counter(int(i) for i in re.findall(r"experiment (\d+) attempt \d+: claimed", dep.logs("worker")))
        assert claims == Counter(ids)  # claimed once each, across both workers' logs
        assert {e["worker_id"] for e in finished} <= {
            line.split("worker ")[1].split(" ready")[0] for line in dep.logs("worker").splitlines() if " ready " in line
        }


def test_launcher_starts_api_and_worker_and_stops_both_on_ctrl_c(tmp_path: Path) -> None:
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'run.db'}")
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO, env=env, check=True)
    port = free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as client:
            experiment_id = client.post("/experiments", json=tiny_spec()).json()["id"]
            assert wait_for_status(client, experiment_id, {"succeeded", "failed"})["status"] == "succeeded"
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, output
    assert "received SIGINT; stopping" in output and "Finished server process" in output
