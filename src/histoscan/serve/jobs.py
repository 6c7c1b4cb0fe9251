"""Slide jobs: uploads wait in a queue and run in worker threads, one at a time by default.

Uploads live in a private temporary folder (``mkdtemp``, mode 0700) under generated names: the
client's file name is only echoed back, never used as a path. Outputs are served by fixed names
(``ARTIFACTS``). Clearing a job deletes its folder; ``close()`` deletes everything.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from histoscan.errors import HistoscanError
from histoscan.io import atomic_write

log = logging.getLogger(__name__)

ARTIFACTS = {
    "heatmap.png": "image/png",
    "tiles.csv": "text/csv",
    "tumor.geojson": "application/geo+json",
    "summary.json": "application/json",
}
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
)
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


class JobCancelled(Exception):
    """Raised from the progress callback to stop a job that was cleared while running."""


@dataclass
class SlideJob:
    """One uploaded slide and what became of it."""

    id: str
    file_name: str  # as the client sent it: echoed, never used as a path
    folder: Path
    slide_path: Path
    mpp: float | None
    status: str = QUEUED
    done: int = 0
    total: int = 0
    error: str | None = None
    summary: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"


# analyse_slide(path, out_dir, predictor, mpp=..., tta=..., progress=...) -> summary
Analyse = Callable[..., dict[str, Any]]


class SlideJobs:
    """A queue of slide jobs served by ``workers`` threads."""

    def __init__(
        self,
        analyse: Analyse,
        predictor: Any,
        tta: str = "none",
        workers: int = 1,
        max_jobs: int = 32,
    ) -> None:
        self.analyse = analyse
        self.predictor = predictor
        self.tta = tta
        self.n_workers = workers
        self.max_jobs = max_jobs
        self._jobs: dict[str, SlideJob] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._root: Path | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def root(self) -> Path:
        """The private folder for uploads, made on first use."""
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="histoscan-serve-"))  # mode 0700
                # also removed if the process ends without a clean shutdown of the app
                self._finalizer = weakref.finalize(self, shutil.rmtree, self._root, True)
            return self._root

    def _start_workers(self) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            for i in range(len(self._threads), self.n_workers):
                thread = threading.Thread(
                    target=self._loop, name=f"histoscan-slides-{i}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def submit(self, upload: BinaryIO, file_name: str, suffix: str, mpp: float | None) -> SlideJob:
        """Copy an upload into a new job folder and queue it."""
        with self._lock:
            kept = len(self._jobs)
        if kept >= self.max_jobs:
            raise HistoscanError(f"{kept} slide jobs are kept; clear finished ones first")
        if suffix not in SLIDE_SUFFIXES:
            raise ValueError(f"suffix {suffix!r} not allowed")  # the route checks this first
        job_id = secrets.token_urlsafe(12)
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
        slide_path = folder / f"slide{suffix}"
        try:
            with open(slide_path, "xb") as out:
                shutil.copyfileobj(upload, out, 1 << 20)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = SlideJob(job_id, file_name, folder, slide_path, mpp)
        with self._lock:
            self._jobs[job_id] = job
        self._start_workers()
        self._queue.put(job_id)
        return job

    def get(self, job_id: str) -> SlideJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def snapshot(self) -> list[SlideJob]:
        """Every kept job, oldest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def position(self, job: SlideJob) -> int:
        """How many jobs run or wait before this one (0 once it runs)."""
        if job.status != QUEUED:
            return 0
        with self._lock:
            return sum(
                1
                for j in self._jobs.values()
                if j.status in (QUEUED, RUNNING) and j.created < job.created
            )

    def clear(self, job_id: str) -> bool:
        """Forget a job and delete its files; a running job stops at its next progress step."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        job.cancelled.set()
        if job.status != RUNNING:  # a running job's worker deletes the folder when it stops
            shutil.rmtree(job.folder, ignore_errors=True)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the workers and delete every upload and output."""
        with self._lock:
            job_ids = list(self._jobs)
        for job_id in job_ids:
            self.clear(job_id)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []
        if self._finalizer is not None:
            self._finalizer()  # rmtree of the whole private folder
            self._root = None
            self._finalizer = None

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self.get(job_id)
            if job is not None and not job.cancelled.is_set():
                self._run(job)

    def _progress(self, job: SlideJob, done: int, total: int) -> None:
        if job.cancelled.is_set():
            raise JobCancelled(job.id)
        job.done, job.total = int(done), int(total)

    def _run(self, job: SlideJob) -> None:
        job.status = RUNNING
        try:
            summary = self.analyse(
                job.slide_path,
                job.out_dir,
                self.predictor,
                mpp=job.mpp,
                tta=self.tta,
                progress=lambda done, total: self._progress(job, done, total),
            )
        except JobCancelled:
            job.status, job.error = FAILED, "cleared while running"
        except HistoscanError as exc:
            job.status, job.error = FAILED, self._hide_paths(str(exc), job)
        except Exception as exc:  # a bug, or a slide that breaks a reader in a new way
            log.exception("slide job %s failed", job.id)
            job.status, job.error = FAILED, f"internal error while analysing ({type(exc).__name__})"
        else:
            job.summary = self._public(summary, job)
            summary_file = job.out_dir / "summary.json"
            if summary_file.is_file():  # the served file must not carry the private folder either
                atomic_write(summary_file, json.dumps(job.summary, indent=2))
            job.done = job.total
            job.status = DONE
        finally:
            job.finished = time.time()
            # the slide itself is no longer needed; outputs stay until the job is cleared
            job.slide_path.unlink(missing_ok=True)
            if job.cancelled.is_set():
                shutil.rmtree(job.folder, ignore_errors=True)

    def _hide_paths(self, text: str, job: SlideJob) -> str:
        """Messages name the client's file, never the private folder."""
        return text.replace(str(job.slide_path), job.file_name).replace(str(job.folder), "")

    def _public(self, value: Any, job: SlideJob) -> Any:
        """The summary with private paths replaced, as plain JSON values."""
        if isinstance(value, dict):
            return {str(k): self._public(v, job) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._public(v, job) for v in value]
        if isinstance(value, Path | str):
            text = str(value)
            if text.startswith(str(job.folder)):
                return job.file_name if Path(text) == job.slide_path else Path(text).name
            if isinstance(value, Path) or (text.startswith("/") and "\n" not in text):
                return Path(text).name  # any other server path (the model file, a cache)
            return self._hide_paths(text, job)
        if isinstance(value, np.ndarray | np.generic):
            return value.tolist()
        return value
