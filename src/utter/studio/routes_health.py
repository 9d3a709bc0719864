"""``GET /api/health``: is the studio up, and how is the model (downloading, loading, ready, failed)?

It answers 200 whenever the studio runs, also while the model downloads or after it failed to
load, so the pages can show the model's state and what to do about it.
"""

from __future__ import annotations

from fastapi import APIRouter

from .deps import StudioDep
from .schemas import HealthOut, ModelStatus

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health", response_model=HealthOut)
def health(studio: StudioDep) -> HealthOut:
    model = studio.provider.status()
    database = "ok" if studio.db.check() else "unreachable"
    state = model.get("state")
    status = {"ready": "ok", "failed": "degraded"}.get(state or "", "starting")
    if database != "ok":
        status = "degraded"
    jobs = studio.queue.counts() if database == "ok" else {}
    return HealthOut(status=status, model=ModelStatus(**model), database=database, jobs=jobs)
