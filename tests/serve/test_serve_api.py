"""The patch API on real patches: same numbers as Predictor, and a 4xx JSON for every bad input."""

from __future__ import annotations

import base64
import importlib.util
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoscan.predict import Predictor

pytest.importorskip("fastapi")


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def upload(files: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` fields for real patch files."""
    return [("files", (f.name, f.read_bytes(), "image/webp")) for f in files]


def assert_error(response, status: int, words: str = "") -> str:
    """A JSON error body with the status, no stack trace, and ``words`` in the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert "Traceback" not in body["error"]
    assert words.lower() in body["error"].lower()
    return body["error"]


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_predict_matches_predictor_on_real_patches(
    engine, request, make_client, real_patch_files, real_patches
):
    predictor: Predictor = request.getfixturevalue(f"{engine}_predictor")
    client = make_client(predictor)

    response = client.post("/v1/predict", files=upload(real_patch_files))

    assert response.status_code == 200, response.text
    body = response.json()
    expected = predictor.predict_proba(real_patches, tta="d4")  # `histoscan predict` defaults
    got = np.array([r["p_tumor"] for r in body["results"]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert [r["id"] for r in body["results"]] == [f.name for f in real_patch_files]
    threshold = predictor.threshold()
    assert body["threshold"] == threshold and body["tta"] == "d4"
    for r, p in zip(body["results"], expected, strict=True):
        assert r["decision"] == ("tumor" if p >= threshold else "normal")
        assert (r["model"], r["version"]) == (predictor.name, predictor.version)


def test_file_names_are_only_echoed(make_client, real_patch_files):
    client = make_client()
    data = real_patch_files[0].read_bytes()
    names = ["../../etc/passwd", "<img src=x onerror=alert(1)>.png"]
    files = [("files", (name, data, "image/webp")) for name in names]

    body = client.post("/v1/predict", files=files).json()

    assert [r["id"] for r in body["results"]] == names
    assert body["results"][0]["p_tumor"] == body["results"][1]["p_tumor"]


def test_thumbnails_on_request(make_client, real_patch_files, real_patches):
    client = make_client()
    body = client.post("/v1/predict?thumbnails=true", files=upload(real_patch_files[:1])).json()

    thumb_png = base64.b64decode(body["results"][0]["thumbnail_png"])
    thumb = np.asarray(Image.open(io.BytesIO(thumb_png)))
    np.testing.assert_array_equal(thumb, real_patches[0])


def test_resize_accepts_other_sizes_only_when_enabled(make_client, onnx_predictor, real_patches):
    big = np.asarray(Image.fromarray(real_patches[0]).resize((128, 128)))
    files = [("files", ("big.png", png_bytes(big), "image/png"))]

    assert_error(make_client().post("/v1/predict", files=files), 422, "not 96x96")
    body = make_client(resize=True).post("/v1/predict", files=files).json()

    result = body["results"][0]
    assert result["resized_from"] == "128x128"
    small = np.asarray(Image.fromarray(big).resize((96, 96), Image.Resampling.BILINEAR))
    expected = onnx_predictor.predict_proba(small[None], tta="d4")[0]
    assert abs(result["p_tumor"] - expected) <= 1e-6


def test_model_card(make_client, onnx_predictor):
    response = make_client().get("/v1/model")
    body = response.json()
    card = onnx_predictor.model_file.card
    assert body["name"] == onnx_predictor.name and body["version"] == onnx_predictor.version
    assert body["threshold"] == onnx_predictor.threshold()
    assert body["temperature"] == pytest.approx(onnx_predictor.temperature)
    assert body["spec"]["patch_px"] == 96 and body["spec"]["name"] == onnx_predictor.spec.name
    assert body["engine"] == "onnx" and body["tta"] == "d4"
    for key, value in card.items():
        if key.startswith("val_") and isinstance(value, float):
            assert body["validation"][key] == value
    assert set(body["card"]) | set(body["card_omitted"]) == set(card)
    assert len(response.content) < 64_000


def test_healthz_and_page_need_no_token(make_client):
    client = make_client(token="s3cret")
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["auth"] is True
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_page_loads_nothing_from_elsewhere(make_client):
    client = make_client()
    for path in ("/", "/static/app.js", "/static/style.css"):
        response = client.get(path)
        assert response.status_code == 200
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", response.text), path
        assert "cdn" not in response.text.lower(), path


@pytest.mark.skipif(
    importlib.util.find_spec("histoscan.explain") is None, reason="histoscan.explain not available"
)
def test_explain_json_and_png(make_client, onnx_predictor, real_patch_files, real_patches):
    client = make_client()
    file = [("file", (real_patch_files[0].name, real_patch_files[0].read_bytes(), "image/webp"))]

    body = client.post("/v1/explain", files=file).json()
    as_png = client.post("/v1/explain?format=png", files=file)

    expected = onnx_predictor.predict_proba(real_patches[:1], tta="d4")[0]
    assert abs(body["p_tumor"] - expected) <= 1e-6
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.size == (96, 96) and overlay.mode == "RGB"
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image_png"]))))
    np.testing.assert_array_equal(image, real_patches[0])
    assert as_png.status_code == 200 and as_png.headers["content-type"] == "image/png"
    assert as_png.content == base64.b64decode(body["overlay_png"])
    assert abs(float(as_png.headers["x-p-tumor"]) - expected) <= 1e-6


def _bad_uploads() -> dict[str, tuple[bytes, int, str]]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    return {
        "not an image": (b"%PDF-1.4 this is not an image", 415, "not a readable image"),
        "empty file": (b"", 400, "empty file"),
        "wrong size": (png_bytes(rgb[:64, :80]), 422, "not 96x96 (got 80x64)"),
        "rgba": (png_bytes(np.dstack([rgb, rgb[..., :1]])), 422, "rgba"),
        "grayscale": (png_bytes(rgb[..., 0]), 422, "grayscale"),
        "16-bit": (png_bytes(rgb[..., 0].astype(np.uint16) * 200), 422, "not 8-bit"),
    }


@pytest.mark.parametrize("case", list(_bad_uploads()))
def test_bad_patch_gives_its_4xx(case, make_client):
    data, status, words = _bad_uploads()[case]
    client = make_client()
    files = [("files", ("patch.png", data, "image/png"))]

    assert_error(client.post("/v1/predict", files=files), status, words)
    assert_error(client.post("/v1/explain", files=[("file", files[0][1])]), status, words)


def test_one_bad_file_names_itself(make_client, real_patch_files):
    files = [*upload(real_patch_files[:2]), ("files", ("broken.tif", b"nope", "image/tiff"))]
    assert_error(make_client().post("/v1/predict", files=files), 415, "broken.tif")


def test_missing_file_field(make_client):
    client = make_client()
    assert_error(client.post("/v1/predict"), 400, "files")
    assert_error(client.post("/v1/predict", data={"files": "text"}), 400, "uploaded file")
    assert_error(client.post("/v1/explain"), 400, "file")
    assert_error(client.post("/v1/explain?format=gif", files={"file": b"x"}), 400, "format")


def test_too_large_by_header_and_while_streaming(make_client):
    client = make_client(max_upload_mb=0.5)
    files = [("files", ("big.png", b"\0" * 600_000, "image/png"))]
    assert_error(client.post("/v1/predict", files=files), 413, "too large")

    def chunks():  # no Content-Length: the limit is counted while the body streams
        for _ in range(20):
            yield b"\0" * 65536

    streamed = client.post(
        "/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert_error(streamed, 413, "too large")


def test_too_many_files(make_client, real_patch_files):
    assert_error(
        make_client(max_files=2).post("/v1/predict", files=upload(real_patch_files[:3])),
        413,
        "at most 2",
    )


def test_token(make_client, real_patch_files):
    client = make_client(token="s3cret")
    files = upload(real_patch_files[:1])

    missing = client.post("/v1/predict", files=files)
    assert_error(missing, 401, "missing token")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_error(
        client.post("/v1/predict", files=files, headers={"Authorization": "Bearer nope"}),
        401,
        "invalid token",
    )
    assert_error(client.get("/v1/model", headers={"Authorization": "Basic czNjcmV0"}), 401)
    assert_error(client.get("/v1/slides/x", headers={"Authorization": "Bearer s3cre"}), 401)
    ok = client.post("/v1/predict", files=files, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_token_is_checked_before_the_body_is_read(make_client):
    client = make_client(token="s3cret", max_upload_mb=0.1)
    files = [("files", ("big.png", b"\0" * 200_000, "image/png"))]
    assert_error(client.post("/v1/predict", files=files), 401)


def test_unknown_job_and_routes(make_client):
    client = make_client()
    assert_error(client.get("/v1/slides/nope"), 404, "no slide job")
    assert_error(client.delete("/v1/slides/nope"), 404, "no slide job")
    assert_error(client.get("/v1/slides/nope/heatmap.png"), 404, "no slide job")
    assert_error(client.get("/v1/nothing"), 404, "not found")
    assert_error(client.delete("/v1/predict"), 405, "not allowed")


def test_bug_gives_500_without_details(make_client, onnx_predictor, real_patch_files, monkeypatch):
    client = make_client(raise_server_exceptions=False)

    def broken(images, tta="d4"):
        raise RuntimeError("secret internals at /private/path")

    monkeypatch.setattr(onnx_predictor, "predict_proba", broken)
    message = assert_error(client.post("/v1/predict", files=upload(real_patch_files[:1])), 500)
    assert "secret" not in message and "/private" not in message


def test_docs_are_served_offline(make_client):
    client = make_client()
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "histoscan"
