"""Every bad input gets a clear 4xx naming the field or the reason, and nothing already stored changes."""

from __future__ import annotations

import concurrent.futures
import io
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.specs import DatasetSpec
from tests.conftest import BACKENDS, REPO, Deployment, deployment, new_database, tiny_spec, train_in_process
from worker.datasets import load_dataset

BAD_SPECS = [
    ({**tiny_spec(), "colour": "blue"}, ["body", "colour"], "extra_forbidden"),
    (tiny_spec(optimizer={"kind": "sgd", "lr": -0.1}), ["body", "optimizer", "sgd", "lr"], "greater_than"),
    (tiny_spec(optimizer={"kind": "adam", "lr": 11}), ["body", "optimizer", "adam", "lr"], "less_than_equal"),
    (tiny_spec(epochs=0), ["body", "epochs"], "greater_than_equal"),
    (tiny_spec(epochs=1001), ["body", "epochs"], "less_than_equal"),
    (tiny_spec(batch_size=0), ["body", "batch_size"], "greater_than_equal"),
    (tiny_spec(model={"kind": "transformer"}), ["body", "model"], "union_tag_invalid"),
    (tiny_spec(model={"kind": "cnn", "channels": []}), ["body", "model", "cnn", "channels"], "too_short"),
    (tiny_spec(dataset={"name": "digits", "val_fraction": 0.95}), ["body", "dataset", "val_fraction"], "less_than_equal"),
    (tiny_spec(device="tpu"), ["body", "device"], "literal_error"),
    (
        tiny_spec(model={"kind": "mlp", "pretrained": {"experiment": 2**31}}),
        ["body", "model", "mlp", "pretrained", "FromExperiment", "experiment"],
        "less_than_equal",
    ),
    ({"model": {"kind": "mlp"}}, ["body", "dataset"], "missing"),
    (
        tiny_spec(optimizer={"kind": "sgd", "momentum": 0, "nesterov": True}),
        ["body", "optimizer", "sgd"],
        "nesterov_without_momentum",
    ),
    # Checks across fields name the field that does not fit the task (the whole body, before).
    (tiny_spec(loss={"kind": "huber"}), ["body", "loss"], "task_mismatch"),
    (tiny_spec(early_stopping={"monitor": "val_r2"}), ["body", "early_stopping"], "task_mismatch"),
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
    root = tmp_path_factory.mktemp("errors")
    with (
        deployment(root, module_db_url, TRAINLAB_MAX_TRAIN_SAMPLES="1000000") as dep,
        httpx.Client(base_url=dep.url, timeout=30) as client,
    ):
        for i in range(3):
            assert client.post("/experiments", json=tiny_spec(name=f"kept-{i}")).status_code == 201
        yield dep


@pytest.fixture(scope="module", params=BACKENDS)
def predicting(request, tmp_path_factory) -> Iterator[tuple[Deployment, int]]:
    """One API (no worker) on a database of its own with one trained experiment, shared by the predict tests."""
    root = tmp_path_factory.mktemp("predict")
    with (
        new_database(request.param, root) as url,
        deployment(root, url) as dep,
        httpx.Client(base_url=dep.url, timeout=30) as c,
    ):
        experiment_id = c.post("/experiments", json=tiny_spec(epochs=1)).json()["id"]
        train_in_process(dep)
        yield dep, experiment_id


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


@pytest.mark.parametrize("number", ["NaN", "-Infinity", "1e999"])
def test_non_finite_numbers_are_422_naming_the_field(seeded, number: str) -> None:
    """Python's JSON parser reads these (strict JSON has none of them); echoing one back in the 422 was a 500."""
    _, client = seeded
    body = '{"dataset": {"name": "digits"}, "model": {"kind": "mlp"}, "optimizer": {"kind": "adam", "lr": %s}}'
    response = client.post("/experiments", content=body % number, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "optimizer", "adam", "lr"] and error["type"] == "finite_number", error


def test_a_lone_surrogate_is_422_naming_the_field(seeded) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud800"), which UTF-8 cannot write back: that was a 500."""
    _, client = seeded
    body = '{"name": "a \\ud800", "dataset": {"name": "digits"}, "model": {"kind": "mlp"}}'
    response = client.post("/experiments", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "name"] and error["type"] == "string_unicode", error


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


def test_specs_over_the_servers_budgets_are_422(seeded) -> None:
    _, client = seeded
    wide = client.post("/experiments", json=tiny_spec(model={"kind": "mlp", "hidden": [8192] * 4}))
    assert wide.status_code == 422, wide.text
    [error] = wide.json()["detail"]
    assert error["loc"] == ["body", "model"] and "parameters" in error["msg"]
    # This server allows 1M training samples per experiment: 200 epochs of mnist-10k's 8,000 are 1.6M.
    long = client.post("/experiments", json=tiny_spec(dataset={"name": "mnist-10k"}, epochs=200))
    assert long.status_code == 422, long.text
    [error] = long.json()["detail"]
    assert error["loc"] == ["body", "epochs"] and "1,600,000 training samples" in error["msg"]


def test_nul_bytes_and_control_characters_in_names_are_refused(seeded) -> None:
    _, client = seeded
    response = client.post("/experiments", json=tiny_spec(name="a\x00b"))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "name"]


