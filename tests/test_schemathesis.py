"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis): whatever it sends,
no 5xx, and every answer is one the schema documents, in the documented shape."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import REPO, deployment, tiny_spec, train_in_process

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_fuzzing_the_api_finds_no_server_error(tmp_path: Path, db_url: str) -> None:
    with deployment(tmp_path, db_url) as dep:
        # Something to find: a trained and a queued experiment.
        with httpx.Client(base_url=dep.url, timeout=30) as client:
            assert client.post("/experiments", json=tiny_spec(epochs=1)).status_code == 201
            train_in_process(dep)
            assert client.post("/experiments", json=tiny_spec()).status_code == 201
        result = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{dep.url}/openapi.json", "--checks", CHECKS,
                "--phases", "examples,fuzzing", "--max-examples", "25", "--seed", "0", "--workers", "2",
                "--generation-database", "none", "--no-color",
                # The event stream of an unfinished experiment stays open by design (tests/test_watch.py).
                "--exclude-path-regex", "/events$",
            ],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        summary = result.stdout[-3000:]
        assert result.returncode == 0, summary + dep.logs("api")[-3000:]
        generated = re.search(r"(\d+) generated, (\d+) passed", summary)
        assert generated and generated[1] == generated[2] and int(generated[1]) >= 300, summary
        assert "Server error" not in result.stdout and "Traceback" not in dep.logs("api")
        print(f"schemathesis: {generated[0]}")
