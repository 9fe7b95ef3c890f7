"""API errors: every 4xx (and 507) carries `{"error": {"code", "message", ...}}` (protocol.md 1)."""

from __future__ import annotations

import errno
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """An error answered to the client with a stable upper-case code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


def bad_request(message: str, code: str = "INVALID_REQUEST", **extra: Any) -> APIError:
    return APIError(400, code, message, **extra)


def not_found(message: str = "file not found") -> APIError:
    return APIError(404, "NOT_FOUND", message)


def forbidden(message: str, code: str = "FORBIDDEN") -> APIError:
    return APIError(403, code, message)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _storage_full(exc: Exception) -> bool:
    """The disk under the blobs or the database is full: the client's 507, as a full plan
    (it keeps the bytes and tries again later), not a 500."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


_STATUS_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    411: "LENGTH_REQUIRED",
    412: "PRECONDITION_FAILED",
    413: "TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    416: "RANGE_NOT_SATISFIABLE",
    429: "RATE_LIMITED",
}


def install_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return JSONResponse(
            error_body(exc.code, exc.message, **exc.extra),
            status_code=exc.status,
            headers=exc.headers,
        )

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
            for err in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'][1:]) or 'request'}: {first['msg']}"
        return JSONResponse(
            error_body("INVALID_REQUEST", message, details=details), status_code=400
        )

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "ERROR")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_bad_text(_: Request, exc: Exception) -> JSONResponse:
        # Lone surrogates in JSON strings, or integers beyond SQLite's 64 bits.
        return JSONResponse(
            error_body("INVALID_REQUEST", f"unusable value in the request: {type(exc).__name__}"),
            status_code=400,
        )

    async def on_os_error(_: Request, exc: Exception) -> JSONResponse:
        if not _storage_full(exc):
            raise exc  # a 500, as any other failure
        return JSONResponse(
            error_body("STORAGE_FULL", "the server's storage is full; nothing was stored"),
            status_code=507,
        )

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(OSError, on_os_error)
    app.add_exception_handler(sqlite3.OperationalError, on_os_error)
    app.add_exception_handler(UnicodeEncodeError, on_bad_text)
    app.add_exception_handler(OverflowError, on_bad_text)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
