"""Rows to the JSON shapes of the seeds (one superset shape for list, get and search)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .fields import DEFAULTS
from .timeutil import iso
from .urls import Urls


def metadata_of(row: sqlite3.Row) -> dict[str, Any]:
    value = json.loads(row["metadata"])
    assert isinstance(value, dict)
    return value


def bare_record(row: sqlite3.Row) -> dict[str, Any]:
    """Everything but URLs: what the change feed carries."""
    metadata = metadata_of(row)
    return {
        "file_id": row["file_id"],
        "object_key": row["object_key"],
        "filename": row["filename"],
        "folder": row["folder"],
        "content_type": row["content_type"],
        "file_size": row["size"],
        "size": row["size"],
        "extension": row["extension"],
        "checksum": row["checksum"],
        "status": metadata.get("status", DEFAULTS["status"]),
        "uploaded_at": row["created_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "is_public": bool(row["is_public"]),
        "metadata": metadata,
    }


def file_record(row: sqlite3.Row, urls: Urls, lifetime: int) -> dict[str, Any]:
    record = bare_record(row)
    url, expires = urls.file_url(row["object_key"], row["file_id"], lifetime)
    record["file_url"] = url
    record["url"] = url
    record["expires_at"] = iso(expires)
    record["public_url"] = urls.public_url(row["object_key"]) if row["is_public"] else None
    return record
