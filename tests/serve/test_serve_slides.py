"""Slide jobs over HTTP: upload a mosaic of real patches, poll, fetch the outputs, clear."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MODEL_MPP = 0.972  # PCam resolution: one mosaic pixel is one model pixel, so tiles are patches


@pytest.fixture(scope="module")
def mosaic(real_patches: np.ndarray) -> tuple[bytes, np.ndarray]:
    """A 192x384 PNG of 2x4 real patches, and the patches in row-major grid order."""
    grid = real_patches[:8].reshape(2, 4, 96, 96, 3)
    image = grid.transpose(0, 2, 1, 3, 4).reshape(192, 384, 3)  # (rows*96, cols*96, 3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue(), real_patches[:8]


def wait_for(client, job_id: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/v1/slides/{job_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout_s} s")


def test_slide_job_lifecycle(make_client, onnx_predictor, mosaic):
    data, patches = mosaic
    client = make_client()

    submitted = client.post(
        "/v1/slides",
        files={"file": ("../../mosaic.png", data, "image/png")},
        data={"mpp": str(MODEL_MPP)},
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["status"] in ("queued", "running", "done")
    jobs = client.app.state.service.started_jobs()
    jobs_root = jobs.root
    assert jobs_root.stat().st_mode & 0o777 == 0o700
    # the upload is stored under a generated name inside the private folder
    assert not (jobs_root.parent / "mosaic.png").exists()

    status = wait_for(client, job_id)

    assert status["status"] == "done", status["error"]
    assert status["progress"] == 1.0 and status["done"] == status["total"] > 0
    assert status["file_name"] == "../../mosaic.png" and status["mpp"] == MODEL_MPP
    assert status["summary"]["slide"] == "../../mosaic.png"  # never the private path
    assert str(jobs_root) not in json.dumps(status)
    assert set(status["files"]) >= {"heatmap.png", "tiles.csv", "tumor.geojson"}

    heatmap = client.get(status["files"]["heatmap.png"])
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
    Image.open(io.BytesIO(heatmap.content)).verify()
    geojson = client.get(f"/v1/slides/{job_id}/tumor.geojson").json()
    assert geojson["type"] == "FeatureCollection"
    rows = list(csv.DictReader(io.StringIO(client.get(f"/v1/slides/{job_id}/tiles.csv").text)))
    assert rows and len(rows) == status["total"]
    # each tile is one patch of the mosaic: same probability as the predictor gives the patch
    expected = onnx_predictor.predict_proba(patches, tta="none")
    for row in rows:
        k = int(row["y"]) // 96 * 4 + int(row["x"]) // 96
        assert abs(float(row["p_tumor"]) - expected[k]) <= 1.5e-6

    assert client.get(f"/v1/slides/{job_id}/slide.png").status_code == 404  # the upload is not
    folder = jobs.get(job_id).folder
    assert folder.is_dir()
    deleted = client.delete(f"/v1/slides/{job_id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": job_id, "deleted": True}
    assert not folder.exists()
    assert client.get(f"/v1/slides/{job_id}").status_code == 404
    assert client.get(f"/v1/slides/{job_id}/heatmap.png").status_code == 404


def test_shutdown_deletes_every_upload(make_client, mosaic):
    client = make_client()
    job_id = client.post(
        "/v1/slides",
        files={"file": ("m.png", mosaic[0], "image/png")},
        data={"mpp": str(MODEL_MPP)},
    ).json()["id"]
    wait_for(client, job_id)
    root: Path = client.app.state.service.started_jobs().root
    assert any(root.iterdir())

    client.__exit__(None, None, None)  # the app's shutdown

    assert not root.exists()


def test_failed_slide_says_why_without_private_paths(make_client, mosaic):
    client = make_client()
    job_id = client.post("/v1/slides", files={"file": ("m.png", mosaic[0], "image/png")}).json()[
        "id"
    ]  # a PNG has no resolution: mpp is required

    status = wait_for(client, job_id)

    assert status["status"] == "failed"
    assert "mpp" in status["error"] and "m.png" in status["error"]
    assert "histoscan-serve-" not in status["error"]
    assert client.get(f"/v1/slides/{job_id}/heatmap.png").status_code == 409


@pytest.mark.parametrize(
    ("name", "form", "status", "words"),
    [
        ("notes.txt", {}, 415, "unsupported slide type .txt"),
        ("noextension", {}, 415, "no extension"),
        ("m.png", {"mpp": "-1"}, 400, "mpp"),
        ("m.png", {"mpp": "abc"}, 400, "mpp"),
    ],
)
def test_bad_slide_requests(make_client, mosaic, name, form, status, words):
    response = make_client().post(
        "/v1/slides", files={"file": (name, mosaic[0], "image/png")}, data=form
    )
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_slide_needs_a_file_and_fits_the_limit(make_client, mosaic):
    client = make_client(max_upload_mb=0.01)
    assert client.post("/v1/slides", data={"mpp": "0.5"}).status_code == 400
    too_big = client.post("/v1/slides", files={"file": ("m.png", mosaic[0], "image/png")})
    assert too_big.status_code == 413


def test_jobs_queue_one_at_a_time(make_client, mosaic):
    client = make_client()
    ids = [
        client.post(
            "/v1/slides",
            files={"file": (f"m{i}.png", mosaic[0], "image/png")},
            data={"mpp": str(MODEL_MPP)},
        ).json()["id"]
        for i in range(3)
    ]
    listed = client.get("/v1/slides").json()
    assert [j["id"] for j in listed] == ids
    # one at a time is checked deterministically in test_serve_jobs (a held analysis)
    assert all(wait_for(client, i)["status"] == "done" for i in ids)
