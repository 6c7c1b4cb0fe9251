"""Service settings: one frozen dataclass; ``histoscan serve`` flags override the defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    """What the service accepts and how it batches.

    Attributes:
        token: when set, every ``/v1`` call needs ``Authorization: Bearer <token>``.
        max_upload_mb: the largest request body accepted (a slide upload is one request).
        resize: accept patches of any size and resize them to the model's patch size.
        tta: test-time augmentation for patches; ``d4`` as ``histoscan predict`` uses.
        slide_tta: test-time augmentation for slide tiles (many tiles, so ``none`` by default).
        max_batch: most patches the micro-batcher runs in one forward.
        max_wait_ms: how long the micro-batcher waits for more requests to join a batch.
        max_files: most patch files in one request.
        max_jobs: most slide jobs kept at once (queued, running or finished but not cleared).
        slide_workers: slide jobs that run at the same time; the rest queue.
        host: the bind address; requests must name it (or localhost) in their Host header.
        allow_origins: web origins (``https://app.example.org``) whose pages may call the API;
            the server's own page always may.
        max_request_pixels: decoded pixels one request may cost (counts with ``--resize``).
        threshold: the decision rule: a probability, ``youden`` or ``sens:0.95`` (resolved on the
            model's validation logits); None is the model's stored threshold.
    """

    token: str | None = None
    max_upload_mb: float = 1024.0
    resize: bool = False
    tta: str = "d4"
    slide_tta: str = "none"
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_files: int = 512
    max_jobs: int = 32
    slide_workers: int = 1
    host: str = "127.0.0.1"
    allow_origins: tuple[str, ...] = ()
    max_request_pixels: int = 64 * 2**20
    threshold: str | None = None

    def __post_init__(self) -> None:
        from histoscan.data.views import TTA_VIEWS

        for name in ("tta", "slide_tta"):
            if getattr(self, name) not in TTA_VIEWS:
                raise ValueError(f"{name} must be one of {', '.join(TTA_VIEWS)}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty (leave it out to serve without one)")
        if self.max_batch < 1 or self.max_files < 1 or self.slide_workers < 1:
            raise ValueError("max_batch, max_files and slide_workers must be at least 1")
        if self.threshold is not None:
            from histoscan.calibration import check_threshold_rule

            check_threshold_rule(self.threshold)  # ValueError names the bad rule
        if self.max_request_pixels < 1:
            raise ValueError("max_request_pixels must be at least 1")
        from histoscan.serve.security import normalise_origin

        object.__setattr__(self, "allow_origins", tuple(self.allow_origins))
        for origin in self.allow_origins:
            normalise_origin(origin)  # ValueError names the bad one

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
