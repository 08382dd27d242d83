"""Configuration, read from `TRAINLAB_*` environment variables (and a `.env` file if present)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINLAB_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///var/trainlab.db"
    # Where user-provided datasets and caches live; the bundled datasets ship inside the package.
    data_dir: Path = Path("var/data")
    # Whether the server may fetch datasets ("download": true) and ImageNet weights from the internet.
    allow_downloads: bool = False
    max_upload_bytes: Annotated[int, Field(ge=1)] = 10 * 1024 * 1024
    # Uploaded datasets (POST /datasets): the archive itself, and what it may unpack to.
    max_dataset_bytes: Annotated[int, Field(ge=1)] = 100 * 1024 * 1024
    max_dataset_unpacked_bytes: Annotated[int, Field(ge=1)] = 500 * 1024 * 1024
    max_dataset_files: Annotated[int, Field(ge=1)] = 100_000
    max_compression_ratio: Annotated[float, Field(gt=1)] = 100.0
    max_table_cells: Annotated[int, Field(ge=1)] = 5_000_000  # CSV uploads: rows x columns
    # Decoded pixels per uploaded image; far below Pillow's own bomb limit (~89M).
    max_image_pixels: Annotated[int, Field(ge=1)] = 4096 * 4096
    # Trained models kept in memory by the API for /predict.
    predictor_cache_size: Annotated[int, Field(ge=1)] = 8
    # Torch threads of the API process. /predict's inference thread shares the cores with the event loop: with 2
    # the median fell by 0.6 ms but p99 rose to 2-2.5x the median; 1 kept it at 1.4-1.5x (bench.predict_latency).
    inference_threads: Annotated[int, Field(ge=1)] = 1
    # TensorBoard event files, one folder per experiment (`tensorboard --logdir var/runs`). The API serves them
    # as GET /experiments/{id}/tensorboard.zip when it shares this folder with the workers (one machine).
    tensorboard: bool = True
    runs_dir: Path = Path("var/runs")
    # How often a worker reports progress inside an epoch (an SSE `progress` event).
    progress_interval_s: Annotated[float, Field(gt=0)] = 1.0
    # How often an open event stream (GET /experiments/{id}/events) looks for new events.
    events_poll_s: Annotated[float, Field(gt=0)] = 0.5
    # How often an idle worker looks for a queued job.
    poll_interval_s: Annotated[float, Field(gt=0)] = 1.0
    # Leases: a running job's worker renews its lease every `heartbeat_s`; a job whose lease is older than
    # `lease_s` is taken over by another worker, resumed from its last checkpoint, up to `max_attempts` workers lost.
    heartbeat_s: Annotated[float, Field(gt=0)] = 10.0
    lease_s: Annotated[float, Field(gt=0)] = 30.0
    max_attempts: Annotated[int, Field(ge=1)] = 3
    # Budgets a spec must fit before it is queued.
    max_parameters: Annotated[int, Field(ge=1)] = 50_000_000
    max_train_samples: Annotated[int, Field(ge=1)] = 50_000_000  # epochs x training-set size
    # The example requests the dashboard's Submit page starts from (GET /examples): the repository's examples/.
    examples_dir: Path = Path(__file__).resolve().parents[1] / "examples"

    def run_dir(self, experiment_id: int) -> Path:
        """Where the experiment's TensorBoard files are written (by its worker) and read (by the API)."""
        return self.runs_dir / str(experiment_id)
