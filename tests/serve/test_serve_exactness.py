"""Exactness where security or validity depends on it: the token, and the patch size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from histoscan.serve.errors import ApiError
from histoscan.serve.images import decode_patch
from histoscan.serve.security import TokenMiddleware

TOKEN = "s3cret-Token_42"
# every near miss of "Bearer <token>": must all be refused
WRONG = [
    f"Bearer {TOKEN}XYZ",  # suffix: what a startswith comparison lets through
    f"Bearer {TOKEN[:-1]}",  # prefix
    f"Bearer {TOKEN[1:]}",
    f"Bearer x{TOKEN}",
    f"Bearer {TOKEN.upper()}",  # other case
    f"Bearer {TOKEN.lower()}",
    f"Bearer {TOKEN} {TOKEN}",
    f"Basic {TOKEN}",  # another scheme
    f"Token {TOKEN}",
    TOKEN,  # no scheme
    f"Bearer{TOKEN}",
    "Bearer ",
    "Bearer",
    "",
]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def guarded() -> TestClient:
    """The token middleware in front of a tiny app with a /v1 route and an open one."""
    app = FastAPI()

    @app.get("/v1/secret")
    def secret() -> dict:
        return {"ok": True}

    @app.get("/healthz")
    def health() -> dict:
        return {"ok": True}

    return TestClient(TokenMiddleware(app, TOKEN))


def test_only_the_exact_token_opens_v1(guarded: TestClient) -> None:
    assert guarded.get("/v1/secret", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {
        "ok": True
    }
    assert (
        guarded.get("/v1/secret", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    )


@pytest.mark.parametrize("header", WRONG, ids=range(len(WRONG)))
def test_near_misses_are_401(guarded: TestClient, header: str) -> None:
    response = guarded.get("/v1/secret", headers={"Authorization": header})
    assert response.status_code == 401, header
    assert set(response.json()) == {"error"}
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_missing_header_is_401_and_open_paths_stay_open(guarded: TestClient) -> None:
    assert guarded.get("/v1/secret").status_code == 401
    assert "missing token" in guarded.get("/v1/secret").json()["error"]
    assert guarded.get("/healthz").status_code == 200


@pytest.mark.parametrize(("height", "width"), [(96, 95), (95, 96), (97, 96), (96, 97), (95, 95)])
def test_decode_refuses_every_other_size(height: int, width: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with pytest.raises(ApiError) as info:
        decode_patch(png(image), "p.png", 96)
    assert info.value.status_code == 422
    assert f"not 96x96 (got {width}x{height})" in str(info.value)


def test_decode_accepts_96x96_and_resizes_only_when_asked() -> None:
    image = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    decoded, resized_from = decode_patch(png(image), "p.png", 96)
    assert np.array_equal(decoded, image) and resized_from is None
    other = np.random.default_rng(2).integers(0, 256, (95, 96, 3), dtype=np.uint8)
    decoded, resized_from = decode_patch(png(other), "q.png", 96, resize=True)
    assert decoded.shape == (96, 96, 3) and resized_from == "96x95"


def test_the_service_itself_wants_the_exact_token_and_size(make_client) -> None:
    client = make_client(token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/v1/model", headers=good).status_code == 200
    for header in (f"Bearer {TOKEN}XYZ", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN.upper()}"):
        assert client.get("/v1/model", headers={"Authorization": header}).status_code == 401
    narrow = np.full((96, 95, 3), 128, dtype=np.uint8)
    response = client.post(
        "/v1/predict", headers=good, files=[("files", ("narrow.png", png(narrow), "image/png"))]
    )
    assert response.status_code == 422, response.text
    assert "not 96x96 (got 95x96)" in response.json()["error"]
