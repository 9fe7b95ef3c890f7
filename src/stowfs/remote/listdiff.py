"""`changes` without a server feed: diff a full listing against the previous call's."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from .. import errors
from .base import Change, ChangeBatch, RemoteFile, RemoteFolder

Snapshot = tuple[dict[str, RemoteFile], set[str]]
ListAll = Callable[[], Awaitable[tuple[list[RemoteFile], list[RemoteFolder]]]]


def _state(file: RemoteFile) -> tuple[Any, ...]:
    """What makes a file changed (not its URL, which is new on every listing)."""
    return (
        file.folder,
        file.name,
        file.size,
        file.checksum,
        file.updated_at,
        file.is_public,
        repr(sorted(file.metadata.items(), key=lambda kv: kv[0])),
    )


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    old_files, old_folders = old
    new_files, new_folders = new
    changes = [
        Change(op="upsert", kind="folder", folder=path)
        for path in sorted(new_folders - old_folders)  # parents first
    ]
    for key, file in new_files.items():
        before = old_files.get(key)
        if before is None or _state(before) != _state(file):
            changes.append(Change(op="upsert", kind="file", folder=file.folder, key=key, file=file))
    for key, file in old_files.items():
        if key not in new_files:
            changes.append(Change(op="delete", kind="file", folder=file.folder, key=key))
    changes.extend(
        Change(op="delete", kind="folder", folder=path)
        for path in sorted(old_folders - new_folders, reverse=True)  # children first
    )
    return changes


class ListingDiff:
    def __init__(self, list_all: ListAll) -> None:
        self._list_all = list_all
        self._snapshot: Snapshot | None = None
        self._cursor: str | None = None
        self._prefix = f"diff-{secrets.token_hex(4)}-"
        self._count = 0

    async def changes(self, cursor: str | None) -> ChangeBatch:
        if cursor is not None and (cursor != self._cursor or self._snapshot is None):
            # Snapshots live in this process only: a cursor from elsewhere cannot be
            # continued, exactly like an expired server cursor.
            raise errors.Conflict(
                "the change cursor is unknown or expired; list everything again",
                status=410,
                code="CURSOR_EXPIRED",
            )
        files, folders = await self._list_all()
        current: Snapshot = ({f.key: f for f in files}, {f.path for f in folders})
        batch = [] if self._snapshot is None or cursor is None else diff(self._snapshot, current)
        self._snapshot = current
        self._count += 1
        self._cursor = f"{self._prefix}{self._count}"
        return ChangeBatch(changes=batch, cursor=self._cursor, has_more=False)
