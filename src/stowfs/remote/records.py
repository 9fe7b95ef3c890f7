"""Service JSON -> the dataclasses of remote/base.py (tolerant of the seeds' variants)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from .. import errors
from .base import Change, FieldInfo, RemoteFile, RemoteFolder, SearchPage, Usage


def timestamp(value: Any, default: float = 0.0) -> float:
    """Unix seconds from a number (s or ms) or an ISO 8601 string."""
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int | float):
        return float(value) / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.strip())  # 3.11+: accepts a trailing Z
        except ValueError:
            return default
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return default


def _split_key(key: str) -> tuple[str, str]:
    """(folder, name) guessed from `<team>/<folder...>/<ms>_<name>`."""
    head, _, last = key.rpartition("/")
    name = last.split("_", 1)[1] if "_" in last and last.split("_", 1)[0].isdigit() else last
    folder = head.partition("/")[2] if "/" in head else ""
    return folder, name


def remote_file(data: Mapping[str, Any]) -> RemoteFile:
    key = data.get("object_key") or data.get("file_key") or data.get("key")
    if not isinstance(key, str) or not key:
        raise errors.ProtocolError("the service sent a file without an object key")
    folder, name = _split_key(key)
    url = data.get("file_url") or data.get("url")
    metadata = data.get("metadata")
    created = timestamp(data.get("created_at") or data.get("uploaded_at"))
    return RemoteFile(
        key=key,
        folder=str(data.get("folder", folder) or ""),
        name=str(data.get("filename") or name),
        size=int(data.get("size", data.get("file_size", 0)) or 0),
        content_type=str(data.get("content_type") or "application/octet-stream"),
        checksum=str(data["checksum"]) if data.get("checksum") else None,
        created_at=created,
        updated_at=timestamp(data.get("updated_at"), created),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
        is_public=bool(data.get("is_public", False)),
        public_url=data.get("public_url") or None,
        url=str(url) if url else None,
        url_expires=(timestamp(data.get("expires_at")) or None) if url else None,
    )


def remote_folder(data: Mapping[str, Any]) -> RemoteFolder:
    path = str(data.get("path") or data.get("name") or "").strip("/")
    return RemoteFolder(
        path=path,
        file_count=int(data.get("file_count", 0) or 0),
        total_size=int(data.get("total_size", 0) or 0),
    )


def usage(data: Mapping[str, Any]) -> Usage:
    by_type: dict[str, int] = {}
    for item in data.get("by_content_type") or []:
        if isinstance(item, Mapping) and item.get("content_type"):
            by_type[str(item["content_type"])] = int(item.get("size", 0) or 0)

    def optional(name: str) -> int | None:
        value = data.get(name)
        return (
            int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )

    return Usage(
        total_bytes=int(data.get("total_bytes", 0) or 0),
        file_count=int(data.get("file_count", 0) or 0),
        limit_bytes=optional("limit_bytes"),
        limit_files=optional("limit_files"),
        by_content_type=by_type,
    )


def search_page(data: Mapping[str, Any]) -> SearchPage:
    files = [remote_file(f) for f in data.get("files") or []]
    return SearchPage(
        files=files,
        total=int(data.get("total", len(files)) or 0),
        page=int(data.get("page", 1) or 1),
        page_size=int(data.get("page_size", len(files)) or 0),
        total_pages=int(data.get("total_pages", 1) or 0),
    )


def field_info(data: Mapping[str, Any]) -> FieldInfo:
    return FieldInfo(
        name=str(data["name"]),
        type=str(data.get("type", "keyword")),
        searchable=bool(data.get("searchable", True)),
        array=bool(data.get("array", False)),
        writable=not data.get("read_only", False),
    )


def change(item: Mapping[str, Any]) -> Change:
    """One item of the change feed (extension): a file record or a folder path."""
    op: Literal["upsert", "delete"] = "delete" if item.get("op") == "delete" else "upsert"
    if item.get("kind") == "folder":
        return Change(op=op, kind="folder", folder=str(item.get("path") or item.get("folder", "")))
    key = str(item.get("object_key") or "")
    file = remote_file(item) if op == "upsert" else None
    return Change(op=op, kind="file", folder=str(item.get("folder") or ""), key=key, file=file)