def test_bad_updates_are_422_naming_the_field(seeded) -> None:
    _, client = seeded
    for body, loc in [
        ({"tags": ["two words"]}, ["body", "tags", 0]),
        ({"tags": ["ok", "a,b"]}, ["body", "tags", 1]),
        ({"tags": ["x" * 65]}, ["body", "tags", 0]),
        ({"tags": [""]}, ["body", "tags", 0]),
        ({"tags": [f"t{i}" for i in range(21)]}, ["body", "tags"]),
        ({"tags": "flips"}, ["body", "tags"]),
        ({"notes": "a\x00b"}, ["body", "notes"]),
        ({"notes": "x" * 10_001}, ["body", "notes"]),
        ({"name": ""}, ["body", "name"]),
        ({"status": "succeeded"}, ["body", "status"]),  # only what a person says of a run can change
        ({"tags": ["a"], "add_tags": ["b"]}, ["body"]),  # the whole list, or what to add and remove: not both
        ({"add_tags": ["two words"]}, ["body", "add_tags", 0]),
        ({"remove_tags": [f"t{i}" for i in range(21)]}, ["body", "remove_tags"]),
        ({"add_tags": [f"t{i}" for i in range(21)]}, ["body", "add_tags"]),  # more than a run may have
    ]:
        response = client.patch("/experiments/1", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"][0]["loc"] == loc, (body, response.text)
    missing = client.patch("/experiments/999", json={"notes": "x"})
    assert missing.status_code == 404 and missing.json() == {"detail": "experiment 999 not found"}
    spaced = client.patch("/experiments/1", json={"tags": ["two words"]}).json()["detail"][0]["msg"]
    assert spaced.startswith("a tag is 1 to 64 letters") and spaced.endswith("not 'two words'"), spaced
    for params in ({"tag": "two words"}, {"tag": ["t"] * 21}):
        response = client.get("/experiments", params=params)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][:2] == ["query", "tag"], params


