"""The upload journal: SQLite in the cache dir. Every file whose bytes the remote does
not have yet has a row here (staging path, destination, the object it replaces), written
before close returns; a mount started after a crash uploads what it finds. A multipart
upload under way keeps its progress in the row, part by part: the upload resumes from it
(the remote checks that the staged bytes did not change since; a file moved since starts
over).

Also the drop folder's record (write-only dialects): what this mount uploaded; and the
objects to delete that the service could not delete when they were replaced or removed.
Methods are synchronous: callers run them with trio.to_thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..remote.base import RemoteFile, UploadCheckpoint

log = logging.getLogger(__name__)

# uploads.resume: JSON of a `Progress` (NULL: no multipart upload under way).
# uploads.public: the visibility the object gets once up (NULL: the service's default).
# uploads.size: the bytes staged when the row was written; a staging file found shorter
# lost bytes that never reached the disk (NULL: a row of a version before the column).
# uploads.unlinked: 1 when the file was removed while its upload was under way: the row
# stays until the object that upload may make is deleted (after a crash: by the next mount).
# uploads.sending: the key of the object an upload (under way, or failed with its outcome
# unknown) may have stored, once the staged bytes changed since it began or the file was
# removed: after a crash, the next mount knows that object for an older state of this
# file, or for the removed one (it cannot tell it by its bytes), not for another file of
# the name.
# Journals written before these columns had none: they are added on open.
SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY,
    staging TEXT NOT NULL,
    folder TEXT NOT NULL,
    name TEXT NOT NULL,
    replaces TEXT,
    metadata TEXT NOT NULL,
    resume TEXT,
    public INTEGER,
    size INTEGER,
    unlinked INTEGER,
    sending TEXT
);
CREATE TABLE IF NOT EXISTS drops (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deletes (
    key TEXT PRIMARY KEY
);
"""


ADDED_COLUMNS = (
    ("resume", "TEXT"),
    ("public", "INTEGER"),
    ("size", "INTEGER"),
    ("unlinked", "INTEGER"),
    ("sending", "TEXT"),
)


class JournalError(OSError):
    """A journal write failed: ENOSPC when the disk is full, else EIO."""


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        number = errno.ENOSPC if code == sqlite3.SQLITE_FULL else errno.EIO
        raise JournalError(number, f"the upload journal: {exc}") from exc


