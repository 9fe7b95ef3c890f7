"""HTTP status + error code -> stowfs.errors: the one place that decides which is which."""

from __future__ import annotations

import json
import re

from .. import errors
from .redact import redact

_BY_STATUS: dict[int, type[errors.RemoteError]] = {
    400: errors.InvalidRequest,
    401: errors.AuthFailed,
    402: errors.QuotaExceeded,  # seed 003: payment required / credits used up
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.Unsupported,
    409: errors.Conflict,
    410: errors.Conflict,  # e.g. CURSOR_EXPIRED: the caller must relist
    412: errors.AlreadyExists,
    413: errors.TooLarge,
    415: errors.UnsupportedMediaType,
    416: errors.InvalidRequest,
    422: errors.InvalidRequest,
    429: errors.RateLimited,
    501: errors.Unsupported,
    507: errors.QuotaExceeded,
}
_BY_CODE: dict[str, type[errors.RemoteError]] = {
    "METADATA_TOO_LARGE": errors.MetadataTooLarge,
    "NAME_TOO_LONG": errors.NameTooLong,
    "QUOTA_EXCEEDED": errors.QuotaExceeded,
    "LEGAL_HOLD": errors.Conflict,
}
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """(code, message) from the JSON error shape, FastAPI's `detail`, or S3's XML."""
    text = body[:8192].decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        found = dict(_XML_FIELD.findall(text))
        return found.get("Code"), found.get("Message") or (text.strip()[:200] or None)
    if isinstance(doc, dict):
        inner = doc.get("error", doc)
        if isinstance(inner, dict):
            code, message = inner.get("code"), inner.get("message") or inner.get("detail")
            return (str(code) if code else None), (str(message) if message else None)
        if isinstance(inner, str):
            return None, inner
    return None, None


def error_for(
    status: int,
    body: bytes,
    what: str,
    *,
    retry_after: float | None = None,
) -> errors.RemoteError:
    """The exception for a failed response; `what` says which call (already redacted)."""
    code, message = parse_error_body(body)
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = errors.Unavailable if status >= 500 else errors.RemoteError
    text = redact(f"{what}: {message}" if message else f"{what} failed")
    if cls is errors.RateLimited:
        return errors.RateLimited(text, retry_after=retry_after, status=status, code=code)
    return cls(text, status=status, code=code)
