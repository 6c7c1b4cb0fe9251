"""Engines and devices (``histoscan/models/engines.py``), on hand-made graphs and fake machines.

Written to kill the mutants of engines.py (scripts/mutants.py): the ONNX engine's outputs and
session settings, device names, core counting from /proc/cpuinfo, and the bf16 flag.
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
import pytest

import histoscan.models.engines as engines
from handmade_onnx import (
    expected_features,
    expected_logits,
    patches,
    small_meta,
    weight_map,
    weighted_sum_graph,
)
from histoscan.errors import ModelError
from histoscan.models.engines import OnnxEngine, onnx_session_meta, resolve_device

W = weight_map(1)


def fake_open(text: str | None):  # type: ignore[no-untyped-def]
    """An ``open`` that serves ``text`` for /proc/cpuinfo (OSError when None)."""

    def opener(path: str, *args: object, **kwargs: object) -> io.StringIO:
        assert path == "/proc/cpuinfo"
        if text is None:
            raise OSError("no /proc")
        return io.StringIO(text)

    return opener


def cpuinfo(siblings: int, cores: int, cpus: int = 2, flags: str = "fpu sse2") -> str:
    block = (
        "processor\t: {i}\nmodel name\t: Test CPU\nflags\t\t: {flags}\n"
        "siblings\t: {siblings}\ncpu cores\t: {cores}\n\n"
    )
    return "".join(
        block.format(i=i, flags=flags, siblings=siblings, cores=cores) for i in range(cpus)
    )


def test_onnx_engine_runs_each_view_by_hand() -> None:
    engine = OnnxEngine(weighted_sum_graph(small_meta(), W, 7.0, -0.5), "onnx", "fp32", threads=1)
    images = patches(3, seed=4)
    # out[i][j] = in[W-1-j][i] (three quarter turns) and in[j][i] (mirror + quarter: transpose)
    turned = {0: images, 3: images[:, ::-1].swapaxes(1, 2), 5: images.swapaxes(1, 2)}
    logits, feats = engine.run_views(images, [0, 3, 5], features=True)
    assert logits.dtype == np.float64 and logits.shape == (3, 3)
    for j, k in enumerate((0, 3, 5)):
        expected = expected_logits(turned[k], W, 7.0, -0.5)
        np.testing.assert_allclose(logits[:, j], expected, atol=1e-4)
    np.testing.assert_allclose(feats, expected_features(images, W), atol=1e-4)
    logits, feats = engine.run_views(images, [5, 0])
    assert feats.shape == (3, 0) and feats.dtype == np.float32
    np.testing.assert_allclose(logits[:, 0], expected_logits(turned[5], W, 7.0, -0.5), atol=1e-4)


def test_onnx_engine_logits_and_features_by_hand() -> None:
    engine = OnnxEngine(weighted_sum_graph(small_meta(), W, 7.0, -0.5), "onnx", "fp32", threads=1)
    assert (engine.name, engine.precision, engine.device) == ("onnx", "fp32", "cpu")
    assert engine.has_features
    images = patches(5, seed=2)
    logits, feats = engine.run(images)
    assert logits.dtype == np.float64 and logits.shape == (5,)
    np.testing.assert_allclose(logits, expected_logits(images, W, 7.0, -0.5), atol=1e-4)
    assert feats.shape == (5, 0) and feats.dtype == np.float32
    logits, feats = engine.run(images, features=True)
    np.testing.assert_allclose(logits, expected_logits(images, W, 7.0, -0.5), atol=1e-4)
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats, expected_features(images, W), atol=1e-5)
    wide = images.astype(np.int64)  # integers of another width are read as uint8 patches
    expected = expected_logits(images, W, 7.0, -0.5)
    np.testing.assert_allclose(engine.run(wide)[0], expected, atol=1e-4)
    # a non-contiguous view (a mirror) is copied, not misread
    mirror = images[:, :, ::-1]
    np.testing.assert_allclose(
        engine.run(mirror)[0], expected_logits(mirror, W, 7.0, -0.5), atol=1e-4
    )


def test_a_graph_without_features_says_so() -> None:
    engine = OnnxEngine(weighted_sum_graph(small_meta(), W, features=False), "onnx-int8", "int8")
    assert not engine.has_features
    assert (engine.name, engine.precision) == ("onnx-int8", "int8")
    images = patches(2)
    np.testing.assert_allclose(
        engine.run(images)[0], expected_logits(images, W, 1.0, 0.0), atol=1e-4
    )
    with pytest.raises(
        ModelError,
        match=r"^this ONNX graph has no features output; re-export it with "
        r"`histoscan export-onnx` or use --engine torch$",
    ):
        engine.run(images, features=True)


def test_session_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = weighted_sum_graph(small_meta(), W)
    made: list[ort.SessionOptions] = []
    real = ort.InferenceSession

    def recording(model, options, providers):  # type: ignore[no-untyped-def]
        made.append(options)
        assert providers == ["CPUExecutionProvider"]
        return real(model, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    monkeypatch.setattr(engines, "physical_cores", lambda: 5)
    OnnxEngine(graph, "onnx", "fp32")
    OnnxEngine(graph, "onnx", "fp32", threads=3)
    assert [o.intra_op_num_threads for o in made] == [5, 3]
    for options in made:
        assert options.inter_op_num_threads == 1
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no spin-waiting: the decoding thread needs these cores between runs
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_graph_from_a_path_and_its_metadata(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "g.onnx"
    path.write_bytes(weighted_sum_graph(small_meta(), W, extra_props={"producer": "hand"}))
    engine = OnnxEngine(path, "onnx", "fp32")
    meta = onnx_session_meta(engine)
    assert meta["producer"] == "hand"
    assert set(meta) == {"producer", "histoscan"}


def test_unloadable_graphs_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match=r"^exported model: onnxruntime cannot load it \("):
        OnnxEngine(b"not a graph", "onnx", "fp32")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match=rf"^{bad}: onnxruntime cannot load it"):
        OnnxEngine(bad, "onnx", "fp32")


@pytest.mark.parametrize(
    ("device", "expected"), [("auto", "cpu"), ("cpu", "cpu"), (" CPU ", "cpu"), ("Auto", "cpu")]
)
def test_cpu_devices(device: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "cuda_available", lambda: False)
    assert resolve_device(device) == expected


def test_default_device_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "cuda_available", lambda: True)
    assert resolve_device() == "cuda:0"
    monkeypatch.setattr(engines, "cuda_available", lambda: False)
    assert resolve_device() == "cpu"


def test_cuda_devices_by_number(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(engines, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("CUDA:1") == "cuda:1"
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ModelError, match=r"^--device cuda:2: only 2 CUDA devices$"):
        resolve_device("cuda:2")
    with pytest.raises(
        ModelError, match=r"^--device 'cuda:x': expected auto, cpu, cuda or cuda:N$"
    ):
        resolve_device("cuda:x")


def test_cuda_without_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "cuda_available", lambda: False)
    with pytest.raises(ModelError, match=r"^--device cuda: no CUDA device here; use --device cpu$"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match=r"^--device cuda:1: no CUDA device here"):
        resolve_device("cuda:1")
    for bad in ("tpu", "cudax", "gpu:0", ""):
        with pytest.raises(ModelError, match=rf"^--device {bad!r}: expected auto, cpu, cuda or"):
            resolve_device(bad)


def test_cuda_available_needs_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def exists(self) -> bool:  # type: ignore[no-untyped-def]
        seen.append(str(self))
        return False

    monkeypatch.setattr(engines.Path, "exists", exists)
    assert engines.cuda_available.__wrapped__() is False
    assert seen == ["/proc/driver/nvidia", "/dev/nvidiactl"]


def test_cuda_available_asks_torch_when_a_driver_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(engines.Path, "exists", lambda self: str(self) == "/dev/nvidiactl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engines.cuda_available.__wrapped__() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engines.cuda_available.__wrapped__() is False
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engines.cuda_available.__wrapped__() is False  # no torch installed


@pytest.mark.parametrize(
    ("usable", "siblings", "cores", "expected"),
    [
        (4, 4, 2, 2),  # two hyper-threads per core: half are cores
        (4, 2, 2, 4),  # no hyper-threads
        (3, 8, 4, 1),  # 3 * 4 // 8 = 1
        (1, 2, 1, 1),  # never below one
        (6, 12, 4, 2),  # 6 * 4 // 12
    ],
)
@pytest.mark.parametrize("cpus", [1, 3])
def test_physical_cores_from_cpuinfo(
    usable: int,
    siblings: int,
    cores: int,
    expected: int,
    cpus: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engines.os, "sched_getaffinity", lambda pid: set(range(usable)))
    info = cpuinfo(siblings, cores, cpus)  # one processor block, or several alike
    monkeypatch.setattr(engines, "open", fake_open(info), raising=False)
    assert engines.physical_cores() == expected


def test_physical_cores_without_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(engines, "open", fake_open(None), raising=False)
    assert engines.physical_cores() == 3
    monkeypatch.setattr(
        engines, "open", fake_open("processor\t: 0\nsiblings\t: x\n"), raising=False
    )
    assert engines.physical_cores() == 3  # unreadable numbers: the affinity count
    monkeypatch.setattr(engines, "open", fake_open("siblings\t: 4\n"), raising=False)
    assert engines.physical_cores() == 3  # no "cpu cores" line


def test_physical_cores_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(engines.os, "sched_getaffinity")
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(engines, "open", fake_open(None), raising=False)
    assert engines.physical_cores() == 8
    monkeypatch.setattr(engines.os, "cpu_count", lambda: None)
    assert engines.physical_cores() == 1


def test_physical_cores_here_is_within_the_affinity() -> None:
    assert 1 <= engines.physical_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu avx512f avx512_bf16", True),
        ("fpu amx_bf16 amx_tile", True),
        ("fpu avx2 avx512f", False),
    ],
)
def test_bf16_flag(flags: str, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "open", fake_open(cpuinfo(2, 2, flags=flags)), raising=False)
    assert engines.cpu_has_bf16.__wrapped__() is expected


def test_bf16_flag_without_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "open", fake_open(None), raising=False)
    assert engines.cpu_has_bf16.__wrapped__() is False
