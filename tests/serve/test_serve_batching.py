"""The micro-batcher: requests that arrive together share a forward pass, and each gets its own."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from histoscan.serve.batching import MicroBatcher


class Recorder:
    """A fake model: probability = first pixel / 255; remembers each batch size."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once the worker is inside a forward pass

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        self.sizes.append(len(images))
        if self.fail:
            raise RuntimeError("model broke")
        return images[:, 0, 0, 0] / 255.0


def patches(*values: int) -> np.ndarray:
    out = np.zeros((len(values), 4, 4, 3), dtype=np.uint8)
    out[:, 0, 0, 0] = values
    return out


def test_requests_arriving_together_share_one_forward():
    """Requests queued while the model is busy share the next forward pass: no timing involved.

    The worker is held inside a first forward; five requests queue behind it; once released,
    the worker takes all five that are already waiting, even with no waiting time at all.
    """
    model = Recorder()
    model.gate.clear()
    batcher = MicroBatcher(model, max_batch=64, max_wait_ms=0)
    try:
        blocker = batcher.submit(patches(250))
        assert model.entered.wait(10)
        futures = [batcher.submit(patches(10 * i, 10 * i + 1)) for i in range(5)]
        model.gate.set()
        results = [f.result(10) for f in futures]
        blocker.result(10)
    finally:
        batcher.close()
    assert model.sizes == [1, 10]
    for i, probs in enumerate(results):  # each caller gets its own rows back, in order
        np.testing.assert_allclose(probs, [10 * i / 255, (10 * i + 1) / 255])


def test_max_batch_splits_between_requests():
    model = Recorder()
    model.gate.clear()  # hold the first forward so the rest queue up behind it
    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0)
    try:
        first = batcher.submit(patches(1))
        assert model.entered.wait(10)
        futures = [batcher.submit(patches(2, 3)) for _ in range(3)]
        model.gate.set()
        first.result(10)
        [f.result(10) for f in futures]
    finally:
        batcher.close()
    # a request is never split; a batch stops growing once it reaches max_batch (2 + 2 = 4)
    assert model.sizes == [1, 4, 2]
    assert batcher.stats() == {"batches": 3, "patches": 7, "mean_batch": 7 / 3}


def test_error_reaches_every_caller_and_the_worker_survives():
    model = Recorder(fail=True)
    batcher = MicroBatcher(model, max_batch=64, max_wait_ms=50)
    try:
        futures = [batcher.submit(patches(1)) for _ in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="model broke"):
                f.result(5)
        model.fail = False
        assert batcher.submit(patches(51)).result(5)[0] == pytest.approx(0.2)
    finally:
        batcher.close()


def test_close_finishes_queued_work():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0)
    futures = [batcher.submit(patches(i)) for i in range(5)]
    batcher.close()
    assert [float(f.result(0)[0]) for f in futures] == pytest.approx([i / 255 for i in range(5)])
    assert batcher.stats()["patches"] == 5
