"""`histoscan download pcam` against a local HTTP server: resume, checksums, atomic names."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from typer.testing import CliRunner

import histoscan.data.download as download
from histoscan.cli import data_cmds  # noqa: F401  (registers verify/prepare/download)
from histoscan.cli.app import app
from histoscan.data.download import PCAM_MD5, download_pcam, fetch, pcam_files
from histoscan.errors import DataError

runner = CliRunner()


class FileServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` by name, honours ``Range: bytes=N-``, and can drop connections."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, list[int]] = {}  # name -> bytes to send on successive GETs
        self.supports_range = True
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/files"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        name = urlparse(self.path).path.rsplit("/", 1)[-1]  # ignores ?download=1
        header = self.headers.get("Range")
        self.server.requests.append((name, header))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        if match and self.server.supports_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drops = self.server.drop_after.get(name)
        if drops:
            self.wfile.write(body[: drops.pop(0)])  # then hang up mid-body
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)
    monkeypatch.setattr(download, "CHUNK_BYTES", 4096)  # several reads per file


def payload(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def serve_pcam(server: FileServer, splits: tuple[str, ...] = ("valid",)) -> dict[str, str]:
    """Fixture bytes under the official names; returns their MD5s."""
    sums = {}
    for k, name in enumerate(pcam_files(splits)):
        data = payload(50_000 + 1000 * k, k)
        server.files[name] = data
        sums[name] = md5(data)
    return sums


def test_official_table_has_every_file() -> None:
    assert set(PCAM_MD5) == set(pcam_files())
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in PCAM_MD5.values())
    assert len(set(PCAM_MD5.values())) == 6


def test_full_download_with_checksums(server: FileServer, tmp_path: Path) -> None:
    sums = serve_pcam(server, ("valid", "test"))
    paths = download_pcam(
        tmp_path, ["valid", "test"], base_url=server.url, checksums=sums, progress=False
    )
    assert [p.name for p in paths] == pcam_files(["valid", "test"])
    for path in paths:
        assert path.read_bytes() == server.files[path.name]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)  # no .part left
    # a second run downloads nothing: the files are already there and check out
    server.requests.clear()
    download_pcam(tmp_path, ["valid", "test"], base_url=server.url, checksums=sums, progress=False)
    assert server.requests == []


def test_dropped_connection_resumes_in_the_same_run(server: FileServer, tmp_path: Path) -> None:
    name = "camelyonpatch_level_2_split_valid_x.h5.gz"
    data = payload(100_000, 7)
    server.files[name] = data
    server.drop_after[name] = [30_000, 25_000]  # two drops, then a full answer
    path = fetch(f"{server.url}/{name}?download=1", tmp_path / name, md5(data), progress=False)
    assert path.read_bytes() == data
    assert server.requests == [(name, None), (name, "bytes=30000-"), (name, "bytes=55000-")]
    assert not (tmp_path / f"{name}.part").exists()


def test_interrupted_run_resumes_next_time(server: FileServer, tmp_path: Path) -> None:
    name = "camelyonpatch_level_2_split_test_y.h5.gz"
    data = payload(80_000, 3)
    server.files[name] = data
    server.drop_after[name] = [20_000]
    url = f"{server.url}/{name}?download=1"
    with pytest.raises(DataError, match="run the command again to resume"):
        fetch(url, tmp_path / name, md5(data), retries=0, progress=False)
    part = tmp_path / f"{name}.part"
    assert part.stat().st_size == 20_000 and not (tmp_path / name).exists()
    fetch(url, tmp_path / name, md5(data), retries=0, progress=False)
    assert (tmp_path / name).read_bytes() == data and not part.exists()
    assert server.requests[-1] == (name, "bytes=20000-")


def test_complete_part_file_is_finished_without_refetching(
    server: FileServer, tmp_path: Path
) -> None:
    name = "camelyonpatch_level_2_split_test_x.h5.gz"
    data = payload(10_000, 1)
    server.files[name] = data
    (tmp_path / f"{name}.part").write_bytes(data)  # killed after the last byte, before rename
    fetch(f"{server.url}/{name}", tmp_path / name, md5(data), progress=False)
    assert (tmp_path / name).read_bytes() == data
    assert server.requests == [(name, "bytes=10000-")]  # answered 416: nothing more to send


def test_server_without_range_support_starts_over(server: FileServer, tmp_path: Path) -> None:
    name = "camelyonpatch_level_2_split_test_x.h5.gz"
    data = payload(10_000, 2)
    server.files[name] = data
    server.supports_range = False
    (tmp_path / f"{name}.part").write_bytes(data[:4000])
    fetch(f"{server.url}/{name}", tmp_path / name, md5(data), progress=False)
    assert (tmp_path / name).read_bytes() == data


def test_wrong_checksum_is_an_error_and_leaves_no_file(server: FileServer, tmp_path: Path) -> None:
    sums = serve_pcam(server)
    bad = dict(sums)
    bad["camelyonpatch_level_2_split_valid_x.h5.gz"] = "0" * 32
    with pytest.raises(DataError, match=r"MD5 of the download is .* expected 0{32}"):
        download_pcam(tmp_path, ["valid"], base_url=server.url, checksums=bad, progress=False)
    assert not (tmp_path / "camelyonpatch_level_2_split_valid_x.h5.gz").exists()
    assert not (tmp_path / "camelyonpatch_level_2_split_valid_x.h5.gz.part").exists()


def test_existing_file_with_wrong_checksum_is_reported(server: FileServer, tmp_path: Path) -> None:
    sums = serve_pcam(server)
    name = "camelyonpatch_level_2_split_valid_x.h5.gz"
    (tmp_path / name).write_bytes(b"something else")
    with pytest.raises(DataError, match="exists but its MD5"):
        download_pcam(tmp_path, ["valid"], base_url=server.url, checksums=sums, progress=False)


def test_missing_file_is_a_clear_error(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        download_pcam(tmp_path, ["train"], base_url=server.url, checksums={}, progress=False)


def test_unknown_split_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown PCam split"):
        download_pcam(tmp_path, ["val"], progress=False)


def test_cli_checks_against_the_published_md5(server: FileServer, tmp_path: Path) -> None:
    """Through the CLI the real table applies, so fixture bytes must fail the check."""
    serve_pcam(server)
    dest = tmp_path / "pcam"
    args = ["download", "pcam", "--dest", str(dest), "--splits", "valid"]
    result = runner.invoke(app, [*args, "--base-url", server.url, "--quiet"])
    assert result.exit_code == 2
    assert (
        "MD5 of the download" in result.output
        and PCAM_MD5[pcam_files(["valid"])[0]] in result.output
    )
    assert os.listdir(dest) == []


def test_cli_download(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sums = serve_pcam(server, ("test",))
    monkeypatch.setattr(download, "PCAM_MD5", sums)  # stands in for the published table
    dest = tmp_path / "pcam"
    args = ["download", "pcam", "--dest", str(dest), "--splits", "test", "--base-url", server.url]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(dest)) == sorted(sums)
    assert "next: histoscan verify" in result.output


def test_cli_download_only_knows_pcam(tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "imagenet", "--dest", str(tmp_path)])
    assert result.exit_code == 2 and "imagenet" in result.output
