"""The Python SDK: `Client` speaks the HTTP API with httpx and returns the API's own pydantic models.

from service.client import Client
with Client("http://127.0.0.1:8000") as trainlab:
    experiment = trainlab.submit({"dataset": {"name": "mnist-10k"}, "model": {"kind": "cnn"}, "epochs": 2})
    for event in trainlab.stream(experiment.id):
        print(event.kind, event.data)
    print(trainlab.predict(experiment.id, "examples/images/mnist-val-7.png").class_name)
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.compare import Comparison
from service.schemas import (
    Confusion,
    ExperimentList,
    ExperimentPublic,
    Finding,
    Gradients,
    ListOrder,
    Prediction,
    RowPredictions,
    Status,
    SweepSummary,
)
from service.specs import EpochMetrics, ExperimentSpec
from service.sweeps import SweepCreate, SweepPublic

FINISHED = {Status.succeeded, Status.failed, Status.cancelled}
POLL_S = 0.5  # `wait`'s polling interval
RETRY_503_S = 1.0  # after a 503 (the server's database unreachable for a while), ask again this soon


class ClientError(Exception):
    """Something the caller can act on; `str()` says what."""


class ServerUnavailable(ClientError):
    """No trainlab server answers at the URL."""


class APIError(ClientError):
    """The server answered with an error: `status_code` and its `detail` (for 422s, the offending fields)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code, self.detail = status_code, detail
        super().__init__(f"{status_code}: {_describe(detail)}")