@dataclass(frozen=True)
class Progress:
    """A multipart upload under way: where it goes, the metadata it was begun with (the
    object will have those: what changed since is patched after), the parts sent."""

    folder: str
    name: str
    begun_with: dict[str, Any]
    checkpoint: UploadCheckpoint

    def to_json(self) -> str:
        return json.dumps(
            {
                "folder": self.folder,
                "name": self.name,
                "begun_with": self.begun_with,
                "checkpoint": self.checkpoint.to_dict(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Progress:
        doc = json.loads(text)
        checkpoint = UploadCheckpoint.from_dict(doc["checkpoint"])
        return cls(doc["folder"], doc["name"], doc["begun_with"], checkpoint)


@dataclass(frozen=True)
class Entry:
    id: int
    staging: Path
    folder: str
    name: str
    replaces: str | None
    metadata: dict[str, Any]
    progress: Progress | None = None
    public: bool | None = None
    size: int | None = None
    unlinked: bool = False
    sending: str | None = None


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(uploads)")}
        for name, kind in ADDED_COLUMNS:
            if name not in columns:
                self._conn.execute(f"ALTER TABLE uploads ADD COLUMN {name} {kind}")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def record(
        self,
        entry_id: int | None,
        staging: Path,
        folder: str,
        name: str,
        replaces: str | None,
        metadata: dict[str, Any],
        public: bool | None = None,
        size: int | None = None,
    ) -> int:
        """Insert or update the row of one pending upload; returns its id."""
        row = (str(staging), folder, name, replaces, json.dumps(metadata), public, size)
        with self._lock, _writing():
            if entry_id is None:
                cur = self._conn.execute(
                    "INSERT INTO uploads (staging, folder, name, replaces, metadata, public,"
                    " size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                assert cur.lastrowid is not None
                return cur.lastrowid
            self._conn.execute(
                "UPDATE uploads SET staging=?, folder=?, name=?, replaces=?, metadata=?,"
                " public=?, size=? WHERE id=?",
                (*row, entry_id),
            )
            return entry_id

    def sync(self) -> None:
        """Make every committed row durable (a commit alone is not, at synchronous=NORMAL:
        the WAL is synced at checkpoints)."""
        with self._lock, _writing():
            self._conn.execute("PRAGMA wal_checkpoint(FULL)")

    def save_progress(self, entry_id: int, progress: Progress) -> None:
        with self._lock, _writing():
            self._conn.execute(
                "UPDATE uploads SET resume=? WHERE id=?", (progress.to_json(), entry_id)
            )

    def sending(self, entry_id: int, key: str) -> None:
        with self._lock, _writing():
            self._conn.execute("UPDATE uploads SET sending=? WHERE id=?", (key, entry_id))

    def unlinked(self, entry_id: int) -> None:
        with self._lock, _writing():
            self._conn.execute("UPDATE uploads SET unlinked=1 WHERE id=?", (entry_id,))

    def remove(self, entry_id: int) -> int:
        """Remove a row; returns how many went (0: none had that id)."""
        with self._lock, _writing():
            return self._conn.execute("DELETE FROM uploads WHERE id=?", (entry_id,)).rowcount

    def pending(self) -> list[Entry]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, staging, folder, name, replaces, metadata, resume, public, size,"
                " unlinked, sending FROM uploads ORDER BY id"
            ).fetchall()
        return [
            Entry(
                r[0],
                Path(r[1]),
                r[2],
                r[3],
                r[4],
                json.loads(r[5]),
                _progress(r[6]),
                None if r[7] is None else bool(r[7]),
                r[8],
                bool(r[9]),
                r[10],
            )
            for r in rows
        ]

    # -- drop folder -------------------------------------------------------------------
    def add_drop(self, file: RemoteFile, replaces: str | None = None) -> None:
        """Record an upload, in place of the object it `replaces` (at once: a crash
        between the two would leave both, the file shown twice)."""
        record = {
            "key": file.key,
            "folder": file.folder,
            "name": file.name,
            "size": file.size,
            "content_type": file.content_type,
            "checksum": file.checksum,
            "created_at": file.created_at,
            "updated_at": file.updated_at,
            "metadata": dict(file.metadata),
            "is_public": file.is_public,
            "public_url": file.public_url,
            "url": file.url,
            "url_expires": file.url_expires,
        }
        with self._lock, _writing():
            self._conn.execute("BEGIN")  # (the connection commits each statement alone)
            try:
                if replaces is not None and replaces != file.key:
                    self._conn.execute("DELETE FROM drops WHERE key=?", (replaces,))
                self._conn.execute(
                    "INSERT OR REPLACE INTO drops (key, record) VALUES (?, ?)",
                    (file.key, json.dumps(record)),
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def remove_drop(self, key: str) -> None:
        with self._lock, _writing():
            self._conn.execute("DELETE FROM drops WHERE key=?", (key,))

    # -- deletes the service could not do yet --------------------------------------------
    def add_delete(self, key: str) -> None:
        with self._lock, _writing():
            self._conn.execute("INSERT OR IGNORE INTO deletes (key) VALUES (?)", (key,))

    def remove_delete(self, key: str) -> None:
        with self._lock, _writing():
            self._conn.execute("DELETE FROM deletes WHERE key=?", (key,))

    def deletes(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT key FROM deletes ORDER BY rowid")]

    def drops(self) -> list[RemoteFile]:
        with self._lock:
            rows = self._conn.execute("SELECT record FROM drops").fetchall()
        return [RemoteFile(**json.loads(r[0])) for r in rows]


def _progress(text: str | None) -> Progress | None:
    """A row's progress; one unreadable (another version wrote it) means starting over."""
    if not text:
        return None
    try:
        return Progress.from_json(text)
    except (ValueError, KeyError, TypeError):
        log.warning("an upload's journaled progress is unreadable: it starts over")
        return None