def test_rename_note_and_tag_a_run_then_find_it_by_its_tags(api_only: Deployment, client_for) -> None:
    client = client_for(api_only)
    first, second = (client.post("/experiments", json=tiny_spec(name=n)).json()["id"] for n in ("a", "b"))
    updated = client.patch(f"/experiments/{first}", json={"tags": ["flips", "digits", "flips"], "notes": "hurt\n"})
    assert updated.status_code == 200, updated.text
    updated = updated.json()
    assert (updated["tags"], updated["notes"], updated["name"]) == (["digits", "flips"], "hurt\n", "a")
    renamed = client.patch(f"/experiments/{first}", json={"name": "flipped digits"}).json()  # the rest is kept
    assert renamed["name"] == renamed["spec"]["name"] == "flipped digits" and renamed["tags"] == ["digits", "flips"]
    client.patch(f"/experiments/{second}", json={"tags": ["digits"]})

    def found(*tags: str) -> list[int]:
        return [e["id"] for e in client.get("/experiments", params={"tag": list(tags)}).json()["items"]]

    assert (found("digits"), found("digits", "flips"), found("nothing")) == ([second, first], [first], [])
    assert client.patch(f"/experiments/{first}", json={"tags": []}).json()["tags"] == []
    assert found("flips") == [] and client.get(f"/experiments/{first}").json()["notes"] == "hurt\n"
    rerun = client.post(f"/experiments/{first}/rerun").json()  # the same spec, renamed; notes are the run's own
    assert (rerun["name"], rerun["notes"], rerun["tags"]) == ("flipped digits", "", [])
    # Tags added and removed in one write (`trainlab edit --tag/--untag`); removing one it lacks is no error.
    changed = client.patch(f"/experiments/{second}", json={"add_tags": ["x", "flips"], "remove_tags": ["digits", "y"]})
    assert changed.status_code == 200 and changed.json()["tags"] == ["flips", "x"], changed.text


def test_idempotency_key_replays_the_first_submission(api_only: Deployment, client_for) -> None:
    client = client_for(api_only)
    headers = {"Idempotency-Key": "7d1c7f0e-retry"}
    first = client.post("/experiments", json=tiny_spec(name="once"), headers=headers)
    assert first.status_code == 201
    # The same body written differently (defaults spelled out) is the same request.
    again = client.post("/experiments", json=tiny_spec(name="once", seed=0), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = client.post("/experiments", json=tiny_spec(name="twice"), headers=headers)
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    sweep = {"name": "s", "base": tiny_spec(epochs=1), "grid": {"optimizer.lr": [0.1, 0.01]}}
    made = client.post("/sweeps", json=sweep, headers={"Idempotency-Key": "sweep-1"})
    remade = client.post("/sweeps", json=sweep, headers={"Idempotency-Key": "sweep-1"})
    assert (made.status_code, remade.status_code) == (201, 200) and made.json() == remade.json()
    assert client.get("/experiments").json()["total"] == 3  # one experiment, two sweep trials


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
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"status": "sleeping"}, {"sweep": 0},
                   {"dataset": "x" * 65}, {"name": "x" * 201},
                   # PostgreSQL cannot take a NUL in text: this was a 500 there.
                   {"name": "a\x00b"}, {"dataset": "\x00"}):  # fmt: skip
        assert client.get("/experiments", params=params).status_code == 422, params
    unknown = client.get("/experiments", params={"model": "CNN"})  # kinds are lower case
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["query", "model"]
    assert "'cnn'" in unknown.json()["detail"][0]["msg"], unknown.text
    unsorted = client.get("/experiments", params={"sort": "accuracy"})  # the metric is val_accuracy
    assert unsorted.status_code == 422 and unsorted.json()["detail"][0]["loc"] == ["query", "sort"], unsorted.text
    assert "'val_accuracy'" in unsorted.json()["detail"][0]["msg"], unsorted.text
    assert client.get("/experiments/1/metrics", params={"since_epoch": -1}).status_code == 422
    # Ids are PostgreSQL integers: a bigger one was a 500 there.
    for path in ("/experiments/1/logs", "/experiments/1/events"):
        assert client.get(path, params={"after": 2**31}).status_code == 422, path
    assert client.get("/experiments/1/events", headers={"Last-Event-ID": str(2**31)}).status_code == 422


