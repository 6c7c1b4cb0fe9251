"""The page end to end in headless Chromium: upload real patches, read the table, Grad-CAM, CSV.

Set HISTOSCAN_SCREENSHOT=docs/img/serve_page.png to save the screenshot used in the docs.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from histoscan.serve import ServeSettings, create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(onnx_predictor, request) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free loopback port (settings from ``param``)."""
    import uvicorn

    port = free_port()
    settings = ServeSettings(**getattr(request, "param", {}))
    config = uvicorn.Config(
        create_app(onnx_predictor, settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)


@pytest.fixture
def page_files(real_root: Path, tmp_path: Path) -> list[Path]:
    """Ten real patches (both classes, one as Kaggle's TIFF) and one file that is not an image."""
    with open(real_root / "train_labels.csv") as fh:
        labels = dict(csv.reader(fh))
    names = sorted(p.stem for p in (real_root / "train").glob("*.webp"))
    chosen = [n for n in names if labels[n] == "1"][:5] + [n for n in names if labels[n] == "0"][:5]
    files = [real_root / "train" / f"{n}.webp" for n in chosen]
    tif = tmp_path / f"{chosen[-1]}.tif"  # Chromium cannot show TIFF: the server sends a thumbnail
    Image.open(files[-1]).save(tif)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a patch")
    return [*files[:-1], tif, notes]


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_page_scores_explains_and_exports(live_server, browser, page_files, tmp_path):
    patches = page_files[:-1]
    api = httpx.post(
        f"{live_server}/v1/predict",
        files=[("files", (f.name, f.read_bytes())) for f in patches],
        timeout=120,
    )
    expected = {r["id"]: r for r in api.json()["results"]}
    errors: list[str] = []

    page = browser.new_page(viewport={"width": 1120, "height": 900}, accept_downloads=True)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(live_server)
    sync_api.expect(page.locator("#model-line")).to_contain_text("threshold", timeout=20_000)

    page.set_input_files("#patch-input", [str(f) for f in page_files])

    values = page.locator("#results .p-value[data-p]")
    sync_api.expect(values).to_have_count(len(patches), timeout=120_000)
    scored_rows = page.locator("#results tbody tr", has=page.locator(".p-value[data-p]"))
    assert scored_rows.count() == len(patches)
    sync_api.expect(page.locator("#results td .error")).to_have_count(1)
    assert "notes.txt" in page.locator("#results tr", has=page.locator(".error")).inner_text()
    for row in scored_rows.all():
        want = expected[row.get_attribute("data-id")]
        shown = row.locator(".p-value")
        assert shown.inner_text() == f"{want['p_tumor']:.3f}"
        assert abs(float(shown.get_attribute("data-p")) - want["p_tumor"]) <= 1e-12
        assert row.locator(".badge").inner_text() == want["decision"]
    thumb = page.locator(f"#results tr[data-id='{patches[-1].name}'] img.thumb")
    assert thumb.get_attribute("src").startswith("data:image/png;base64,")

    page.select_option("#sort", "desc")
    shown = [float(v) for v in values.evaluate_all("els => els.map(e => e.dataset.p)")]
    assert shown == sorted(shown, reverse=True)

    scored_rows.first.click()
    sync_api.expect(page.locator("#cam-overlay")).to_have_attribute(
        "src", re.compile(r"^data:image/png;base64,"), timeout=60_000
    )
    sync_api.expect(page.locator("#cam-text")).to_contain_text("p(tumour)")
    page.click("#cam-close")

    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "histoscan-predictions.csv"
    with open(download.path()) as fh:
        rows = list(csv.DictReader(fh))

    screenshot = os.environ.get("HISTOSCAN_SCREENSHOT")
    page.screenshot(path=screenshot or tmp_path / "page.png", full_page=True)

    scored = [r for r in rows if r["p_tumor"]]
    assert len(rows) == len(page_files) and len(scored) == len(patches)
    assert [float(r["p_tumor"]) for r in scored] == sorted(
        (float(r["p_tumor"]) for r in scored), reverse=True
    )  # the table's order
    for r in scored:
        assert abs(float(r["p_tumor"]) - expected[r["id"]]["p_tumor"]) <= 5e-7
        assert r["decision"] == expected[r["id"]]["decision"]
    assert {r["id"] for r in scored} == {f.name for f in patches}
    # the only failed request is the one that sent notes.txt (415, shown in its row)
    assert [e for e in errors if "status of 415" not in e] == []
    assert len(errors) <= 2


@pytest.mark.parametrize("live_server", [{"token": "s3cret"}], indirect=True)
def test_page_asks_for_the_token_and_keeps_it_for_the_session(live_server, browser):
    page = browser.new_page()
    page.goto(live_server)
    sync_api.expect(page.locator("#token-form")).to_be_visible(timeout=20_000)

    page.fill("#token-input", "wrong")
    page.click("#token-form button")
    sync_api.expect(page.locator("#token-error")).to_contain_text("invalid token")
    page.fill("#token-input", "s3cret")
    page.click("#token-form button")

    sync_api.expect(page.locator("#model-line")).to_contain_text("threshold", timeout=20_000)
    assert page.evaluate("sessionStorage.getItem('histoscan-token')") == "s3cret"
    page.reload()
    sync_api.expect(page.locator("#model-line")).to_contain_text("threshold", timeout=20_000)
    assert page.locator("#token-form").is_hidden()


def test_docs_render_every_endpoint_in_chromium(live_server, browser):
    """Swagger UI draws the API (it refused FastAPI's OpenAPI 3.1 before), offline."""
    errors: list[str] = []
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: requests.append(req.url))
    page.goto(f"{live_server}/docs")
    sync_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text(
        "histoscan", timeout=30_000
    )
    spec = httpx.get(f"{live_server}/openapi.json").json()
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    blocks = page.locator(".opblock .opblock-summary")
    sync_api.expect(blocks).to_have_count(len(operations))
    shown = {
        (
            b.locator(".opblock-summary-method").inner_text().strip(),
            b.locator(".opblock-summary-path").inner_text().strip().replace("\u200b", ""),
        )
        for b in blocks.all()
    }
    assert shown == operations
    assert page.locator(".swagger-ui .errors-wrapper").count() == 0
    assert "Unable to render" not in page.locator("body").inner_text()

    # the upload field of /v1/predict is a file picker once "Try it out" is on (in 3.0 words:
    # an array of binary strings; a 3.1 contentMediaType would give a text box)
    predict = page.locator(".opblock-post", has=page.locator("[data-path='/v1/predict']"))
    predict.locator(".opblock-summary").click()
    predict.locator("button.try-out__btn").click()
    predict.locator("button.json-schema-form-item-add").click()
    sync_api.expect(predict.locator("input[type=file]")).to_have_count(1, timeout=10_000)
    assert all(url.startswith(live_server) for url in requests), "docs reached off the machine"
    assert errors == []
