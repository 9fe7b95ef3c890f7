"""Extended attribute names and the round-trip-safe value codec.

Encoding of a metadata value: a string is its raw UTF-8 bytes unless the text would parse
as JSON (then it is JSON-quoted, so that it reads back as the same string); any other JSON
value is its compact JSON text. Decoding: JSON if it parses, else the raw string. So
`getfattr` output written back with `setfattr` changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

USER = "user."
FACTS = "user.stowfs."
PUBLIC = "user.stowfs.public"
PID = "user.stowfs.pid"  # on the mount root: the process serving the mount
MTIME = "user.mtime"  # the metadata key that keeps the mtime: seconds, as `touch` sets them
# Read-only facts (plus the writable PUBLIC), in listing order.
FACT_NAMES = (
    "key",
    "url",
    "url_expires",
    "public",
    "public_url",
    "checksum",
    "content_type",
    "size",
    "created_at",
    "updated_at",
)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def encode(value: Any) -> bytes:
    if isinstance(value, str):
        return (json.dumps(value, ensure_ascii=False) if _parses(value) else value).encode()
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def decode(raw: bytes) -> Any:
    """The metadata value for raw xattr bytes; ValueError if they are not UTF-8."""
    text = raw.decode("utf-8")
    try:
        return json.loads(text)
    except ValueError:
        return text


def metadata_size(metadata: dict[str, Any]) -> int:
    """Bytes of the metadata as the service measures it (its JSON document)."""
    return len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