def test_list_is_newest_first_with_paging_and_filter(seeded) -> None:
    _, client = seeded
    page = client.get("/experiments", params={"limit": 2}).json()
    assert [e["name"] for e in page["items"]] == ["kept-2", "kept-1"] and page["total"] == 3
    rest = client.get("/experiments", params={"limit": 2, "offset": 2}).json()
    assert [e["name"] for e in rest["items"]] == ["kept-0"]
    assert client.get("/experiments", params={"status": "running"}).json() == {
        "items": [], "total": 0, "limit": 50, "offset": 0
    }  # fmt: skip
    named = client.get("/experiments", params={"name": "KEPT-1", "model": "mlp", "dataset": "digits"}).json()
    assert [e["name"] for e in named["items"]] == ["kept-1"] and named["total"] == 1
    assert client.get("/experiments", params={"model": "cnn"}).json()["total"] == 0
    oldest = client.get("/experiments", params={"sort": "oldest", "limit": 2}).json()  # tests/test_store.py: the rest
    assert [e["name"] for e in oldest["items"]] == ["kept-0", "kept-1"] and oldest["total"] == 3


def test_predict_or_download_before_any_checkpoint_is_409(seeded) -> None:
    _, client = seeded
    response = client.post("/experiments/1/predict", files={"file": ("a.png", png_bytes(), "image/png")})
    assert response.status_code == 409 and "no checkpoint yet" in response.json()["detail"]
    for path in ("checkpoint.pt", "gradients", "gradients.png"):
        response = client.get(f"/experiments/1/{path}")
        assert response.status_code == 409 and "no checkpoint yet" in response.json()["detail"], path


