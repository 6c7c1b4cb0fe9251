"""The decision threshold of the service: the server's rule (--threshold) and a per-request one."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from histoscan.predict import Predictor
from histoscan.serve import ServeSettings, create_app


def post(client: TestClient, files, query: str = ""):  # type: ignore[no-untyped-def]
    upload = [("files", (f.name, f.read_bytes(), "image/webp")) for f in files]
    return client.post(f"/v1/predict{query}", files=upload)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load()  # the bundled model, int8 engine: what `histoscan serve` runs


def client_for(predictor: Predictor, **settings: object) -> TestClient:
    app = create_app(predictor, ServeSettings(tta="none", **settings))  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_request_threshold_decides_each_patch(predictor, real_patch_files, real_patches) -> None:
    probs = predictor.predict_proba(real_patches, "none")
    cut = float(np.sort(probs)[len(probs) // 2])  # half the patches at or above it
    with client_for(predictor) as client:
        body = post(client, real_patch_files, f"?threshold={cut}").json()
        assert body["threshold"] == cut
        got = [r["decision"] for r in body["results"]]
        assert got == ["tumor" if p >= cut else "normal" for p in probs]
        assert 0 < got.count("tumor") < len(got)
        for bad in ("1.5", "-0.1", "half"):
            assert post(client, real_patch_files[:1], f"?threshold={bad}").status_code in (400, 422)


def test_server_threshold_rule_is_resolved_on_validation_logits(predictor, real_patch_files):
    youden = predictor.threshold("youden")
    assert youden != predictor.threshold()  # the rule changes something
    with client_for(predictor, threshold="youden") as client:
        body = post(client, real_patch_files[:2]).json()
        assert body["threshold"] == youden
        assert client.get("/v1/model").json()["threshold"] == youden
    with pytest.raises(ValueError, match="sensitivity"):
        ServeSettings(threshold="sens:1.5")
