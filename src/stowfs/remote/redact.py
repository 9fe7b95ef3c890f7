"""Keep API keys and URL signatures out of every log line and exception text.

Signed URLs are bearer credentials: whoever holds one can read (or write) the object
until it expires, so their signature-bearing query parameters are masked wherever a
URL is shown. API keys are masked wherever they appear, registered or recognised.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Query parameters (case-insensitive) whose value grants access.
_SECRET_PARAMS = re.compile(
    r"(signature|credential|security-token|policy|^x-amz-|^x-goog-|token|^sig$|^key$|api[-_]?key)",
    re.IGNORECASE,
)
# In free text: `name=value` pairs of those parameters, bearer tokens, stowfs keys.
_TEXT_PATTERNS = (
    re.compile(
        r"(?i)((?:x-stowfs-signature|x-amz-signature|x-amz-credential|x-amz-security-token"
        r"|signature|policy|x-goog-signature|api_key|apikey|access_token)=)[^&\s\"'<>]+"
    ),
    re.compile(r"(?i)((?:authorization|x-api-key)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)[^\s\"',]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"()\b(?:stk|sk|dk|cdt)[-_][A-Za-z0-9_-]{12,}"),
)

_known: set[str] = set()


def register_secret(secret: str) -> None:
    """Mask this exact string (an API key) everywhere from now on."""
    if len(secret) >= 6:
        _known.add(secret)


def redact(text: str) -> str:
    for secret in _known:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _TEXT_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_url(url: str) -> str:
    """The URL with every signature-bearing query value masked (for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if not parts.query:
        return redact(url)
    query = [
        (name, MASK if _SECRET_PARAMS.search(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return redact(urlunsplit(parts._replace(query=urlencode(query, safe="*"))))


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secrets masked (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


# httpx logs every request URL at INFO; httpcore traces at DEBUG. Filters attached to a
# logger do not apply to its children, so each one that can carry a URL is listed.
_LOGGERS = (
    "stowfs",
    "stowfs.remote",
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)
_FILTER = RedactingFilter()


def install_log_filter() -> None:
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