def _describe(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI's validation errors: where, and what
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file as the server stores it: `worker.inference.Predictor(data)` serves it."""

    epoch: int
    sha256: str
    data: bytes


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: `status`, `epoch`, `progress`, `log` (with `id`), or `queue` (without)."""

    kind: str
    data: dict
    id: int | None = None


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"no trainlab server at {self.base_url} ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise APIError(response.status_code, detail)
        return response

    # -- experiments -------------------------------------------------------------------------------------

    def submit(self, spec: ExperimentSpec | dict, *, idempotency_key: str | None = None) -> ExperimentPublic:
        """Queue an experiment (defaults filled in by the server). Safe to retry with an idempotency key."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._request("POST", "/experiments", json=_body(spec), headers=headers)
        return ExperimentPublic.model_validate(response.json())

    def validate(self, spec: ExperimentSpec | dict) -> dict:
        """Dry run: the filled-in spec, layer shapes, parameters, memory estimate, warnings. Nothing queued."""
        return self._request("POST", "/experiments:validate", json=_body(spec)).json()

    def get(self, experiment_id: int) -> ExperimentPublic:
        return ExperimentPublic.model_validate(self._request("GET", f"/experiments/{experiment_id}").json())

    def list(
        self,
        *,
        status: Status | str | None = None,
        dataset: str | None = None,
        model: str | None = None,
        name: str | None = None,
        sweep: int | None = None,
        tags: Sequence[str] = (),
        sort: ListOrder = "newest",
        limit: int = 50,
        offset: int = 0,
    ) -> ExperimentList:
        """Newest first, or as `sort` says (`val_accuracy`: the best epoch's, highest first; `val_loss`: lowest
        first); the filters combine (`name`: part of the name, in any case; `model`: a model kind; `tags`: every
        one of them)."""
        filters = {"status": status, "dataset": dataset, "model": model, "name": name, "sweep": sweep}
        params = {"limit": limit, "offset": offset, "tag": list(tags), "sort": sort}
        params |= {k: str(v) for k, v in filters.items() if v is not None}
        return ExperimentList.model_validate(self._request("GET", "/experiments", params=params).json())

    def update(
        self,
        experiment_id: int,
        *,
        name: str | None = None,
        notes: str | None = None,
        tags: Sequence[str] | None = None,
        add_tags: Sequence[str] | None = None,
        remove_tags: Sequence[str] | None = None,
    ) -> ExperimentPublic:
        """Rename an experiment, write its notes, replace its tags, or add and remove some (in one write: another
        edit at the same time is not lost); what is left None is kept."""
        fields = {"name": name, "notes": notes, "tags": tags, "add_tags": add_tags, "remove_tags": remove_tags}
        body = {k: v if isinstance(v, str) else list(v) for k, v in fields.items() if v is not None}
        return ExperimentPublic.model_validate(
            self._request("PATCH", f"/experiments/{experiment_id}", json=body).json()
        )

    def metrics(self, experiment_id: int, *, since_epoch: int = 0) -> list[EpochMetrics]:
        rows = self._request("GET", f"/experiments/{experiment_id}/metrics", params={"since_epoch": since_epoch})
        return [EpochMetrics.model_validate(row) for row in rows.json()]

    def diagnosis(self, experiment_id: int) -> list[Finding]:
        """What the curves so far show, in words, most fundamental first (steps too large, overfitting, not
        learning), each with what to try; [] where nothing stands out."""
        findings = self._request("GET", f"/experiments/{experiment_id}/diagnosis").json()
        return [Finding.model_validate(finding) for finding in findings]

    def compare(self, experiment_ids: Sequence[int]) -> Comparison:
        """Where the specs differ, each epoch's metrics side by side, each best epoch against the first's."""
        ids = ",".join(str(i) for i in experiment_ids)
        return Comparison.model_validate(self._request("GET", "/experiments/compare", params={"ids": ids}).json())

    def confusion(self, experiment_id: int, *, epoch: int | None = None) -> Confusion:
        """A classifier's confusion matrix and per-class accuracy on the validation split (best epoch, or `epoch`)."""
        params = {} if epoch is None else {"epoch": epoch}
        response = self._request("GET", f"/experiments/{experiment_id}/confusion", params=params)
        return Confusion.model_validate(response.json())

    def gradients(self, experiment_id: int, *, epoch: int | None = None) -> Gradients:
        """The training loss's gradient at each layer with a weight (root mean square, beside the weight's), over a
        sample of training examples, at the best epoch or `epoch`: vanishing gradients at a glance."""
        params = {} if epoch is None else {"epoch": epoch}
        response = self._request("GET", f"/experiments/{experiment_id}/gradients", params=params)
        return Gradients.model_validate(response.json())

    def rerun(self, experiment_id: int) -> ExperimentPublic:
        """Queue the identical spec again, as a new experiment."""
        return ExperimentPublic.model_validate(self._request("POST", f"/experiments/{experiment_id}/rerun").json())

    def cancel(self, experiment_id: int) -> ExperimentPublic:
        return ExperimentPublic.model_validate(self._request("POST", f"/experiments/{experiment_id}/cancel").json())

    def delete(self, experiment_id: int) -> None:
        """A finished experiment and all that was recorded of it (APIError 409 while it is queued or running)."""
        self._request("DELETE", f"/experiments/{experiment_id}")

    def logs(self, experiment_id: int) -> list[dict]:
        return self._request("GET", f"/experiments/{experiment_id}/logs").json()

    def curves(self, experiment_id: int) -> bytes:
        """The loss and metric curves as a PNG."""
        return self._request("GET", f"/experiments/{experiment_id}/curves.png").content

    def weights(self, experiment_id: int, *, epoch: int | None = None) -> bytes:
        """A PNG of the weights of the model's first layer that sees the input: its filters or units as images, or
        (a table's model) each unit's weight on each feature."""
        params = {} if epoch is None else {"epoch": epoch}
        return self._request("GET", f"/experiments/{experiment_id}/weights.png", params=params).content

    def mistakes(
        self, experiment_id: int, *, true: int | None = None, predicted: int | None = None, epoch: int | None = None
    ) -> bytes:
        """A PNG of the validation images most confidently misclassified: all, or those of class `true` taken for
        class `predicted` (either alone: a row or a column of the confusion matrix)."""
        params = {k: v for k, v in (("true", true), ("predicted", predicted), ("epoch", epoch)) if v is not None}
        return self._request("GET", f"/experiments/{experiment_id}/misclassified.png", params=params).content

    def checkpoint(self, experiment_id: int, *, epoch: int | None = None) -> Checkpoint:
        """The best epoch's checkpoint (or that of `epoch`)."""
        params = {} if epoch is None else {"epoch": epoch}
        response = self._request("GET", f"/experiments/{experiment_id}/checkpoint.pt", params=params)
        headers = response.headers
        return Checkpoint(int(headers["x-trainlab-epoch"]), headers["etag"].strip('"'), response.content)

    def model_script(self, experiment_id: int, *, epoch: int | None = None) -> str:
        """The best epoch's (or `epoch`'s) model as a PyTorch script that loads its checkpoint file."""
        params = {} if epoch is None else {"epoch": epoch}
        return self._request("GET", f"/experiments/{experiment_id}/model.py", params=params).text

    def predict(self, experiment_id: int, image: str | Path | bytes, *, top_k: int = 5) -> Prediction:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        # The image as the body, not a multipart form: less to encode and parse; the server reads the format
        # from the bytes.
        response = self._request(
            "POST",
            f"/experiments/{experiment_id}/predict",
            params={"top_k": top_k},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return Prediction.model_validate(response.json())

    def activations(self, experiment_id: int, image: str | Path | bytes, *, epoch: int | None = None) -> bytes:
        """A PNG of what each layer of the model makes of the image, a row a layer."""
        return self._image_figure(experiment_id, "activations.png", image, epoch=epoch)

    def saliency(
        self, experiment_id: int, image: str | Path | bytes, *, label: int | None = None, epoch: int | None = None
    ) -> bytes:
        """A PNG of how much each pixel of the image sways the score of class `label` (default: the predicted)."""
        return self._image_figure(experiment_id, "saliency.png", image, epoch=epoch, label=label)

    def _image_figure(self, experiment_id: int, figure: str, image: str | Path | bytes, **params: int | None) -> bytes:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return self._request(
            "POST",
            f"/experiments/{experiment_id}/{figure}",
            params={k: v for k, v in params.items() if v is not None},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        ).content

    def predict_rows(self, experiment_id: int, rows: list[list[float]], *, top_k: int = 1) -> RowPredictions:
        """A model trained on a table: each row's predicted value (regression) or classes, most probable first.
        A row holds the dataset's features in its order (`dataset(name)["feature_names"]`), without the target."""
        response = self._request(
            "POST", f"/experiments/{experiment_id}/predict/rows", params={"top_k": top_k}, json={"rows": rows}
        )
        return RowPredictions.model_validate(response.json())

    def datasets(self) -> list[dict]:
        return self._request("GET", "/datasets").json()

    def dataset(self, name: str) -> dict:
        """One dataset: classes, counts per split and class (or rows), input shape."""
        return self._request("GET", f"/datasets/{name}").json()

    def upload_dataset(
        self,
        name: str,
        source: str | Path,
        *,
        target: str | None = None,
        task: str | None = None,
        image_size: int | None = None,
    ) -> dict:
        """Upload a folder or .zip in ImageFolder layout (`train/<class>/*.png`, optional `val/<class>/`), or a .csv
        table (`target`: the column to predict; `task`: regression, the server's default, or classification)."""
        path = Path(source)
        filename, data = (f"{name}.zip", zip_folder(path)) if path.is_dir() else (path.name, path.read_bytes())
        fields = {"name": name, "target": target, "task": task, "image_size": image_size}
        form = {key: str(value) for key, value in fields.items() if value is not None}
        return self._request("POST", "/datasets", data=form, files={"file": (filename, data)}).json()

    # -- sweeps --------------------------------------------------------------------------------------------

    def submit_sweep(self, request: SweepCreate | dict, *, idempotency_key: str | None = None) -> SweepPublic:
        """Queue one experiment per trial of a grid and/or random search over spec paths (all or none)."""
        body = request.model_dump(mode="json") if isinstance(request, SweepCreate) else request
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return SweepPublic.model_validate(self._request("POST", "/sweeps", json=body, headers=headers).json())

    def sweep(self, sweep_id: int) -> SweepPublic:
        """The sweep's trials, best first."""
        return SweepPublic.model_validate(self._request("GET", f"/sweeps/{sweep_id}").json())

    def sweeps(self, *, limit: int = 50, offset: int = 0) -> list[SweepSummary]:
        response = self._request("GET", "/sweeps", params={"limit": limit, "offset": offset})
        return [SweepSummary.model_validate(row) for row in response.json()]

    def delete_sweep(self, sweep_id: int) -> None:
        """The sweep and all its trials (APIError 409 while a trial is queued or running)."""
        self._request("DELETE", f"/sweeps/{sweep_id}")

    # -- watching ------------------------------------------------------------------------------------------

    def stream(self, experiment_id: int, *, last_event_id: int | None = None, retries: int = 5) -> Iterator[Event]:
        """The experiment's events, from its history, until it finishes. A dropped connection is resumed where
        it broke (Last-Event-ID), up to `retries` times in a row; 503s (the server's database unreachable for a
        while) are waited through."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            try:
                with self._http.stream(
                    "GET", f"/experiments/{experiment_id}/events", headers=headers, timeout=httpx.Timeout(30, read=None)
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise APIError(response.status_code, response.json().get("detail"))
                    for event in _parse_sse(response.iter_lines()):
                        failures = 0
                        if event.id is not None:
                            last_event_id = event.id
                        yield event
                return  # the server ends the stream once the experiment has finished
            except APIError as exc:
                if exc.status_code != 503:
                    raise
                time.sleep(RETRY_503_S)  # the server answered: not a broken connection, so not counted
            except httpx.TransportError as exc:
                failures += 1
                if failures > retries:
                    raise ServerUnavailable(f"the event stream of experiment {experiment_id} broke: {exc}") from None
                time.sleep(min(2.0**failures * 0.1, 5.0))

    def wait(self, experiment_id: int, *, timeout: float | None = None) -> ExperimentPublic:
        """Block until the experiment has finished (succeeded, failed or cancelled); its final state. Waits through
        503s (the server's database briefly unreachable)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = "unknown"
        while True:
            try:
                experiment = self.get(experiment_id)
            except APIError as exc:
                if exc.status_code != 503:
                    raise
            else:
                if experiment.status in FINISHED:
                    return experiment
                status = experiment.status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"experiment {experiment_id} is still {status} after {timeout}s")
            time.sleep(POLL_S)


def zip_folder(folder: Path) -> bytes:
    """The folder's train/ and val/ trees as a zip, named relative to it (`folder/train/cat/1.png` is
    `train/cat/1.png`); what else the folder holds (a README) is no part of the dataset. Stored, not deflated: the
    images are compressed already."""
    if not (folder / "train").is_dir():
        raise ClientError(f"{folder} has no train/ folder: the layout is train/<class>/*.png, optionally val/<class>/")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for split in ("train", "val"):
            for path in sorted((folder / split).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _body(spec: ExperimentSpec | dict) -> dict:
    return spec.model_dump(mode="json") if isinstance(spec, ExperimentSpec) else spec


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events (the subset the API sends: id, event, one data line; comments ignored)."""
    kind, data, event_id = "message", None, None
    for line in lines:
        if not line:
            if data is not None:
                yield Event(kind, json.loads(data), event_id)
            kind, data, event_id = "message", None, None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data = value if data is None else f"{data}\n{value}"
            elif field == "id":
                event_id = int(value)
