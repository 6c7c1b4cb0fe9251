"""What the routes share: the predictor behind a micro-batcher, Grad-CAM, and the slide jobs."""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request, UploadFile

from histoscan.errors import ModelError
from histoscan.predict import Predictor
from histoscan.serve.batching import MicroBatcher
from histoscan.serve.errors import ApiError
from histoscan.serve.images import decode_patch, read_upload
from histoscan.serve.jobs import SlideJobs
from histoscan.serve.settings import ServeSettings

VALIDATION_KEYS = ("metrics", "validation", "val_metrics")
# card entries bigger than this (validation ids, per-epoch histories) stay in the model file
CARD_ENTRY_MAX_BYTES = 4096


class Explainer:
    """Grad-CAM overlays, one at a time, on a private copy of the network.

    Grad-CAM hooks the target layer; on the predictor's own network the hooks would also record
    the forward passes that the batcher and slide jobs run at the same time.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._cam: Any = None
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W, 3) -> the overlay, uint8 (H, W, 3), and the map (H, W) in [0, 1]."""
        try:
            from histoscan.explain import GradCAM, overlay
        except ImportError as exc:
            raise ApiError(501, "Grad-CAM is not available in this installation") from exc
        with self._lock:
            if self._cam is None:
                try:
                    # a private copy: the hooks must not see the batcher's forward passes
                    self._cam = GradCAM(copy.deepcopy(self.predictor.torch_model_file()))
                except ModelError as exc:
                    raise ApiError(501, f"no Grad-CAM for this model: {exc}") from exc
            cam = self._cam.explain(image[None])[0]  # (H, W) in [0, 1]
        return overlay(image, cam), cam


@dataclass
class Service:
    """The model and the work queues behind the routes (``app.state.service``)."""

    predictor: Predictor
    settings: ServeSettings
    batcher: MicroBatcher = field(init=False)
    explainer: Explainer = field(init=False)
    _jobs: SlideJobs | None = field(default=None, init=False)
    _jobs_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _threshold: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.threshold()  # a rule the model cannot resolve fails at start, not per request
        tta = self.settings.tta
        self.batcher = MicroBatcher(
            lambda images: self.predictor.predict_proba(images, tta),
            self.settings.max_batch,
            self.settings.max_wait_ms,
        )
        self.explainer = Explainer(self.predictor)

    @property
    def patch_px(self) -> int:
        return self.predictor.spec.patch_px

    def threshold(self) -> float:
        """The server's decision threshold (``--threshold``, else the model's)."""
        if self._threshold is None:
            self._threshold = self.predictor.threshold(self.settings.threshold)
        return self._threshold

    def decision(self, p_tumor: float, threshold: float | None = None) -> str:
        cut = self.threshold() if threshold is None else threshold
        return "tumor" if p_tumor >= cut else "normal"

    def decode_uploads(self, files: list[UploadFile]) -> tuple[np.ndarray, list[str | None]]:
        """Read and decode every upload: (N, px, px, 3) uint8, and each one's original size."""
        images = np.empty((len(files), self.patch_px, self.patch_px, 3), dtype=np.uint8)
        resized: list[str | None] = []
        for i, upload in enumerate(files):
            name = upload.filename or f"file {i + 1}"
            data = read_upload(upload.file, name)
            images[i], original = decode_patch(data, name, self.patch_px, self.settings.resize)
            resized.append(original)
        return images, resized

    def slide_jobs(self) -> SlideJobs:
        """The slide queue, made on first use (and only if slide analysis is installed)."""
        with self._jobs_lock:
            if self._jobs is None:
                try:
                    from histoscan.slide.run import analyse_slide
                except ImportError as exc:
                    raise ApiError(
                        501, "slide analysis is not available in this installation"
                    ) from exc
                self._jobs = SlideJobs(
                    analyse_slide,
                    self.predictor,
                    tta=self.settings.slide_tta,
                    workers=self.settings.slide_workers,
                    max_jobs=self.settings.max_jobs,
                )
            return self._jobs

    def started_jobs(self) -> SlideJobs | None:
        """The slide queue if any slide was submitted yet."""
        with self._jobs_lock:
            return self._jobs

    def model_info(self) -> dict[str, Any]:
        """The model card for /v1/model: identity, calibration, validation metrics."""
        card = self.predictor.model_file.card
        sizes = {k: len(json.dumps(v, default=str)) for k, v in card.items()}
        omitted = sorted(k for k, size in sizes.items() if size > CARD_ENTRY_MAX_BYTES)
        validation: dict[str, Any] = {
            k: v
            for k, v in card.items()
            if k.startswith("val_") and isinstance(v, int | float) and not isinstance(v, bool)
        }
        for key in VALIDATION_KEYS:
            if isinstance(card.get(key), dict):
                validation.update(card[key])
        return {
            "name": self.predictor.name,
            "version": self.predictor.version,
            "engine": self.predictor.engine.name,
            "inference": self.predictor.describe(),
            "tta": self.settings.tta,
            "threshold": self.threshold(),
            "temperature": self.predictor.temperature,
            "spec": self.predictor.spec.to_dict(),
            "validation": validation,
            "card": {k: v for k, v in card.items() if k not in omitted},
            "card_omitted": omitted,
        }

    def close(self) -> None:
        self.batcher.close()
        with self._jobs_lock:
            if self._jobs is not None:
                self._jobs.close()


def get_service(request: Request) -> Service:
    """FastAPI dependency: the app's service."""
    return request.app.state.service