def test_bad_uploads(predicting: tuple[Deployment, int], client_for) -> None:
    """Each answered 4xx, quickly and with bounded memory, while /healthz stays fast."""
    dep, experiment_id = predicting
    client = client_for(dep)
    url = f"/experiments/{experiment_id}/predict"
    before = snapshot(client)

    def predict(content: bytes, name: str = "x.png", mime: str = "image/png"):
        return client.post(url, files={"file": (name, content, mime)})

    assert predict(png_bytes((8, 8))).status_code == 200
    text = predict(b"this is not an image\n" * 10, "notes.txt", "text/plain")
    assert text.status_code == 415 and "PNG, JPEG or WebP" in text.json()["detail"]
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
    pdf = predict(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", "scan.png")
    assert pdf.status_code == 415 and "PNG, JPEG or WebP" in pdf.json()["detail"]
    huge_field = client.post(
        url, files={"file": ("x.png", png_bytes(), "image/png")}, data={"comment": "x" * (11 * 1024 * 1024)}
    )
    assert huge_field.status_code == 413
    missing_field = client.post(url, files={"image": ("x.png", png_bytes(), "image/png")})
    assert missing_field.status_code == 422 and missing_field.json()["detail"][0]["loc"] == ["body", "file"]
    no_such_epoch = client.post(url, params={"epoch": 7}, files={"file": ("x.png", png_bytes())})
    assert no_such_epoch.status_code == 404 and "epoch 7" in no_such_epoch.json()["detail"]
    assert client.get("/healthz").status_code == 200
    assert snapshot(client) == before


def test_the_image_can_be_the_body(predicting: tuple[Deployment, int], client_for) -> None:
    """`curl --data-binary @x.png -H "Content-Type: image/png"`: the same answer as the multipart upload, and the
    same 4xx for bad images; a body of another type is a 415 that says what to send."""
    dep, experiment_id = predicting
    client = client_for(dep)
    url = f"/experiments/{experiment_id}/predict"
    image = io.BytesIO()
    Image.new("L", (28, 28), 255).save(image, format="JPEG")

    def predict(content: bytes, media_type: str = "image/png", **params):
        return client.post(url, params=params, content=content, headers={"Content-Type": media_type})

    for data, media_type in ((png_bytes(), "image/png"), (image.getvalue(), "image/jpeg")):
        as_form = client.post(url, params={"top_k": 3}, files={"file": ("x", data, media_type)})
        for sent_as in (media_type, "application/octet-stream", f"{media_type.upper()}; q=1"):
            as_body = predict(data, sent_as, top_k=3)
            assert as_body.status_code == 200 and as_body.json() == as_form.json(), (sent_as, as_body.text)
    assert len(as_body.json()["probabilities"]) == 3
    # A WebP (what browsers save images from the web as) is read as the PNG of the same pixels is.
    digit = REPO / "examples" / "images" / "mnist-val-7.png"
    webp = io.BytesIO()
    Image.open(digit).save(webp, format="WEBP", lossless=True)
    as_png = predict(digit.read_bytes(), top_k=10)
    for sent in (
        predict(webp.getvalue(), "image/webp", top_k=10),
        client.post(url, params={"top_k": 10}, files={"file": ("7.webp", webp.getvalue(), "image/webp")}),
    ):
        assert sent.status_code == 200 and sent.json() == as_png.json(), sent.text
    empty = predict(b"")
    assert empty.status_code == 422 and empty.json()["detail"][0]["msg"] == "the uploaded file is empty"
    pdf = predict(b"%PDF-1.7\n%%EOF\n")
    assert pdf.status_code == 415 and "PNG, JPEG or WebP" in pdf.json()["detail"]
    oversized = predict(b"\x89PNG" + b"\0" * (10 * 1024 * 1024 + 1))
    assert oversized.status_code == 413
    for media_type in ("text/plain", "application/json", "image/gif", ""):
        wrong = predict(png_bytes(), media_type)
        assert wrong.status_code == 415 and "multipart/form-data" in wrong.json()["detail"], (media_type, wrong.text)
    assert predict(png_bytes(), epoch=7).status_code == 404
    assert client.post(url, data={"file": "not a file"}).status_code == 415  # a urlencoded form
    spec = client.get("/openapi.json").json()["paths"]["/experiments/{experiment_id}/predict"]["post"]
    assert {"multipart/form-data", "image/png", "image/jpeg", "image/webp"} <= spec["requestBody"]["content"].keys()


def test_healthz_stays_fast_while_bombs_arrive(predicting: tuple[Deployment, int], client_for) -> None:
    dep, experiment_id = predicting
    client = client_for(dep)
    url = f"/experiments/{experiment_id}/predict"
    bomb = png_bytes((20000, 20000))  # a few hundred kB that would decode to 400M pixels
    assert len(bomb) < 2_000_000

    def send_bomb(_: int) -> int:
        with httpx.Client(base_url=dep.url, timeout=60) as c:
            return c.post(url, files={"file": ("b.png", bomb, "image/png")}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bombs = pool.map(send_bomb, range(32))
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
        assert set(bombs) == {413}
    assert sorted(latencies)[len(latencies) // 2] < 0.5, latencies


def test_concurrent_predictions_are_batched_and_each_gets_its_own_answer(
    predicting: tuple[Deployment, int], client_for
) -> None:
    dep, experiment_id = predicting
    client = client_for(dep)
    images = load_dataset(DatasetSpec(name="digits"), dep.root).val.images[:24]
    uploads = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels[0].numpy()).save(buffer, format="PNG")
        uploads.append((experiment_id, {"file": ("d.png", buffer.getvalue(), "image/png")}))
    # Bad requests mixed in: each must get its own answer, and spoil nobody else's.
    bad = [(experiment_id, {"file": ("x.png", b"not an image", "image/png")}), (999, {"file": ("d.png", png_bytes())})]
    uploads += bad
    expected = [client.post(f"/experiments/{i}/predict", files=files) for i, files in uploads]
    assert [r.status_code for r in expected] == [200] * 24 + [415, 404]

    def send(upload: tuple[int, dict]) -> httpx.Response:
        with httpx.Client(base_url=dep.url, timeout=30) as c:
            return c.post(f"/experiments/{upload[0]}/predict", files=upload[1])

    def counts() -> tuple[float, float]:
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        samples = {s.name: s.value for s in families["trainlab_predict_batch_size"].samples}
        return samples["trainlab_predict_batch_size_count"], samples["trainlab_predict_batch_size_sum"]

    before = counts()
    with concurrent.futures.ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(send, uploads * 3))
    batches, images_run = (after - b for after, b in zip(counts(), before, strict=True))
    assert images_run == len(uploads) * 3 and batches < images_run, (batches, images_run)  # some ran together
    for answer, alone in zip(answers, expected * 3, strict=True):
        assert answer.status_code == alone.status_code, answer.text
        if alone.status_code != 200:
            assert answer.json()["detail"] == alone.json()["detail"]
            continue
        got, want = answer.json(), alone.json()
        assert got["label"] == want["label"] and got["epoch"] == want["epoch"]
        assert [p["label"] for p in got["probabilities"]] == [p["label"] for p in want["probabilities"]]
        for p, q in zip(got["probabilities"], want["probabilities"], strict=True):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-5)


