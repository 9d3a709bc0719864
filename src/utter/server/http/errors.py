"""One shape for every error the service returns, and the handlers that produce it.

Seed clients read ``detail`` (FastAPI's usual field); OpenAI clients read ``error.message``.
Both are filled with the same sentence, written for the person who sent the request.
"""

from __future__ import annotations

import errno

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...audio import AudioError
from ...engine.sched.batcher import QueueFullError
from ..runtime import ModelNotReady, ModelState

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
    507: "insufficient_storage",
}

STORAGE_FULL_MESSAGE = (
    "The server has run out of disk space for its data, so nothing was stored. "
    "Free some space on the server (or ask its operator to) and try again."
)
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_PG_DISK_FULL = "53100"  # PostgreSQL's disk_full
# What the Rust I/O errors that safetensors wraps in text say for ENOSPC and EDQUOT.
_FULL_TEXTS = ("(os error 28)", "(os error 122)")


def shown_error(exc: BaseException) -> str:
    """An unexpected error as a client is shown it (a job's failure): an OSError without the
    path it names, which the server log keeps."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error it wraps or was raised from) is a disk or quota running out:
    an ``OSError`` with ENOSPC or EDQUOT, SQLite's SQLITE_FULL, PostgreSQL's disk_full, or the
    same wrapped in text by safetensors. Such an error is the server's, not the request's, and
    says nothing about the data: it gets 507 and a sentence saying so, not a 500."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if _PG_DISK_FULL in (getattr(exc, "sqlstate", None), getattr(exc, "pgcode", None)):
            return True
        if any(text in str(exc) for text in _FULL_TEXTS):
            return True
        # SQLAlchemy keeps the driver's error in ``orig``; others chain it.
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


class ApiError(Exception):
    """An error to send as is: HTTP status, a message for people, optional headers."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.param = status, message, headers or {}, param


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, param: str | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "error"),
            "param": param,
            "code": status,
        },
        "detail": message,
    }
    return JSONResponse(body, status_code=status, headers=headers)


def busy(retry_after_s: int, message: str) -> ApiError:
    return ApiError(429, message, {"Retry-After": str(retry_after_s)})


def not_ready(exc: ModelNotReady, retry_after_s: int) -> ApiError:
    """503; Retry-After only when waiting can help (not for a model that failed to load)."""
    headers = {} if exc.state is ModelState.FAILED else {"Retry-After": str(retry_after_s)}
    return ApiError(503, exc.detail, headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str | None]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "The request body is not valid JSON.", None
    bad_text = [e for e in errors if e.get("type") == "invalid_text"]
    if bad_text:  # not a matter of range or shape: the text itself cannot be spoken
        where = ".".join(str(p) for p in bad_text[0].get("loc", ()) if p != "body")
        return 400, f"{where or 'body'}: {bad_text[0].get('msg')}.", where or None
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "form")]
        where = ".".join(loc) or "body"
        param = param or where
        msg = e.get("msg", "invalid value")
        parts.append("missing required field" if e.get("type") == "missing" else msg)
        parts[-1] = f"{where}: {parts[-1]}"
    return 422, "Invalid request: " + "; ".join(parts) + ".", param


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Map our exceptions (and FastAPI's) onto :func:`error_response`."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = _validation_message(exc)
        return error_response(status, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(AudioError)
    async def _audio(_: Request, exc: AudioError) -> JSONResponse:
        return error_response(400, str(exc), param="audio")

    @app.exception_handler(QueueFullError)
    async def _full(_: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(
            429, f"The server is busy ({exc}); retry shortly.", {"Retry-After": str(retry_after_s)}
        )

    @app.exception_handler(ModelNotReady)
    async def _not_ready(_: Request, exc: ModelNotReady) -> JSONResponse:
        err = not_ready(exc, retry_after_s)
        return error_response(err.status, err.message, err.headers)
