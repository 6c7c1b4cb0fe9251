"""The slide job queue on its own, with a fake analysis: order, clearing, cancelling, cleanup."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from histoscan.errors import DataError, HistoscanError
from histoscan.serve.jobs import DONE, FAILED, SlideJobs


class FakeAnalysis:
    """Writes the outputs after ``steps`` progress calls; can be held at a step."""

    def __init__(self, steps: int = 3) -> None:
        self.steps = steps
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.order: list[str] = []

    def __call__(self, path: Path, out_dir: Path, predictor, mpp=None, tta="none", progress=None):
        self.order.append(path.read_text())
        self.started.set()
        for done in range(self.steps + 1):
            progress(done, self.steps)
            self.hold.wait(10)
        if path.read_text() == "bad":
            raise DataError(f"{path}: unknown resolution")
        out_dir.mkdir()
        (out_dir / "heatmap.png").write_bytes(b"png")
        return {"slide": str(path), "tiles": self.steps}


def wait(jobs: SlideJobs, job_id: str, status: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while jobs.get(job_id).status != status:
        assert time.monotonic() < deadline, jobs.get(job_id).status
        time.sleep(0.01)


def test_jobs_run_in_order_and_hide_private_paths():
    analysis = FakeAnalysis()
    jobs = SlideJobs(analysis, predictor=None)
    try:
        a = jobs.submit(io.BytesIO(b"first"), "a.svs", ".svs", 0.25)
        b = jobs.submit(io.BytesIO(b"bad"), "b.svs", ".svs", None)
        wait(jobs, a.id, DONE)
        wait(jobs, b.id, FAILED)
    finally:
        jobs.close()
    assert analysis.order == ["first", "bad"]
    assert a.summary == {"slide": "a.svs", "tiles": 3} and (a.done, a.total) == (3, 3)
    assert b.error == "b.svs: unknown resolution"
    assert not a.slide_path.exists()  # the upload goes once analysed; outputs stay until cleared


def test_clearing_a_running_job_stops_it_and_deletes_its_files():
    analysis = FakeAnalysis()
    analysis.hold.clear()
    jobs = SlideJobs(analysis, predictor=None)
    try:
        running = jobs.submit(io.BytesIO(b"slow"), "s.tif", ".tif", None)
        waiting = jobs.submit(io.BytesIO(b"next"), "n.tif", ".tif", None)
        assert analysis.started.wait(10)
        assert jobs.position(waiting) == 1
        assert jobs.clear(running.id)
        analysis.hold.set()
        wait(jobs, waiting.id, DONE)
        assert running.status == FAILED and not running.folder.exists()
        assert jobs.get(running.id) is None
        assert not jobs.clear(running.id)
    finally:
        jobs.close()


def test_limits_and_cleanup():
    jobs = SlideJobs(FakeAnalysis(), predictor=None, max_jobs=1)
    root = jobs.root
    assert root.stat().st_mode & 0o777 == 0o700
    jobs.submit(io.BytesIO(b"x"), "x.png", ".png", None)
    with pytest.raises(HistoscanError, match="clear finished ones"):
        jobs.submit(io.BytesIO(b"y"), "y.png", ".png", None)
    jobs.close()
    assert not root.exists()


def test_one_job_runs_at_a_time_while_the_rest_wait():
    """Deterministic: the first analysis is held, so the others must be queued behind it."""
    analysis = FakeAnalysis()
    analysis.hold.clear()
    running_now: list[int] = []
    most = [0]
    lock = threading.Lock()

    def counting(path, out_dir, predictor, **kw):
        with lock:
            running_now.append(1)
            most[0] = max(most[0], len(running_now))
        try:
            return analysis(path, out_dir, predictor, **kw)
        finally:
            with lock:
                running_now.pop()

    jobs = SlideJobs(counting, predictor=None)
    try:
        submitted = [
            jobs.submit(io.BytesIO(f"s{i}".encode()), f"{i}.tif", ".tif", None) for i in range(3)
        ]
        assert analysis.started.wait(10)
        assert [j.status for j in submitted] == ["running", "queued", "queued"]
        assert [jobs.position(j) for j in submitted[1:]] == [1, 2]
        analysis.hold.set()
        for job in submitted:
            wait(jobs, job.id, DONE)
    finally:
        jobs.close()
    assert most[0] == 1
    assert analysis.order == ["s0", "s1", "s2"]