def test_an_unknown_field_is_answered_with_what_it_likely_meant(seeded) -> None:
    """Pydantic says "Extra inputs are not permitted"; the 422 adds a close name at that level, or the field's
    place in the spec, for an experiment as for a sweep's base spec; and what to write for a misshapen section."""
    _, client = seeded
    response = client.post("/experiments", json={**tiny_spec(), "lr": 0.1, "epoch": 3})
    assert response.status_code == 422, response.text
    messages = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert messages == {
        ("body", "lr"): "Extra inputs are not permitted: 'lr' is set as optimizer.lr",
        ("body", "epoch"): "Extra inputs are not permitted: did you mean 'epochs'?",
    }
    # A section written as its kind, or a kind in capitals, as other tools' configs have them.
    response = client.post("/experiments", json={**tiny_spec(), "loss": "mse", "optimizer": {"kind": "SGD"}})
    assert response.status_code == 422, response.text
    messages = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert messages == {
        ("body", "loss"): "Input should be a valid dictionary or object to extract fields from: write it as "
        '{"kind": "mse"}',
        ("body", "optimizer"): "Input tag 'SGD' found using 'kind' does not match any of the expected tags: 'sgd', "
        "'adam', 'adamw', 'rmsprop': did you mean 'sgd'?",
    }
    response = client.post("/sweeps", json={"base": {**tiny_spec(), "momentum": 0.9}, "grids": {}})
    assert response.status_code == 422, response.text
    messages = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert messages == {
        ("body", "base", "momentum"): "Extra inputs are not permitted: 'momentum' is set as base.optimizer.momentum "
        "(with kind sgd, rmsprop)",
        ("body", "grids"): "Extra inputs are not permitted: did you mean 'grid'?",
    }
    # A grid path is checked in each trial's spec: the trial named, and the same hint.
    response = client.post("/sweeps", json={"base": tiny_spec(), "grid": {"optimizer.learning_rate": [0.1, 0.01]}})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["msg"] == (
        "trial optimizer.learning_rate=0.1: optimizer.adam.learning_rate: Extra inputs are not permitted: "
        "did you mean 'lr'?"
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # about the folder, not the database
def test_an_examples_folder_of_ones_own_serves_what_reads_and_leaves_out_the_rest(tmp_path, db_url: str) -> None:
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "mine.json").write_text('{"name": "mine", "dataset": {"name": "digits"}, "model": {"kind": "mlp"}}')
    (examples / "broken.json").write_text('{"name": ')
    (examples / "list.json").write_text("[1, 2]")
    (examples / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    with deployment(tmp_path, db_url, TRAINLAB_EXAMPLES_DIR=str(examples)) as dep, httpx.Client(base_url=dep.url) as c:
        served = c.get("/examples")
        assert served.status_code == 200 and [e["file"] for e in served.json()] == ["mine.json"], served.text
        assert "examples: " in dep.logs("api") and "broken.json is left out" in dep.logs("api")
