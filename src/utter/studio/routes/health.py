"""``GET /api/health``: is the studio up, and how is the model (downloading, loading, ready, failed)?

It answers 200 whenever the studio runs, also while the model downloads or after it failed to
load, so the pages can show the model's state and what to do about it.
"""

from __future__ import annotations

from fastapi import APIRouter

from ...server.disk import disk_status
from ...server.http.errors import ApiError
from ..deps import StudioDep
from ..schemas import HealthOut, ModelStatus

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
    return HealthOut(
        status=status,
        model=ModelStatus(**model),
        database=database,
        jobs=jobs,
        asr=studio.asr.status(),
        models=studio.models.status() if studio.models is not None else [],
        storage=disk_status(studio.storage.root),
    )


@router.post("/model/retry", status_code=202)
async def retry_model(studio: StudioDep) -> dict[str, str]:
    """Load the model again after it failed (the network is back, the folder fixed): no restart.
    The page's banner offers it; ``/api/health`` then shows the new attempt."""
    provider = studio.provider
    holder = getattr(provider, "holder", None)
    if holder is not None:
        if not holder.retry():
            raise ApiError(
                409, f"The model is {holder.state.value}; only a model that failed can be retried."
            )
    else:  # a remote TTS service: ask it again now
        refresh = getattr(provider, "refresh", None)
        if refresh is not None:
            await refresh()
    studio.runner.wake()
    return {"state": provider.state.value}
