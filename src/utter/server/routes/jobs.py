"""The seed's job API for long texts: submit, poll, fetch the WAV, cancel.

``POST /submit-job`` takes the same body as ``/clone`` and answers at once with a ``job_id``;
``GET /job-status`` reports progress in frames; ``GET /job-result`` answers 202 while the job
runs and the WAV once it is done; ``POST /cancel-job`` stops the generation itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic_core import PydanticCustomError

from ..deps import BatcherDep, ServiceDep
from ..http.errors import ApiError, error_response
from ..schemas import CloneRequest, JobStatus, JobSubmitted, check_unicode
from ..speech.jobs import STORAGE_FULL_JOB
from .seed import start_clone

router = APIRouter(tags=["jobs (seed API)"])


@router.post("/submit-job", response_model=JobSubmitted, status_code=200)
async def submit_job(body: CloneRequest, service: ServiceDep, batcher: BatcherDep) -> dict[str, Any]:
    """Start generating in the background; poll /job-status, then fetch /job-result."""
    stream, text = await start_clone(body, service, batcher)
    job = service.jobs.add(stream, len(text), service.settings.retry_after_s)
    return {"job_id": job.id, "status": job.status, "text_length": job.text_length}


@router.get("/job-status", response_model=JobStatus)
async def job_status(job_id: str, service: ServiceDep) -> dict[str, Any]:
    return service.jobs.get(job_id).info()


@router.get(
    "/job-result",
    responses={200: {"content": {"audio/wav": {}}}, 202: {"description": "still running"}},
    response_class=Response,
)
async def job_result(job_id: str, service: ServiceDep) -> Response:
    job = service.jobs.get(job_id)
    info = job.info()
    if job.status in ("queued", "running"):
        return JSONResponse(info, status_code=202, headers={"Retry-After": "2"})
    if job.status == "cancelled":
        return error_response(410, f"Job {job_id} was cancelled; it has no result.")
    if job.status == "failed":  # the server's fault either way; 507 says it was its disk
        status = 507 if job.error == STORAGE_FULL_JOB else 500
        return error_response(status, f"Job {job_id} failed: {job.error}")
    return FileResponse(
        job.path,
        media_type="audio/wav",
        filename=f"{job.id}.wav",
        headers={"X-Audio-Duration": str(info["audio_seconds"])},
    )


@router.post("/cancel-job")
async def cancel_job(request: Request, service: ServiceDep, job_id: str | None = None) -> dict[str, Any]:
    """Cancel by ``?job_id=`` or a JSON body ``{"job_id": ...}``; the generation stops at once."""
    if job_id is None:
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        job_id = payload.get("job_id") if isinstance(payload, dict) else None
    if not isinstance(job_id, str) or not job_id:
        raise ApiError(422, "Invalid request: job_id: missing required field.", param="job_id")
    try:
        check_unicode(job_id, "job_id")
    except PydanticCustomError as exc:
        raise ApiError(400, f"{exc}.", param="job_id") from exc
    job = await service.jobs.cancel(job_id)
    return {"job_id": job.id, "status": job.status, "cancelled": job.status == "cancelled"}
