"""Slide jobs over HTTP: upload, poll, fetch the outputs, clear."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from histoscan.errors import HistoscanError
from histoscan.serve.errors import ApiError
from histoscan.serve.jobs import ARTIFACTS, DONE, SLIDE_SUFFIXES, SlideJob, SlideJobs
from histoscan.serve.schemas import Deleted, JobStatus
from histoscan.serve.service import Service, get_service

router = APIRouter(prefix="/slides", tags=["slides"])
ServiceDep = Annotated[Service, Depends(get_service)]


def _suffix(file_name: str) -> str:
    """The lower-case extension, checked against the list of slide formats (never a path)."""
    suffix = "." + file_name.rsplit(".", 1)[1].lower() if "." in file_name else ""
    if suffix not in SLIDE_SUFFIXES:
        raise ApiError(
            415,
            f"{file_name}: unsupported slide type {suffix or '(no extension)'}; "
            f"accepted: {' '.join(SLIDE_SUFFIXES)}",
        )
    return suffix


def _status(jobs: SlideJobs, job: SlideJob) -> dict:
    files = {}
    if job.status == DONE:
        files = {
            name: f"/v1/slides/{job.id}/{name}"
            for name in ARTIFACTS
            if (job.out_dir / name).is_file()
        }
    progress = 1.0 if job.status == DONE else (job.done / job.total if job.total else 0.0)
    return {
        "id": job.id,
        "file_name": job.file_name,
        "status": job.status,
        "progress": progress,
        "done": job.done,
        "total": job.total,
        "queue_position": jobs.position(job),
        "mpp": job.mpp,
        "error": job.error,
        "summary": job.summary,
        "files": files,
    }


def _job(svc: Service, job_id: str) -> tuple[SlideJobs, SlideJob]:
    jobs = svc.started_jobs()
    job = jobs.get(job_id) if jobs is not None else None
    if jobs is None or job is None:
        raise ApiError(404, f"no slide job {job_id!r} (finished jobs are kept until cleared)")
    return jobs, job


@router.post("", response_model=JobStatus, status_code=202, summary="Queue a slide")
async def submit_slide(
    svc: ServiceDep,
    file: Annotated[UploadFile, File(description="A slide (.svs, .tif, ...) or large image.")],
    mpp: Annotated[float | None, Form(gt=0, lt=100, description="Micrometres per pixel.")] = None,
) -> dict:
    """Queue a slide for a tumour heatmap; poll GET /v1/slides/{id} for progress."""
    jobs = svc.slide_jobs()
    name = file.filename or "slide"
    suffix = _suffix(name)
    try:
        job = await run_in_threadpool(jobs.submit, file.file, name, suffix, mpp)
    except HistoscanError as exc:  # too many kept jobs
        raise ApiError(429, str(exc)) from exc
    return _status(jobs, job)


@router.get("", response_model=list[JobStatus], summary="Every kept slide job")
async def list_slides(svc: ServiceDep) -> list[dict]:
    jobs = svc.started_jobs()
    if jobs is None:
        return []
    return [_status(jobs, job) for job in jobs.snapshot()]


@router.get("/{job_id}", response_model=JobStatus, summary="Status and progress of a job")
async def slide_status(svc: ServiceDep, job_id: str) -> dict:
    jobs, job = _job(svc, job_id)
    return _status(jobs, job)


@router.get(
    "/{job_id}/{artifact}",
    summary="An output: heatmap.png, tiles.csv, tumor.geojson",
    response_class=FileResponse,
)
async def slide_artifact(svc: ServiceDep, job_id: str, artifact: str) -> FileResponse:
    _, job = _job(svc, job_id)
    if artifact not in ARTIFACTS:
        raise ApiError(404, f"no output {artifact!r}; outputs: {', '.join(ARTIFACTS)}")
    if job.status != DONE:
        raise ApiError(409, f"job {job_id} is {job.status}; outputs exist once it is done")
    path = job.out_dir / artifact  # a fixed name from ARTIFACTS, never from the client
    if not path.is_file():
        raise ApiError(404, f"job {job_id} wrote no {artifact}")
    return FileResponse(path, media_type=ARTIFACTS[artifact], headers={"Cache-Control": "no-store"})


@router.delete("/{job_id}", response_model=Deleted, summary="Clear a job and delete its files")
async def clear_slide(svc: ServiceDep, job_id: str) -> dict:
    jobs, _ = _job(svc, job_id)
    jobs.clear(job_id)
    return {"id": job_id, "deleted": True}
