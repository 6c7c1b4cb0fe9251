"""Micro-batching: requests that arrive together share one forward pass.

Each request submits its patches and gets a future. One worker thread takes the first waiting
request, keeps collecting for up to ``max_wait_ms`` or until ``max_batch`` patches, runs the model
once on the concatenation and hands each request its slice. Running the model in this thread also
keeps the event loop free to accept uploads while the CPU is busy.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Request:
    images: np.ndarray  # (n, H, W, 3) uint8
    future: Future


class MicroBatcher:
    """Run ``predict(images (N, H, W, 3)) -> (N,)`` on batches gathered from many callers."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
    ) -> None:
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.n_batches = 0
        self.n_patches = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="histoscan-batcher", daemon=True
                )
                self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the requests already queued, then stop the worker."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def submit(self, images: np.ndarray) -> Future:
        """Queue patches (n, H, W, 3); the future resolves to their probabilities (n,)."""
        self.start()
        future: Future = Future()
        self._queue.put(_Request(images, future))
        return future

    async def run(self, images: np.ndarray) -> np.ndarray:
        """Awaitable ``submit``: the event loop keeps serving while the batch runs."""
        return await asyncio.wrap_future(self.submit(images))

    def stats(self) -> dict[str, int | float]:
        mean = self.n_patches / self.n_batches if self.n_batches else 0.0
        return {"batches": self.n_batches, "patches": self.n_patches, "mean_batch": mean}

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """The first request plus those arriving within the wait; True if told to stop."""
        batch = [first]
        size = len(first.images)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    item = self._queue.get(timeout=remaining)
                else:  # past the deadline: only what is already waiting joins
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            size += len(item.images)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            # a caller that gave up (cancelled future) does not cost a forward pass
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            images = np.concatenate([r.images for r in batch])  # (sum n, H, W, 3)
            probs = self.predict(images)
        except Exception as exc:  # every waiting caller hears about it
            log.exception("batched prediction failed")
            for r in batch:
                r.future.set_exception(exc)
            return
        self.n_batches += 1
        self.n_patches += len(images)
        start = 0
        for r in batch:
            r.future.set_result(probs[start : start + len(r.images)])
            start += len(r.images)
