"""One error envelope, `{"error": code, "detail": ...}`, for every error the API returns,
including FastAPI's own validation errors and unknown routes, so clients parse one shape."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, IntegrityError
from starlette.exceptions import HTTPException

from auditor.auth import AuthError, ScopeError
from auditor.services import Conflict, Forbidden, Invalid, NotFound

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


def error_response(status: int, error: str, detail: Any, headers: dict | None = None):
    body = {"error": error, "detail": jsonable_encoder(detail)}
    return JSONResponse(body, status_code=status, headers=headers)


ERROR_CODES = {
    NotFound: (404, "not_found"),
    Forbidden: (403, "forbidden"),
    Conflict: (409, "conflict"),
    Invalid: (400, "bad_request"),
    AuthError: (401, "unauthorized"),
    ScopeError: (403, "forbidden"),
}

DOCUMENTED = {
    400: "Bad request",
    401: "Missing or invalid API key",
    403: "The key lacks the scope, or the resource is off limits",
    404: "Not found",
    409: "Conflict (stale version, duplicate name)",
    422: "Validation error",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in DOCUMENTED.items()
}


def install_error_handlers(app: FastAPI) -> None:
    def service_error(request: Request, exc: Exception) -> JSONResponse:
        status, code = next(v for k, v in ERROR_CODES.items() if isinstance(exc, k))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, code, str(exc), headers)

    for exc_type in ERROR_CODES:
        app.add_exception_handler(exc_type, service_error)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return error_response(exc.status_code, code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {k: v for k, v in error.items() if k in ("loc", "msg", "type")}
            for error in exc.errors()
        ]
        return error_response(422, "validation_error", detail)

    @app.exception_handler(DataError)
    def data_error(request: Request, exc: DataError) -> JSONResponse:
        return error_response(400, "bad_request", "a value is out of range for the database")

    @app.exception_handler(IntegrityError)
    def integrity_error(request: Request, exc: IntegrityError) -> JSONResponse:
        return error_response(409, "conflict", "the change conflicts with existing data")

    @app.exception_handler(Exception)
    def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "an unexpected error; see the server log")
