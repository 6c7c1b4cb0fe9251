"""Response bodies, declared so that /docs shows what each endpoint returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong, in one line.")


class PatchResult(BaseModel):
    id: str = Field(description="The uploaded file name, echoed (never used as a path).")
    p_tumor: float = Field(description="Calibrated probability of tumour in the centre region.")
    decision: str = Field(description="'tumor' when p_tumor >= threshold, else 'normal'.")
    model: str
    version: str
    resized_from: str | None = Field(None, description="Original WxH when --resize applied.")
    thumbnail_png: str | None = Field(None, description="The decoded patch, base64 PNG.")


class PredictResponse(BaseModel):
    model: str
    version: str
    threshold: float
    tta: str
    results: list[PatchResult]


class ExplainResponse(PatchResult):
    threshold: float
    overlay_png: str = Field(description="Grad-CAM over the patch, base64 PNG.")
    image_png: str = Field(description="The decoded patch, base64 PNG.")
    cam_max: float = Field(description="Peak of the map before colouring; 0 = no evidence.")


class ModelInfo(BaseModel):
    name: str
    version: str
    engine: str
    tta: str
    threshold: float
    temperature: float
    spec: dict[str, Any]
    validation: dict[str, Any] = Field(description="Validation metrics from the model card.")
    card: dict[str, Any] = Field(description="The model card, without its large entries.")
    card_omitted: list[str] = Field(description="Card entries left out for size.")


class Health(BaseModel):
    status: str
    model: str
    version: str
    engine: str
    auth: bool = Field(description="Whether /v1 calls need a bearer token.")
    batching: dict[str, int | float]


class JobStatus(BaseModel):
    id: str
    file_name: str
    status: str = Field(description="queued, running, done or failed.")
    progress: float = Field(description="Fraction of tiles done, 0 to 1.")
    done: int
    total: int
    queue_position: int
    mpp: float | None
    error: str | None = None
    summary: dict[str, Any] | None = None
    files: dict[str, str] = Field(default_factory=dict, description="Output name -> URL.")


class Deleted(BaseModel):
    id: str
    deleted: bool
