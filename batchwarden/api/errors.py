"""Errors as the API shows them: one JSON shape for every 4xx and 5xx.

    {"error": {"type": "not_found", "message": "...", "problems": [...]}}

`type` is stable for programs, `message` is for people, and `problems`
(on 422 only) names each bad field, e.g. `requests[3]: params.model: ...`.
Errors raised by the service layer map to status codes here, once, so the
routes hold no error handling of their own.
"""

from __future__ import annotations

import logging

import trio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from batchwarden.callback_urls import CallbackRefused
from batchwarden.errors import (
    Conflict,
    IllegalTransition,
    InvalidRequests,
    JobNotFound,
    RetryLater,
)

log = logging.getLogger(__name__)

MAX_PROBLEMS = 100
STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_request",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, problems: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems


def error_response(
    status: int,
    message: str,
    problems: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict = {"type": STATUS_TYPES.get(status, "error"), "message": message}
    if problems is not None:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
        body["problems"] = shown
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        # A body left unread makes the connection unusable for another request.
        closing = {"connection": "close"} if exc.status == 413 else None
        return error_response(exc.status, exc.message, exc.problems, closing)

    @app.exception_handler(InvalidRequests)
    async def invalid(request: Request, exc: InvalidRequests) -> JSONResponse:
        return error_response(422, "the request is not valid", exc.problems)

    @app.exception_handler(CallbackRefused)
    async def refused(request: Request, exc: CallbackRefused) -> JSONResponse:
        return error_response(422, "the request is not valid", [str(exc)])

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(Conflict)
    @app.exception_handler(IllegalTransition)
    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(RetryLater)
    @app.exception_handler(trio.TooSlowError)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable for %s: %s", request.url.path, exc)
        message = "the database is unavailable; retry later"
        return error_response(503, message, headers={"retry-after": "1"})

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError):
        return error_response(422, "the request is not valid", _problems(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error on %s %s",
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return error_response(500, "internal error; the log has the details")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


def _problems(exc: RequestValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'is not valid')}")
    return problems
