"""Engines: what runs the network on one batch of uint8 patches. One protocol, three engines.

- ``torch``: eager PyTorch on cpu or cuda, channels_last, bf16 autocast where the hardware
  computes bf16 natively (``models/torch_engine.py``; needs the ``train`` extra).
- ``onnx``: onnxruntime on the fp32 graph exported with the preprocessing inside.
- ``onnx-int8``: onnxruntime on the static int8 (QDQ) graph.

Every engine maps uint8 (B, H, W, 3) to logits (B,) and, when asked and able, pooled pre-logit
features (B, D). Nothing here imports torch.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from histoscan.data.views import dihedral_hwc
from histoscan.errors import ModelError

log = logging.getLogger(__name__)
ENGINES = ("torch", "onnx", "onnx-int8")


class Engine(Protocol):
    """Runs the network on one batch."""

    name: str  # torch, onnx or onnx-int8
    precision: str  # fp32, bf16 or int8
    device: str  # cpu, cuda:0, ...
    has_features: bool

    def run(self, images: np.ndarray, features: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B,) float64 and features (B, D) float32 ((B, 0) unless asked).

        ``images`` are uint8 (B, H, W, 3).
        """
        ...

    def run_views(
        self, images: np.ndarray, views: list[int], features: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits of each dihedral view (B, V) float64 and the first view's features (B, D)."""
        ...


def views_on_host(
    engine: Engine, images: np.ndarray, views: list[int], features: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``run_views`` with each view made in numpy, then run (the ONNX engines: all on the CPU)."""
    runs = [
        engine.run(dihedral_hwc(images, k), features=features and j == 0)  # view 0: no copy
        for j, k in enumerate(views)
    ]
    return np.stack([logits for logits, _ in runs], axis=1), runs[0][1]


@functools.cache
def cuda_available() -> bool:
    """True where a CUDA device can be used; never imports torch on a machine without a driver."""
    if not (Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists()):
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda:0`` when CUDA is present, else ``cpu``; checks ``cuda[:N]``."""
    text = str(device).strip().lower()
    if text == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2] or "0"
        if not index.isdigit():
            raise ModelError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
        if not cuda_available():
            raise ModelError(f"--device {device}: no CUDA device here; use --device cpu")
        import torch

        if int(index) >= torch.cuda.device_count():
            raise ModelError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
        return f"cuda:{index}"
    raise ModelError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def physical_cores() -> int:
    """CPU cores this process may use (affinity-aware), counting each core once."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        siblings = [int(line.split(":")[1]) for line in text.splitlines() if "siblings" in line]
        cores = [int(line.split(":")[1]) for line in text.splitlines() if "cpu cores" in line]
        if siblings and cores and siblings[0] > cores[0]:  # hyper-threads: half are not cores
            usable = max(1, usable * cores[0] // siblings[0])
    except (OSError, ValueError, IndexError):
        pass
    return max(1, usable)


class OnnxEngine:
    """onnxruntime on an exported graph: uint8 (B, H, W, 3) -> logits (B,) [, features (B, D)]."""

    def __init__(self, model: str | Path | bytes, name: str, precision: str, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # one intra-op thread per physical core: hyper-threads slow convolutions down
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no spin-waiting between runs: the next batch is decoded on these cores meanwhile
        # (12.3 s -> 10.7 s for 4,096 .tif patches through Predictor.infer_source, 2 cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        where = "exported model" if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            raise ModelError(f"{where}: onnxruntime cannot load it ({exc})") from exc
        outputs = [o.name for o in self.session.get_outputs()]
        self.name = name
        self.precision = precision
        self.device = "cpu"
        self.has_features = "features" in outputs
        self._logits = outputs[0]

    def run(self, images: np.ndarray, features: bool = False) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if features and self.has_features:
            logits, feats = self.session.run([self._logits, "features"], {"images": images})
            return logits.astype(np.float64), feats.astype(np.float32, copy=False)
        if features:
            raise ModelError(
                "this ONNX graph has no features output; re-export it with "
                "`histoscan export-onnx` or use --engine torch"
            )
        (logits,) = self.session.run([self._logits], {"images": images})
        return logits.astype(np.float64), np.zeros((len(images), 0), dtype=np.float32)

    def run_views(
        self, images: np.ndarray, views: list[int], features: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        return views_on_host(self, images, views, features)


def onnx_session_meta(engine: OnnxEngine) -> dict[str, str]:
    """The custom metadata of the engine's graph (the histoscan model metadata lives there)."""
    return dict(engine.session.get_modelmeta().custom_metadata_map)


@functools.cache
def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX-512 BF16 or AMX), so autocast pays off."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
