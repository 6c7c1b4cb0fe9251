"""``create_app(predictor, settings)``: the FastAPI app with the patch API and the page.

Endpoints: ``/`` (the page), ``/healthz``, ``/v1/model``, ``/v1/predict``, ``/v1/explain`` and the
slide jobs under ``/v1/slides`` (slide_routes.py). Errors are ``{"error": "..."}`` (errors.py);
the token and the upload limit are checked before any body is read (security.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from histoscan import __version__
from histoscan.predict import Predictor
from histoscan.serve.docs import add_offline_docs
from histoscan.serve.errors import ApiError, install_error_handlers
from histoscan.serve.images import check_pixel_budget, encode_png, png_base64
from histoscan.serve.schemas import (
    ErrorBody,
    ExplainResponse,
    Health,
    ModelInfo,
    PatchResult,
    PredictResponse,
)
from histoscan.serve.security import (
    BodyLimitMiddleware,
    HostOriginMiddleware,
    PageHeadersMiddleware,
    TokenMiddleware,
)
from histoscan.serve.service import Service, get_service
from histoscan.serve.settings import ServeSettings
from histoscan.serve.slide_routes import router as slide_router

STATIC_DIR = Path(__file__).parent / "static"
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 413, 415, 422)}
ServiceDep = Annotated[Service, Depends(get_service)]

router = APIRouter(prefix="/v1", responses=ERRORS)


@router.get("/model", response_model=ModelInfo, summary="The model card")
async def model(svc: ServiceDep) -> dict:
    """Name, version, preprocessing spec, threshold, temperature and validation metrics."""
    return svc.model_info()


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Tumour probability of one or many patches",
)
async def predict(
    svc: ServiceDep,
    files: Annotated[list[UploadFile], File(description="96x96 RGB patch images.")],
    thumbnails: Annotated[bool, Query(description="Add each decoded patch as PNG.")] = False,
    threshold: Annotated[
        float | None,
        Query(
            ge=0.0,
            le=1.0,
            description="Decision threshold for this request (default: the server's).",
        ),
    ] = None,
) -> dict:
    """Calibrated p_tumor per patch (with the server's TTA) and the decision at the threshold."""
    if len(files) > svc.settings.max_files:
        raise ApiError(
            413, f"{len(files)} files in one request; send at most {svc.settings.max_files}"
        )
    await _check_budget(svc, files)
    images, resized = await run_in_threadpool(svc.decode_uploads, files)
    probs = await svc.batcher.run(images)
    name, version = svc.predictor.name, svc.predictor.version
    results = []
    for i, upload in enumerate(files):
        p = float(probs[i])
        results.append(
            PatchResult(
                id=upload.filename or f"file {i + 1}",
                p_tumor=p,
                decision=svc.decision(p, threshold),
                model=name,
                version=version,
                resized_from=resized[i],
                thumbnail_png=png_base64(images[i]) if thumbnails else None,
            )
        )
    return {
        "model": name,
        "version": version,
        "threshold": svc.threshold() if threshold is None else threshold,
        "tta": svc.settings.tta,
        "results": results,
    }


@router.post(
    "/explain",
    response_model=ExplainResponse,
    response_model_exclude_none=True,
    summary="Grad-CAM of one patch",
    responses={200: {"content": {"image/png": {}}}, 501: {"model": ErrorBody}},
)
async def explain(
    request: Request,
    svc: ServiceDep,
    file: Annotated[UploadFile, File(description="One 96x96 RGB patch image.")],
    fmt: Annotated[
        str, Query(alias="format", pattern="^(json|png)$", description="json or png")
    ] = "json",
) -> Response | dict:
    """The probability and the Grad-CAM overlay: JSON with base64 PNGs, or ?format=png."""
    form = await request.form()  # parsed once already for ``file``; this reads the cache
    sent = [v for _, v in form.multi_items() if not isinstance(v, str)]
    if len(sent) != 1:
        raise ApiError(422, f"{len(sent)} files sent; /v1/explain takes exactly one, as 'file'")
    await _check_budget(svc, [file])
    images, resized = await run_in_threadpool(svc.decode_uploads, [file])
    probs = await svc.batcher.run(images)
    overlay, cam = await run_in_threadpool(svc.explainer, images[0])
    p = float(probs[0])
    if fmt == "png":
        headers = {"X-P-Tumor": f"{p:.6f}", "X-Decision": svc.decision(p)}
        return Response(encode_png(overlay), media_type="image/png", headers=headers)
    return {
        "id": file.filename or "file 1",
        "p_tumor": p,
        "decision": svc.decision(p),
        "model": svc.predictor.name,
        "version": svc.predictor.version,
        "threshold": svc.threshold(),
        "resized_from": resized[0],
        "overlay_png": png_base64(overlay),
        "image_png": png_base64(images[0]),
        "cam_max": float(cam.max()),
    }


async def _check_budget(svc: Service, files: list[UploadFile]) -> None:
    """Refuse, from the image headers alone, a request that would decode too many pixels."""
    budget = svc.settings.max_request_pixels
    await run_in_threadpool(check_pixel_budget, [f.file for f in files], budget)


def _add_page(app: FastAPI, svc: Service) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz", response_model=Health, summary="Liveness and model identity")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "model": svc.predictor.name,
            "version": svc.predictor.version,
            "engine": svc.predictor.engine.name,
            "auth": svc.settings.token is not None,
            "batching": svc.batcher.stats(),
        }

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The service for one loaded model; run it with uvicorn, test it with TestClient."""
    settings = settings or ServeSettings()
    svc = Service(predictor, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.batcher.start()
        yield
        await run_in_threadpool(svc.close)  # also deletes every uploaded slide

    app = FastAPI(
        title="histoscan",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served below from local files: the machines are offline, no CDN
        description="Tumour probability, Grad-CAM and slide heatmaps for H&E lymph-node patches.",
    )
    app.state.service = svc
    # declared for /docs ("Authorize"); TokenMiddleware does the checking, before the body
    dependencies = [Depends(HTTPBearer(auto_error=False))] if settings.token is not None else []
    app.include_router(router, dependencies=dependencies)
    app.include_router(
        slide_router,
        prefix="/v1",
        dependencies=dependencies,
        responses={**ERRORS, 404: {"model": ErrorBody}},
    )
    _add_page(app, svc)
    add_offline_docs(app)
    install_error_handlers(app)
    # added last runs first: headers, Host/Origin, token, then the body limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.token is not None:
        app.add_middleware(TokenMiddleware, token=settings.token)
    app.add_middleware(
        HostOriginMiddleware, bind_host=settings.host, allow_origins=settings.allow_origins
    )
    app.add_middleware(PageHeadersMiddleware)
    return app
