"""The indexed fields of protocol.md section 2, metadata validation and index rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..metadata import fits, type_name
from .config import METADATA_MAX_BYTES
from .errors import APIError, bad_request
from .timeutil import normalize_iso


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # keyword | text | date | long | double | boolean
    array: bool = False
    # SQL expression on `files f` for fields kept as columns; None: in `attrs`.
    column: str | None = None
    system: bool = False  # read-only: set by the server, never by PATCH


def _f(name: str, type_: str, **kw: Any) -> Field:
    return Field(name, type_, **kw)


_SYS = {"system": True}
FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        # identity
        _f("file_id", "keyword", column="f.file_id", **_SYS),
        _f("object_key", "keyword", column="f.object_key", **_SYS),
        _f("filename", "text", column="f.filename", **_SYS),
        _f("team_id", "keyword", column="f.team_id", **_SYS),
        _f("user_id", "keyword", column="f.user_id", **_SYS),
        # time
        _f("created_at", "date", column="f.created_at", **_SYS),
        _f("updated_at", "date", column="f.updated_at", **_SYS),
        _f("expires_at", "date"),
        # source
        _f("source", "keyword"),
        _f("source_job_id", "keyword"),
        _f("source_model", "keyword"),
        _f("upload_ip", "keyword", column="f.upload_ip", **_SYS),
        # object
        _f("content_type", "keyword", column="f.content_type", **_SYS),
        _f("size", "long", column="f.size", **_SYS),
        _f("extension", "keyword", column="f.extension", **_SYS),
        _f("folder", "keyword", column="f.folder", **_SYS),
        _f("checksum", "keyword", column="f.checksum", **_SYS),
        # classification
        _f("category", "keyword"),
        _f("subcategory", "keyword"),
        _f("tags", "keyword", array=True),
        _f("labels", "keyword", array=True),
        _f("project", "keyword"),
        _f("environment", "keyword"),
        # status
        _f("status", "keyword"),
        _f(
            "visibility",
            "keyword",
            column="(CASE f.is_public WHEN 1 THEN 'public' ELSE 'private' END)",
            **_SYS,
        ),
        _f("is_processed", "boolean"),
        _f("is_archived", "boolean"),
        # metrics
        _f("width", "long"),
        _f("height", "long"),
        _f("duration", "double"),
        _f("frame_count", "long"),
        _f("sample_rate", "long"),
        _f("bit_depth", "long"),
        # AI context
        _f("prompt", "text"),
        _f("negative_prompt", "text"),
        _f("seed", "long"),
        _f("steps", "long"),
        _f("cfg_scale", "double"),
        _f("model_version", "keyword"),
        # compliance
        _f("retention_days", "long"),
        _f("legal_hold", "boolean"),
        _f("classification_level", "keyword"),
    )
}

SYSTEM_FIELDS = frozenset(f.name for f in FIELDS.values() if f.system)
TEXT_FIELDS = ("filename", "prompt", "negative_prompt")
# Indexed as if set, while the user has not set them (protocol.md: status "uploaded").
DEFAULTS: dict[str, str] = {"status": "uploaded", "source": "upload"}


def schema_document() -> dict[str, Any]:
    fields = []
    for f in FIELDS.values():
        entry: dict[str, Any] = {"name": f.name, "type": f.type, "searchable": True}
        if f.array:
            entry["array"] = True
        if f.system:
            entry["read_only"] = True  # an extension: clients check metadata before sending
        fields.append(entry)
    return {"fields": fields, "total_fields": len(fields)}


def metadata_size(metadata: dict[str, Any]) -> int:
    text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise bad_request("metadata must be valid Unicode text", code="INVALID_METADATA") from None


def check_writable(keys: list[str]) -> None:
    system = sorted(k for k in keys if k in SYSTEM_FIELDS)
    if system:
        raise bad_request(
            f"system fields cannot be changed: {', '.join(system)}",
            code="READ_ONLY_FIELD",
            fields=system,
        )


def validate_metadata(metadata: dict[str, Any]) -> None:
    """Size and types of a complete metadata object. Raises APIError."""
    size = metadata_size(metadata)
    if size > METADATA_MAX_BYTES:
        raise APIError(
            413,
            "METADATA_TOO_LARGE",
            f"metadata is {size} bytes; the limit is {METADATA_MAX_BYTES}",
            limit_bytes=METADATA_MAX_BYTES,
        )
    for key, value in metadata.items():
        if not key or len(key) > 255 or any(ord(c) < 32 for c in key):
            raise bad_request(f"invalid metadata key {key!r}", code="INVALID_METADATA")
        field = FIELDS.get(key)
        if field is not None and value is not None and not fits(field.type, field.array, value):
            kind = type_name(field.type, field.array)
            raise bad_request(
                f"metadata field {key!r} must be of type {kind}",
                code="INVALID_METADATA",
                field=key,
                expected=kind,
            )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge-patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _scalar(name: str, value: Any) -> tuple[str | None, float | None] | None:
    if isinstance(value, bool):
        return ("true" if value else "false", None)
    if isinstance(value, int | float):
        return (None, float(value))
    if isinstance(value, str):
        field = FIELDS.get(name)
        if field is not None and field.type == "date":
            try:
                return (normalize_iso(value), None)
            except ValueError:
                return (value, None)
        return (value, None)
    return None


def index_rows(metadata: dict[str, Any]) -> list[tuple[str, str | None, float | None]]:
    """(name, vtext, vnum) rows for the attrs table; lists give one row per element."""
    rows: list[tuple[str, str | None, float | None]] = []
    values = {**DEFAULTS, **metadata}
    for name, value in values.items():
        if name in SYSTEM_FIELDS:
            continue
        for item in value if isinstance(value, list) else [value]:
            scalar = _scalar(name, item)
            if scalar is not None:
                rows.append((name, *scalar))
    return rows
