"""Download the official PatchCamelyon files from Zenodo, resumably and checked.

Each file is fetched into ``<name>.part`` with HTTP Range requests, so an interrupted transfer
continues where it stopped (within one run, and in the next run); it gets its final name only
after its MD5 matches the published one, so a file under its final name is always complete.
The files stay gzipped: ``open_source`` decompresses a ``.h5.gz`` once, into a cache beside it.
Only the standard library talks HTTP.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from histoscan import __version__
from histoscan.data.pcam import SPLITS, pcam_name
from histoscan.errors import DataError
from histoscan.progress import progress_bar

log = logging.getLogger(__name__)

ZENODO_URL = "https://zenodo.org/records/2546921/files"
# MD5 of the .h5.gz files as served (the same bytes on Zenodo and the authors' Google Drive).
# The table in the pcam README swaps valid and test; these are the corrected values used by
# torchvision (pytorch/vision#6644) and confirmed in basveeling/pcam issues #1 and #4.
PCAM_MD5 = {
    "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    "camelyonpatch_level_2_split_valid_x.h5.gz": "d5b63470df7cfa627aeec8b9dc0c066e",
    "camelyonpatch_level_2_split_valid_y.h5.gz": "2b85f58b927af9964a4c15b8f7e8f179",
    "camelyonpatch_level_2_split_test_x.h5.gz": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "camelyonpatch_level_2_split_test_y.h5.gz": "60a7035772fbdb7f34eb86d4420cf66a",
}
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not for the whole file
RETRY_WAIT_S = 2.0  # doubled after each failed try, at most 60 s
CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is kept in the .part file."""


def pcam_files(splits: Sequence[str] = SPLITS) -> list[str]:
    """The .h5.gz names for ``splits`` (x and y of each)."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise DataError(
            f"unknown PCam split {', '.join(unknown)!r} (choose from {', '.join(SPLITS)})"
        )
    return [pcam_name(split, part) + ".gz" for split in splits for part in ("x", "y")]


def download_pcam(
    dest: Path,
    splits: Sequence[str] = SPLITS,
    base_url: str = ZENODO_URL,
    checksums: Mapping[str, str] | None = None,
    retries: int = 3,
    progress: bool = True,
) -> list[Path]:
    """Fetch the PCam x/y files of ``splits`` into ``dest``; return their paths.

    Args:
        dest: folder to download into (created); files already there are checked, not fetched.
        splits: any of train, valid, test.
        base_url: where the files are, ``<base_url>/<name>?download=1`` (Zenodo by default).
        checksums: MD5 per file name; the published ``PCAM_MD5`` by default.
        retries: reconnections per file after a dropped connection, resuming each time.
        progress: show a rich progress bar per file.
    """
    names = pcam_files(splits)
    checksums = PCAM_MD5 if checksums is None else checksums
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot create the download folder ({exc})") from exc
    if not os.access(dest, os.W_OK):
        raise DataError(f"{dest}: folder is not writable")
    paths = []
    for name in names:
        url = f"{base_url.rstrip('/')}/{name}?download=1"
        paths.append(fetch(url, dest / name, checksums.get(name), retries, progress))
    return paths


def fetch(url: str, path: Path, md5: str | None, retries: int = 3, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` through ``path.part``, resuming it; check ``md5`` if given."""
    if path.exists():
        _check_existing(path, md5, progress)
        return path
    part = _PartFile(path.with_name(path.name + ".part"))
    if part.size:
        log.info("%s: resuming at byte %s", part.path.name, f"{part.size:,}")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, progress)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise DataError(
                    f"{url}: download interrupted at byte {part.size:,} ({exc}); "
                    f"run the command again to resume from {part.path}"
                ) from None
            wait = min(RETRY_WAIT_S * 2**attempt, 60.0)
            log.warning(
                "%s: %s; resuming at byte %s in %.0f s", path.name, exc, f"{part.size:,}", wait
            )
            time.sleep(wait)
    actual = part.md5.hexdigest()
    if md5 is not None and actual != md5.lower():
        part.path.unlink(missing_ok=True)  # a resumed bad prefix would stay bad: start over
        raise DataError(
            f"{url}: MD5 of the download is {actual}, expected {md5}; the file was deleted, "
            "run the command again to download it afresh"
        )
    if md5 is None:
        log.warning("%s: no published checksum, not verified (MD5 %s)", path.name, actual)
    os.replace(part.path, path)
    log.info("%s: %s bytes%s", path, f"{part.size:,}", ", MD5 ok" if md5 else "")
    return path


class _PartFile:
    """The ``.part`` file and the MD5 of the bytes in it, kept in step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.md5 = hashlib.md5()
        self.size = 0
        if path.exists():
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK_BYTES):
                    self.md5.update(block)
                    self.size += len(block)

    def reset(self) -> None:
        self.path.write_bytes(b"")
        self.md5 = hashlib.md5()
        self.size = 0


def _transfer(url: str, part: _PartFile, progress: bool) -> None:
    """One request: append the rest of the file to ``part``; raise _Interrupted if it stops."""
    headers = {"User-Agent": f"histoscan/{__version__}"}
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and part.size:
            return  # nothing left after our offset: the .part is complete; the MD5 decides
        if exc.code == 429 or exc.code >= 500:  # busy or briefly broken: worth another try
            raise _Interrupted(f"HTTP {exc.code} {exc.reason}") from None
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Interrupted(f"cannot connect: {getattr(exc, 'reason', exc)}") from None
    with response:
        total = _expected_total(response, part)
        if total is not None:
            _check_disk_space(part.path, total - part.size)
        with (
            open(part.path, "ab") as fh,
            progress_bar(part.path.name[: -len(".part")], total, show=progress, unit="B") as bar,
        ):
            bar.update(part.size)
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as exc:
                    raise _Interrupted(f"connection lost: {exc!r}") from None
                if not block:
                    break
                fh.write(block)
                part.md5.update(block)
                part.size += len(block)
                bar.update(part.size)
    if total is not None and part.size < total:
        raise _Interrupted(f"connection closed at byte {part.size:,} of {total:,}")


def _expected_total(response: http.client.HTTPResponse, part: _PartFile) -> int | None:
    """The full file size, after making sure the body continues ``part`` exactly."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != part.size:
            part.reset()  # the server answered another range; start over on the next try
            raise _Interrupted("server resumed at an unexpected byte")
        return None if match.group(3) == "*" else int(match.group(3))
    if part.size:
        log.info("%s: server does not resume downloads; starting over", part.path.name)
        part.reset()
    return int(length) if length is not None else None


def _check_disk_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise DataError(
            f"{path.parent}: {path.name} needs {needed / 1e9:.1f} GB more, "
            f"only {free / 1e9:.1f} GB free"
        )


def _check_existing(path: Path, md5: str | None, progress: bool) -> None:
    """A file already under its final name was checked when it arrived; check it again."""
    if md5 is None:
        log.info("%s: already there", path)
        return
    digest = hashlib.md5()
    with (
        open(path, "rb") as fh,
        progress_bar(f"check {path.name}", path.stat().st_size, show=progress, unit="B") as bar,
    ):
        while block := fh.read(CHUNK_BYTES):
            digest.update(block)
            bar.advance(len(block))
    if digest.hexdigest() != md5.lower():
        raise DataError(
            f"{path}: exists but its MD5 is {digest.hexdigest()}, expected {md5}; "
            "delete it and run the command again"
        )
    log.info("%s: already there, MD5 ok", path)
