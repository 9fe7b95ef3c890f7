"""stowfs's own exception tree. `remote/` raises these; `fs/` maps them to errno in one
place; the CLI prints one line for any StowfsError and exits non-zero.

Messages never contain API keys or URL signatures (see remote/redact.py).
"""

from __future__ import annotations


class StowfsError(Exception):
    """Base of every error stowfs reports to a user."""


class ConfigError(StowfsError):
    """A bad configuration or command-line value."""


class RemoteError(StowfsError):
    """A storage service refused or failed a request."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        parts = [self.message]
        if self.code:
            parts.append(f"[{self.code}]")
        if self.status:
            parts.append(f"(HTTP {self.status})")
        return " ".join(parts)


class InvalidRequest(RemoteError):
    """400: the service rejected the request's content (a name, a field, a value)."""


class NameTooLong(InvalidRequest):
    """A name or folder path longer than the service takes."""


class AuthFailed(RemoteError):
    """401: missing or wrong API key."""


class Forbidden(RemoteError):
    """403: a signature, expiry or policy check failed (often: URL expired)."""


class NotFound(RemoteError):
    """404: no such file or folder."""


class Conflict(RemoteError):
    """409: legal hold, folder not empty, and other state conflicts."""


class AlreadyExists(RemoteError):
    """412: the object exists and may not be overwritten."""


class TooLarge(RemoteError):
    """413: file (or metadata) over the limit."""


class MetadataTooLarge(TooLarge):
    """Metadata over the service's limit (10 KB)."""


class UnsupportedMediaType(RemoteError):
    """415: e.g. a non-image sent to the `images` dialect."""


class RateLimited(RemoteError):
    """429 that outlasted the retry budget."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class QuotaExceeded(RemoteError):
    """507: the plan's storage bytes or file count is used up."""


class Unavailable(RemoteError):
    """5xx or connection failures that outlasted the retry budget; the service is down."""


class ProtocolError(RemoteError):
    """The service answered something this client cannot understand (wrong dialect?)."""


class Unsupported(RemoteError):
    """The remote's dialect cannot do this at all (e.g. list on `images`)."""
