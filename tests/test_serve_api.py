"""The HTTP API with FastAPI's TestClient: every endpoint, limit and error; token; batching."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from qcsfer.errors import UsageError
from qcsfer.inference.recognizer import ExpressionRecognizer
from qcsfer.serve.app import create_app
from qcsfer.serve.batching import FaceBatcher
from qcsfer.serve.settings import OPTIONS, TOKEN_ENV, ServeSettings

ASSETS = Path(__file__).resolve().parents[1] / "src" / "qcsfer" / "assets"
ASTRONAUT = (ASSETS / "astronaut.jpg").read_bytes()
COFFEE = (ASSETS / "coffee.jpg").read_bytes()
SETTINGS = ServeSettings(  # a busy CPU is slow; TestClient sends Host: testserver
    workers=1, batch_window_ms=2.0, timeout_s=600, allowed_hosts=("testserver",)
)


@pytest.fixture(scope="module")
def recognizer() -> ExpressionRecognizer:
    return ExpressionRecognizer("ferplus")  # the small model: fast; the API is the same


@pytest.fixture(scope="module")
def client(recognizer: ExpressionRecognizer):
    with TestClient(create_app(SETTINGS, recognizer)) as test_client:
        yield test_client


def serve(recognizer: ExpressionRecognizer, **changes) -> TestClient:
    """A client for an app with these settings (enter it with `with`)."""
    return TestClient(create_app(replace(SETTINGS, **changes), recognizer))


def upload(*images: tuple[str, bytes, str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", image) for image in images]


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]["code"]


class SlowModel:
    """Holds every forward pass until released, to fill queues on purpose."""

    def __init__(self, recognizer: ExpressionRecognizer) -> None:
        self.release = threading.Event()
        self.backend = recognizer.backend
        self.preprocessing = recognizer.backend.preprocessing
        self.recognizer = copy.copy(recognizer)
        self.recognizer.backend = self
        self.warm = False

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if self.warm:  # the start-up warm-up passes straight through
            self.release.wait(timeout=60)
        self.warm = True
        return self.backend.logits(batch)


# -- endpoints ---------------------------------------------------------------------------------


def test_health_ready_and_model(client: TestClient, recognizer: ExpressionRecognizer) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    model = client.get("/v1/model").json()
    assert model["classes"][:2] == ["neutral", "happiness"]
    assert model["preprocessing"]["image_size"] == 48
    assert model["metrics"]["valid_flip"]["accuracy"] > 0.8
    assert model["limits"]["max_images"] == SETTINGS.max_images
    assert model["prior"]["default"] == recognizer.prior  # the shipped model's: balanced
    assert "dataset" in model["prior"]["available"]


def test_not_ready_before_the_model_is_loaded(recognizer: ExpressionRecognizer) -> None:
    not_started = TestClient(create_app(SETTINGS, recognizer))  # lifespan not entered
    response = not_started.get("/readyz")
    assert response.status_code == 503
    assert error_code(response) == "not_ready"
    assert not_started.get("/healthz").status_code == 200


def test_openapi_docs_and_page_are_offline(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert {"/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    names = {p["name"] for p in spec["paths"]["/v1/predict"]["post"]["parameters"]}
    assert {"detector", "no_detect", "boxes", "top_k", "prior", "annotated"} <= names
    for path in ("/", "/docs"):
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "https://" not in page.text and "http://" not in page.text.replace(
            "http://127.0.0.1", ""
        )


def test_predict_multipart_astronaut_and_coffee(client: TestClient) -> None:
    files = upload(("astronaut.jpg", ASTRONAUT, "image/jpeg"), ("coffee.jpg", COFFEE, "image/jpeg"))
    response = client.post("/v1/predict", files=files, params={"top_k": 3})
    assert response.status_code == 200, response.text
    document = response.json()
    astronaut, coffee = document["results"]
    assert (astronaut["file"], astronaut["status"], astronaut["width"]) == (
        "astronaut.jpg",
        "ok",
        512,
    )
    (face,) = astronaut["faces"]
    assert face["label"] == "happiness" and face["confidence"] > 0.5
    assert abs(sum(face["probabilities"].values()) - 1) < 1e-6
    assert face["top"][0]["label"] == "happiness" and len(face["top"]) == 3
    assert set(face) >= {"box", "detector_score", "landmarks"}
    assert (coffee["status"], coffee["faces"], coffee["error"]) == ("no_face", [], None)
    assert document["summary"] == {"images": 2, "faces": 1, "without_face": 1, "unreadable": []}
    assert document["timing"]["batch_faces"] >= 1
    assert document["request_id"] == response.headers["x-request-id"]


def test_predict_json_base64_and_data_url(client: TestClient) -> None:
    encoded = base64.b64encode(ASTRONAUT).decode()
    body = {
        "images": [{"name": "a.jpg", "data": encoded}, f"data:image/jpeg;base64,{encoded}"],
        "top_k": 1,
    }
    document = client.post("/v1/predict", json=body).json()
    labels = [[f["label"] for f in r["faces"]] for r in document["results"]]
    assert labels == [["happiness"], ["happiness"]]
    assert document["results"][1]["file"] == "image-1"
    assert len(document["results"][0]["faces"][0]["top"]) == 1
    bad = client.post("/v1/predict", json={"images": [{"name": "x", "data": "@@not base64"}]})
    assert (bad.status_code, error_code(bad)) == (400, "bad_base64")
    text = client.post("/v1/predict", json={"images": ["data:text/plain;base64,aGk="]})
    assert (text.status_code, error_code(text)) == (415, "unsupported_media_type")
    for broken in (b"{not json", b'{"pictures": []}'):
        response = client.post(
            "/v1/predict", content=broken, headers={"content-type": "application/json"}
        )
        assert (response.status_code, error_code(response)) == (400, "bad_request")


def test_unreadable_image_is_reported_per_image(client: TestClient) -> None:
    files = upload(("broken.jpg", b"not an image at all", "image/jpeg"))
    files += upload(("astronaut.jpg", ASTRONAUT, "image/jpeg"))
    files += upload(("empty.png", b"", "image/png"))
    document = client.post("/v1/predict", files=files).json()
    broken, astronaut, empty = document["results"]
    assert broken["status"] == "unreadable" and "broken.jpg" in broken["error"]
    assert "not an image format" in broken["error"] and "BytesIO" not in broken["error"]
    assert empty["status"] == "unreadable" and "empty" in empty["error"]
    assert astronaut["faces"][0]["label"] == "happiness"
    assert document["summary"]["unreadable"] == ["broken.jpg", "empty.png"]


def test_json_nested_too_deeply_is_a_bad_request(client: TestClient) -> None:
    # deeper than the parser recurses, within uploads.MAX_JSON_STRUCTURE brackets
    body = b'{"images": [' + b"[" * 5_000 + b"]" * 5_000 + b"]}"
    response = client.post(
        "/v1/predict", content=body, headers={"content-type": "application/json"}
    )
    assert (response.status_code, error_code(response)) == (400, "bad_request")


def test_options_no_detect_boxes_and_invalid(client: TestClient) -> None:
    files = upload(("coffee.jpg", COFFEE, "image/jpeg"))
    whole = client.post("/v1/predict", files=files, params={"no_detect": "true"}).json()
    assert whole["results"][0]["faces"][0]["box"] == [0, 0, 600, 400]
    boxed = client.post("/v1/predict", files=files, data={"boxes": "10,20,110,120;0,0,50,50"})
    assert [f["box"] for f in boxed.json()["results"][0]["faces"]] == [
        [10, 20, 110, 120],
        [0, 0, 50, 50],
    ]
    outside = client.post("/v1/predict", files=files, params={"boxes": "700,500,800,600"})
    assert outside.json()["results"][0]["status"] == "box_outside"
    for params in (
        {"top_k": 0},
        {"detector": "../../etc/passwd"},
        {"boxes": "1,2,3"},
        {"boxes": "nan,0,10,10"},
        {"unknown": "1"},
        {"annotated_format": "gif"},
    ):
        response = client.post("/v1/predict", files=files, params=params)
        assert (response.status_code, error_code(response)) == (422, "invalid_options"), params
    form = client.post("/v1/predict", files=files, data={"top_k": "zero"})
    assert (form.status_code, error_code(form)) == (422, "invalid_options")


def test_annotated_image(client: TestClient) -> None:
    files = upload(("astronaut.jpg", ASTRONAUT, "image/jpeg"))
    response = client.post("/v1/predict", files=files, params={"annotated": "true"})
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-qcsfer-faces"] == "1"
    drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    original = np.asarray(Image.open(io.BytesIO(ASTRONAUT)).convert("RGB"))
    assert drawn.shape == original.shape and (drawn != original).any()
    jpeg = client.post(
        "/v1/predict", files=files, params={"annotated": "true", "annotated_format": "jpeg"}
    )
    assert jpeg.headers["content-type"] == "image/jpeg"
    two = client.post("/v1/predict", files=files * 2, params={"annotated": "true"})
    assert (two.status_code, error_code(two)) == (400, "bad_request")


def test_prior_field(client: TestClient, recognizer: ExpressionRecognizer) -> None:
    files = upload(("astronaut.jpg", ASTRONAUT, "image/jpeg"))
    dataset = client.post("/v1/predict", files=files, params={"prior": "dataset"}).json()
    assert dataset["prior"] == "dataset"
    served = dataset["results"][0]["faces"][0]["probabilities"]
    (local,) = ExpressionRecognizer("ferplus", prior="dataset")(ASSETS / "astronaut.jpg")
    assert served == pytest.approx(local.probabilities, abs=1e-6)
    unasked = client.post("/v1/predict", files=files).json()
    assert unasked["prior"] == recognizer.prior  # the model's default, named as applied
    balanced = client.post("/v1/predict", files=files, params={"prior": "balanced"})
    if recognizer.card.prior is None:  # the model does not record its training prior
        assert (balanced.status_code, error_code(balanced)) == (422, "prior_unavailable")
        assert "training prior" in balanced.json()["error"]["message"]
    else:
        adjusted = balanced.json()["results"][0]["faces"][0]["probabilities"]
        assert balanced.json()["prior"] == "balanced" and adjusted != served


# -- limits ------------------------------------------------------------------------------------


def test_unsupported_types_415(client: TestClient) -> None:
    plain = client.post("/v1/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert (plain.status_code, error_code(plain)) == (415, "unsupported_media_type")
    bare = client.post("/v1/predict", content=b"hello")
    assert bare.status_code == 415
    svg = client.post("/v1/predict", files=upload(("x.svg", b"<svg/>", "image/svg+xml")))
    assert (svg.status_code, error_code(svg)) == (415, "unsupported_media_type")
    assert "x.svg" in svg.json()["error"]["message"]


def test_body_size_image_count_and_pixel_limits(recognizer: ExpressionRecognizer) -> None:
    with serve(recognizer, max_body_bytes=200_000, max_images=2, max_pixels=1_000_000) as c:
        big = c.post("/v1/predict", files=upload(("big.png", png(300, 300), "image/png")))
        assert (big.status_code, error_code(big)) == (413, "payload_too_large")
        files = upload(*[("a.jpg", ASTRONAUT[:10], "image/jpeg")] * 3)
        many = c.post("/v1/predict", files=files)
        assert (many.status_code, error_code(many)) == (413, "too_many_images")
        assert "limit is 2" in many.json()["error"]["message"]
        bomb = Image.new("L", (2000, 1000))  # 2 MP of one colour: a tiny file
        buffer = io.BytesIO()
        bomb.save(buffer, "PNG")
        pixels = c.post("/v1/predict", files=upload(("bomb.png", buffer.getvalue(), "image/png")))
        assert (pixels.status_code, error_code(pixels)) == (413, "image_too_large")
        assert "bomb.png" in pixels.json()["error"]["message"]
        empty = c.post("/v1/predict", files={"note": (None, "hello")})
        assert (empty.status_code, error_code(empty)) == (400, "no_images")


def test_faces_per_image_limit(recognizer: ExpressionRecognizer) -> None:
    face = np.asarray(Image.open(io.BytesIO(ASTRONAUT)).convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate([face, face], axis=1)).save(buffer, "PNG")
    files = upload(("two.png", buffer.getvalue(), "image/png"))
    with serve(recognizer, max_faces=1) as c:
        (result,) = c.post("/v1/predict", files=files).json()["results"]
        assert result["status"] == "too_many_faces" and "limit is 1" in result["error"]
        boxes = c.post("/v1/predict", files=files, params={"boxes": "0,0,9,9;9,9,19,19"})
        assert (boxes.status_code, error_code(boxes)) == (413, "too_many_faces")
    with serve(recognizer, max_faces=2) as c:
        (result,) = c.post("/v1/predict", files=files).json()["results"]
        assert [f["label"] for f in result["faces"]] == ["happiness", "happiness"]


# -- security ----------------------------------------------------------------------------------


def test_bearer_token(recognizer: ExpressionRecognizer, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(recognizer, token="s3cret") as c:
        missing = c.get("/v1/model")
        assert (missing.status_code, error_code(missing)) == (401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/v1/predict", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = c.get("/v1/model", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert ServeSettings.resolve({}).token == "from-env"
    assert ServeSettings.resolve({"token": "arg"}).token == "arg"
    monkeypatch.delenv(TOKEN_ENV)
    assert ServeSettings.resolve({}).token is None
    with pytest.raises(ValueError, match="empty token"):
        ServeSettings(token=" ")


def test_every_setting_has_one_declaration_a_flag_and_a_variable() -> None:
    """Flags, their defaults and QCSFER_* variables all come from ServeSettings."""
    from qcsfer.cli import build_parser

    assert [o.name for o in OPTIONS] == [f.name for f in dataclasses.fields(ServeSettings)]
    assert all(o.env.startswith("QCSFER_") for o in OPTIONS) and TOKEN_ENV == "QCSFER_TOKEN"
    args = build_parser().parse_args(["serve"])
    assert ServeSettings.resolve(vars(args), environ={}) == ServeSettings()
    environ = {
        "QCSFER_PORT": "9001",
        "QCSFER_MAX_UPLOAD_MB": "3",
        "QCSFER_TIMEOUT": "2.5",
        "QCSFER_CORS": "https://a.example, https://b.example",
        "QCSFER_PRIOR": "dataset",
        "QCSFER_WORKERS": "",  # empty: unset
    }
    settings = ServeSettings.resolve(vars(args), environ)
    assert (settings.port, settings.max_body_bytes, settings.timeout_s) == (9001, 3 * 1024**2, 2.5)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.prior == "dataset" and settings.workers == 1
    given = build_parser().parse_args(["serve", "--port", "9002", "--cors", "https://c.example"])
    settings = ServeSettings.resolve(vars(given), environ)  # a flag given wins
    assert settings.port == 9002 and settings.cors_origins == ("https://c.example",)
    for variable, text, message in [
        ("QCSFER_PORT", "eighty", "expected a whole number"),
        ("QCSFER_MAX_FACES", "0", "must be at least 1"),
        ("QCSFER_BACKEND", "tensorrt", "expected one of auto, torch, onnx"),
    ]:
        with pytest.raises(UsageError, match=f"{variable}='{text}': {message}"):
            ServeSettings.resolve({}, {variable: text})


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("timeout_s", float("nan")),
        ("timeout_s", 0.0),
        ("batch_window_ms", float("nan")),
        ("batch_window_ms", float("inf")),
        ("retry_after_s", -1),
    ],
)
def test_times_that_are_not_finite_numbers_are_refused(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"invalid server settings: {setting}={value}"):
        ServeSettings(**{setting: value})


def test_a_port_in_use_is_refused_before_the_model_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qcsfer.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "no-such-model"]) == 2
    error = capsys.readouterr().err  # the model would have been refused second
    assert f"cannot listen on 127.0.0.1:{port}" in error and "no-such-model" not in error


def test_cors_off_unless_asked(client: TestClient, recognizer: ExpressionRecognizer) -> None:
    origin = {"Origin": "https://example.org"}
    assert "access-control-allow-origin" not in client.get("/v1/model", headers=origin).headers
    with serve(recognizer, cors_origins=("https://example.org",)) as c:
        allowed = c.get("/v1/model", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://example.org"
        other = c.get("/v1/model", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_request_id_and_access_log(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    files = upload(("astronaut.jpg", ASTRONAUT, "image/jpeg"))
    with caplog.at_level(logging.INFO, logger="qcsfer.serve.access"):
        given = client.post("/v1/predict", files=files, headers={"X-Request-Id": "abc-123"})
        odd = client.get("/healthz", headers={"X-Request-Id": "bad id\nwith newline"})
    assert given.headers["x-request-id"] == "abc-123"
    assert odd.headers["x-request-id"] != "bad id\nwith newline"
    records = [json.loads(r.getMessage()) for r in caplog.records]
    predict = next(r for r in records if r["request_id"] == "abc-123")
    assert (predict["path"], predict["status"], predict["faces"]) == ("/v1/predict", 200, 1)
    assert predict["ms"] >= predict["model_ms"] > 0 and "queue_ms" in predict
    assert any(r["request_id"] == odd.headers["x-request-id"] for r in records)


def test_unknown_route_is_json(client: TestClient) -> None:
    missing = client.get("/v2/predict")
    assert (missing.status_code, error_code(missing)) == (404, "not_found")
    wrong_method = client.get("/v1/predict")
    assert (wrong_method.status_code, error_code(wrong_method)) == (405, "method_not_allowed")


# -- concurrency -------------------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(recognizer: ExpressionRecognizer) -> None:
    slow = SlowModel(recognizer)
    files = upload(("astronaut.jpg", ASTRONAUT, "image/jpeg"))
    with serve(slow.recognizer, max_pending=1, retry_after_s=2) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.post, "/v1/predict", files=files)
        service = c.app.state.service
        deadline = time.monotonic() + 30
        while service.pending < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = c.post("/v1/predict", files=files)
        slow.release.set()
        assert (busy.status_code, error_code(busy)) == (503, "busy")
        assert busy.headers["retry-after"] == "2"
        assert first.result().status_code == 200


def test_request_timeout_504(recognizer: ExpressionRecognizer) -> None:
    slow = SlowModel(recognizer)
    files = upload(("astronaut.jpg", ASTRONAUT, "image/jpeg"))
    with serve(slow.recognizer, timeout_s=0.5) as c:
        response = c.post("/v1/predict", files=files)
        slow.release.set()
        assert (response.status_code, error_code(response)) == (504, "timeout")


def test_concurrent_requests_share_a_batch(recognizer: ExpressionRecognizer) -> None:
    """While the model is busy, later requests queue up and go through in one batch."""
    slow = SlowModel(recognizer)
    files = upload(("astronaut.jpg", ASTRONAUT, "image/jpeg"))
    with serve(slow.recognizer, workers=1, batch_window_ms=50) as c, ThreadPoolExecutor(4) as pool:
        batcher = c.app.state.service.batcher
        responses = [pool.submit(c.post, "/v1/predict", files=files) for _ in range(4)]
        deadline = time.monotonic() + 60
        while batcher.waiting < 3 and time.monotonic() < deadline:  # one in the model, 3 queued
            time.sleep(0.01)
        slow.release.set()
        documents = [r.result().json() for r in responses]
        sizes = c.get("/v1/model").json()["batching"]["requests_per_batch"]
    labels = {d["results"][0]["faces"][0]["label"] for d in documents}
    assert labels == {"happiness"}
    assert max(d["timing"]["batch_requests"] for d in documents) == 3
    assert max(int(size) for size in sizes) == 3


def test_warm_up_runs_the_largest_model_batch(recognizer: ExpressionRecognizer) -> None:
    """Memory for the largest batch is claimed before ready, not later under load."""
    sizes: list[int] = []

    class Recording:
        preprocessing = recognizer.backend.preprocessing

        def logits(self, batch: np.ndarray) -> np.ndarray:
            sizes.append(len(batch))
            return recognizer.backend.logits(batch)

    watched = copy.copy(recognizer)
    watched.backend = Recording()
    with serve(watched, max_batch_faces=8) as c:  # one request may still bring 16 x 32 faces
        assert c.get("/readyz").status_code == 200
    with serve(watched, max_batch_faces=8, max_images=2, max_faces=3):
        pass
    assert sizes == [recognizer.batch_size, 8]


def test_batcher_without_window_runs_one_job_a_batch() -> None:
    seen: list[int] = []

    def classify(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        time.sleep(0.01)
        return np.full((len(batch), 2), 0.5)

    batcher = FaceBatcher(classify, workers=1, window_s=0.0)
    futures = [batcher.submit(np.zeros((2, 1, 4, 4), np.uint8)) for _ in range(5)]
    results = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert seen == [2] * 5
    assert all(info.requests == 1 and probs.shape == (2, 2) for probs, info in results)
    windowed = FaceBatcher(classify, workers=1, window_s=0.5, max_faces=4)
    futures = [windowed.submit(np.zeros((2, 1, 4, 4), np.uint8)) for _ in range(3)]
    infos = [f.result(timeout=10)[1] for f in futures]
    windowed.close()
    assert [i.requests for i in infos] == [2, 2, 1]  # max_faces=4: two jobs of 2 faces a batch
