"""Every bad input gets a clear 4xx naming the field or the reason, and nothing already stored changes."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.conftest import Deployment, deployment, tiny_spec, train_in_process

BAD_SPECS = [
    ({**tiny_spec(), "colour": "blue"}, ["body", "colour"], "extra_forbidden"),
    (tiny_spec(optimizer={"kind": "sgd", "lr": -0.1}), ["body", "optimizer", "sgd", "lr"], "greater_than"),
    (tiny_spec(optimizer={"kind": "adam", "lr": 11}), ["body", "optimizer", "adam", "lr"], "less_than_equal"),
    (tiny_spec(epochs=0), ["body", "epochs"], "greater_than_equal"),
    (tiny_spec(epochs=1001), ["body", "epochs"], "less_than_equal"),
    (tiny_spec(batch_size=0), ["body", "batch_size"], "greater_than_equal"),
    (tiny_spec(model={"kind": "transformer"}), ["body", "model"], "union_tag_invalid"),
    (tiny_spec(model={"kind": "cnn", "channels": []}), ["body", "model", "cnn", "channels"], "too_short"),
    (tiny_spec(dataset={"name": "digits", "val_fraction": 1.0}), ["body", "dataset", "val_fraction"], "less_than"),
    (tiny_spec(device="tpu"), ["body", "device"], "literal_error"),
    ({"model": {"kind": "mlp"}}, ["body", "dataset"], "missing"),
    (
        tiny_spec(optimizer={"kind": "sgd", "momentum": 0, "nesterov": True}),
        ["body", "optimizer", "sgd"],
        "value_error",
    ),
]


def png_bytes(size: tuple[int, int] = (28, 28)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 0).save(buffer, format="PNG")
    return buffer.getvalue()


def snapshot(client) -> list[dict]:
    """Everything the API shows of the stored experiments, to prove a bad request changed none of it."""
    items = client.get("/experiments", params={"limit": 500}).json()["items"]
    return [(item, client.get(f"/experiments/{item['id']}/metrics").json()) for item in items]


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_db_url: str) -> Iterator[Deployment]:
    """One API (no worker) holding three queued experiments, shared by the tests below."""
    with deployment(tmp_path_factory.mktemp("errors"), module_db_url) as dep, httpx.Client(base_url=dep.url) as client:
        for i in range(3):
            assert client.post("/experiments", json=tiny_spec(name=f"kept-{i}")).status_code == 201
        yield dep


@pytest.fixture
def seeded(server: Deployment, client_for):
    client = client_for(server)
    before = snapshot(client)
    yield server, client
    assert snapshot(client) == before


@pytest.mark.parametrize(("spec", "loc", "error_type"), BAD_SPECS)
def test_bad_spec_is_422_naming_the_field(seeded, spec, loc, error_type) -> None:
    _, client = seeded
    response = client.post("/experiments", json=spec)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and e["type"] == error_type for e in errors), errors


def test_unknown_dataset_lists_the_known_ones(seeded) -> None:
    _, client = seeded
    response = client.post("/experiments", json=tiny_spec(dataset={"name": "imagenet"}))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "dataset", "name"]
    assert "imagenet" in error["msg"] and "digits" in error["msg"] and "mnist-10k" in error["msg"]


def test_malformed_bodies(seeded) -> None:
    _, client = seeded
    not_json = client.post("/experiments", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    assert client.post("/experiments", json=[1, 2]).status_code == 422
    too_big = client.post("/experiments", content=b"x" * (11 * 1024 * 1024))
    assert too_big.status_code == 413 and "exceeds" in too_big.json()["detail"]


def test_unknown_ids_are_404(seeded) -> None:
    _, client = seeded
    for path in ("/experiments/999", "/experiments/999/metrics", "/experiments/999/curves.png"):
        response = client.get(path)
        assert response.status_code == 404 and response.json() == {"detail": "experiment 999 not found"}
    response = client.post("/experiments/999/predict", files={"file": ("a.png", png_bytes(), "image/png")})
    assert response.status_code == 404
    for bad_id in ("abc", "0", "99999999999999999999"):
        assert client.get(f"/experiments/{bad_id}").status_code == 422


def test_query_bounds(seeded) -> None:
    _, client = seeded
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"status": "sleeping"}):
        assert client.get("/experiments", params=params).status_code == 422, params
    assert client.get("/experiments/1/metrics", params={"since_epoch": -1}).status_code == 422


def test_list_is_newest_first_with_paging_and_filter(seeded) -> None:
    _, client = seeded
    page = client.get("/experiments", params={"limit": 2}).json()
    assert [e["name"] for e in page["items"]] == ["kept-2", "kept-1"] and page["total"] == 3
    rest = client.get("/experiments", params={"limit": 2, "offset": 2}).json()
    assert [e["name"] for e in rest["items"]] == ["kept-0"]
    assert client.get("/experiments", params={"status": "running"}).json() == {
        "items": [], "total": 0, "limit": 50, "offset": 0
    }  # fmt: skip


def test_predict_before_any_checkpoint_is_409(seeded) -> None:
    _, client = seeded
    response = client.post("/experiments/1/predict", files={"file": ("a.png", png_bytes(), "image/png")})
    assert response.status_code == 409 and "no checkpoint yet" in response.json()["detail"]


def test_bad_uploads(api_only: Deployment, client_for) -> None:
    client = client_for(api_only)
    assert client.post("/experiments", json=tiny_spec(epochs=1)).status_code == 201
    train_in_process(api_only)
    before = snapshot(client)

    def predict(content: bytes, name: str = "x.png", mime: str = "image/png"):
        return client.post("/experiments/1/predict", files={"file": (name, content, mime)})

    assert predict(png_bytes((8, 8))).status_code == 200
    text = predict(b"this is not an image\n" * 10, "notes.txt", "text/plain")
    assert text.status_code == 415 and "PNG or JPEG" in text.json()["detail"]
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    assert predict(gif.getvalue(), "x.gif", "image/gif").status_code == 415
    empty = predict(b"")
    assert empty.status_code == 422 and empty.json()["detail"][0]["msg"] == "the uploaded file is empty"
    truncated = predict(png_bytes((64, 64))[:60])
    assert truncated.status_code in (415, 422), truncated.text
    oversized = predict(b"\x89PNG" + b"\0" * (10 * 1024 * 1024 + 1))
    assert oversized.status_code == 413
    huge_canvas = predict(png_bytes((5000, 5000)))
    assert huge_canvas.status_code == 413 and "pixels" in huge_canvas.json()["detail"]
    missing_field = client.post("/experiments/1/predict", files={"image": ("x.png", png_bytes(), "image/png")})
    assert missing_field.status_code == 422 and missing_field.json()["detail"][0]["loc"] == ["body", "file"]
    no_such_epoch = client.post("/experiments/1/predict", params={"epoch": 7}, files={"file": ("x.png", png_bytes())})
    assert no_such_epoch.status_code == 404 and "epoch 7" in no_such_epoch.json()["detail"]
    assert client.get("/healthz").status_code == 200
    assert snapshot(client) == before
