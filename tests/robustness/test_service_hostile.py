"""The service against a hostile web page and careless clients: Host/Origin, image rules, budgets.

Every case goes through the ASGI app (TestClient): no port, no network.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_patch

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from histoscan.serve import ServeSettings, create_app
from histoscan.serve.jobs import DONE, FAILED, SlideJobs


@pytest.fixture(scope="module")
def predictor(untrained_model_file: Path):
    from histoscan.predict import Predictor

    return Predictor.load(untrained_model_file, engine="torch")


@pytest.fixture
def make(predictor):
    clients = []

    def build(base_url: str = "http://127.0.0.1:8000", **settings: object) -> TestClient:
        client = TestClient(create_app(predictor, ServeSettings(**settings)), base_url=base_url)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def patch_files(n: int = 1) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"p{i}.png", png(make_patch(i)), "image/png")) for i in range(n)]


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"]
    return body["error"]


# --- Host (DNS rebinding) ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_foreign_host_is_refused_before_anything_runs(make, host: str) -> None:
    client = make()
    for method, path, kw in (
        ("GET", "/v1/model", {}),
        ("POST", "/v1/predict", {"files": patch_files()}),
        ("GET", "/", {}),
    ):
        response = client.request(method, path, headers={"Host": host}, **kw)
        assert "Host" in error_of(response, 403)


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000"])
def test_loopback_names_are_served(make, host: str) -> None:
    assert make().get("/v1/model", headers={"Host": host}).status_code == 200


def test_bind_address_and_allowed_origin_hosts_are_served(make) -> None:
    client = make(host="10.1.2.3", allow_origins=("https://viewer.example.org",))
    assert client.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "viewer.example.org"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "10.1.2.4:8000"}).status_code == 403


def test_wildcard_bind_accepts_ip_addresses_but_not_foreign_names(make) -> None:
    client = make(host="0.0.0.0")
    assert client.get("/healthz", headers={"Host": "192.168.7.9:8000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "rebind.evil.example"}).status_code == 403


# --- Origin (cross-site POSTs, with or without a token) ---------------------------------------


@pytest.mark.parametrize("token", [None, "s3cret-token"])
@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://127.0.0.1:9999", "file://"]
)
def test_cross_site_post_is_refused(make, token: str | None, origin: str) -> None:
    client = make(token=token)
    headers = {"Origin": origin}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = client.post("/v1/predict", files=patch_files(), headers=headers)
    assert "cross-site" in error_of(response, 403)


def test_same_origin_and_allowed_origins_are_served(make) -> None:
    client = make(allow_origins=("https://viewer.example.org/",))
    same = client.post(
        "/v1/predict", files=patch_files(), headers={"Origin": "http://127.0.0.1:8000"}
    )
    assert same.status_code == 200, same.text
    other = client.post(
        "/v1/predict", files=patch_files(), headers={"Origin": "https://viewer.example.org"}
    )
    assert other.status_code == 200, other.text
    assert client.post("/v1/predict", files=patch_files()).status_code == 200  # curl: no Origin


def test_bad_allow_origin_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        ServeSettings(allow_origins=("viewer.example.org",))


# --- the same image rules as the CLI ----------------------------------------------------------


def tiff(image: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, image, photometric="rgb")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (make_patch(1).astype(np.uint16) * 257, "not 8-bit"),
        (np.dstack([make_patch(2), make_patch(3)[..., :1]]), "channel"),
    ],
    ids=["16-bit RGB TIFF", "4-channel TIFF"],
)
def test_tiff_patches_follow_the_cli_rules(make, image: np.ndarray, words: str) -> None:
    from histoscan.data.sources import FileSource

    data = tiff(image)
    response = make().post("/v1/predict", files=[("files", ("x.tif", data, "image/tiff"))])
    assert words in error_of(response, 422)
    # and the CLI reader refuses the same bytes with the same words
    path = Path(__import__("tempfile").mkdtemp()) / "x.tif"
    path.write_bytes(data)
    with pytest.raises(Exception, match=words):
        FileSource(path.parent, [path], [0]).read(0)


def test_explain_takes_exactly_one_file(make) -> None:
    client = make()
    two = [("file", ("a.png", png(make_patch(1)), "image/png"))] * 2
    assert "exactly one" in error_of(client.post("/v1/explain", files=two), 422)
    one = client.post("/v1/explain", files=two[:1])
    assert one.status_code == 200, one.text


def test_pixel_budget_bounds_the_cost_of_resizing(make) -> None:
    # 20 flat 1000x1000 PNGs compress to a few kB each but decode to 20 million pixels
    big = png(np.full((1000, 1000, 3), 200, np.uint8))
    files = [("files", (f"b{i}.png", big, "image/png")) for i in range(20)]
    client = make(resize=True, max_request_pixels=5_000_000)
    started = time.perf_counter()
    response = client.post("/v1/predict", files=files)
    assert "million pixels" in error_of(response, 413)
    assert time.perf_counter() - started < 2.0  # refused from the headers, nothing decoded
    ok = client.post("/v1/predict", files=files[:4])
    assert ok.status_code == 200 and len(ok.json()["results"]) == 4


# --- no server paths in anything a client can read ---------------------------------------------


def test_slide_summary_file_carries_no_server_path(predictor, tmp_path: Path) -> None:
    model_path = tmp_path / "private" / "models" / "m.pt"

    def analyse(path, out_dir, predictor, **kw):  # what analyse_slide records, paths included
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {
            "slide": str(path),
            "out_dir": str(out_dir),
            "model": {"path": str(model_path), "name": "m"},
            "note": f"read {path} at level 0",
        }
        (out_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    jobs = SlideJobs(analyse, predictor)
    try:
        job = jobs.submit(io.BytesIO(b"fake slide"), "case 7.tif", ".tif", None)
        deadline = time.monotonic() + 60  # a loaded machine can take seconds to start a thread
        while job.status not in (DONE, FAILED) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.status == DONE, job.error
        served = (job.out_dir / "summary.json").read_text()
        for text in (served, json.dumps(job.summary)):
            assert str(jobs.root) not in text and str(tmp_path) not in text
            assert "/tmp" not in text
        assert json.loads(served)["slide"] == "case 7.tif"
        assert json.loads(served)["model"]["path"] == "m.pt"
    finally:
        jobs.close()
