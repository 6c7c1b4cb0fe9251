"""Fixtures for the service: real patches, loaded predictors, and a TestClient factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from histoscan.data.sources import decode_image
from histoscan.predict import Predictor
from histoscan.serve import ServeSettings, create_app


@pytest.fixture(scope="session")
def real_patch_files(real_root: Path) -> list[Path]:
    """Eight real Kaggle patches (lossless WebP), both classes."""
    return sorted((real_root / "train").glob("*.webp"))[:8]


@pytest.fixture(scope="session")
def real_patches(real_patch_files: list[Path]) -> np.ndarray:
    return np.stack([decode_image(f) for f in real_patch_files])  # (8, 96, 96, 3)


@pytest.fixture(scope="session")
def torch_predictor() -> Predictor:
    """The bundled model on the torch engine."""
    return Predictor.load(engine="torch")


@pytest.fixture(scope="session")
def onnx_predictor() -> Predictor:
    return Predictor.load(engine="onnx")


@pytest.fixture
def make_client(onnx_predictor: Predictor) -> Iterator[Callable[..., TestClient]]:
    """``make_client(predictor=None, **settings)``: a started TestClient, closed after the test."""
    clients: list[TestClient] = []

    def make(
        predictor: Predictor | None = None, raise_server_exceptions: bool = True, **settings: object
    ) -> TestClient:
        app = create_app(predictor or onnx_predictor, ServeSettings(**settings))  # type: ignore[arg-type]
        client = TestClient(
            app,
            base_url="http://127.0.0.1:8000",  # the service checks the Host header
            raise_server_exceptions=raise_server_exceptions,
        )
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
