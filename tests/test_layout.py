"""The house rules, checked: the engine depends only on the contract, imports create nothing, and the
compose file wires migrate -> api/worker over one volume."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

ENGINE_MODULES = [
    "engine", "datasets", "models", "preprocess", "checkpoints", "inference", "augment", "evaluation", "previews",
    "objectives", "pretrained", "tensorboard", "model_views", "ink",
]  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_engine_imports_only_the_contract_from_service() -> None:
    for module in ENGINE_MODULES:
        from_service = {m for m in imported_modules(REPO / "worker" / f"{module}.py") if m.split(".")[0] == "service"}
        assert from_service <= {"service.specs"}, (module, from_service)


def test_importing_everything_creates_nothing(tmp_path: Path) -> None:
    code = (
        "import service.app, service.store, service.__main__, worker.loop, worker.__main__, worker.inference, worker.model_views;"
        "import os; print(sorted(os.listdir('.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.stdout.strip() == "[]", result.stdout


def test_the_command_line_and_sdk_import_neither_torch_nor_sqlalchemy() -> None:
    """They speak HTTP only: `trainlab` starts in a fraction of torch's import time, and needs no engine."""
    code = "import sys, service.cli, service.client; print([m for m in ('torch', 'sqlalchemy') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_compose_runs_postgres_then_migrate_then_api_then_gpu_workers() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "api", "worker"} <= set(services)
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:") and "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"][-2:] == ["upgrade", "head"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        url = services[name]["environment"]["TRAINLAB_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "uvicorn" in services["api"]["command"] and "service.app:create_app" in services["api"]["command"]
    assert services["worker"]["command"][-2:] == ["-m", "worker"]
    deploy = services["worker"]["deploy"]
    assert deploy["replicas"] >= 2
    [device] = deploy["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert named <= set(compose["volumes"])


def test_no_generated_file_is_tracked() -> None:
    """Tensor caches, checkpoints and databases are made at run time; a commit of one is a mistake."""
    if not (REPO / ".git").exists():
        return  # not a git checkout: nothing is tracked
    tracked = subprocess.run(
        ["git", "ls-files", "--", "*.pt", "*.pth", "*.ckpt", "*.db", "*.sqlite"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert tracked == []
