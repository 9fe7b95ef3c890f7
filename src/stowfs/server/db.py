"""The metadata database: SQLite in WAL mode, shared by every server process on a data dir.

Schema (one place, here):

teams(id, name, plan, created_at)
    `id` is a short random hex; it is the first segment of every object key.
api_keys(key_hash, team_id, user_id, created_at)
    Only the SHA-256 of a key is stored; keys are 256-bit random, so no slow hash is needed.
files(id, file_id, team_id, user_id, object_key, folder, filename, extension,
      content_type, size, checksum, state, upload_ip, is_public, metadata,
      created_at, updated_at, delete_after, max_size, upload_kind)
    One row per object. `state` is 'pending' from the upload URL until the bytes
    arrive, then 'stored'; pending rows never show in listings. `metadata` is the
    user's JSON object. `delete_after` (unix seconds) drives the sweeper: the
    deadline of a pending upload, an `images` URL's 72 hours, `retention_days`.
    Bytes live in the blob store under `file_id`, so a move never copies them.
attrs(file_id -> files.id, team_id, name, vtext, vnum)
    The search index of metadata: one row per (field, scalar value) of a stored
    file; array values give one row per element. Strings and booleans in vtext,
    numbers in vnum, so equality and ranges use an index, never a scan.
    Indexes: attrs_text (team_id, name, vtext, file_id) and attrs_num (team_id,
    name, vnum, file_id) answer filters and distinct values; attrs_sort (file_id,
    name, vnum, vtext) gives one file's value of a field, covering, for sorting
    by a metadata field (and serves deletes by file_id).
fts(filename, prompt, negative_prompt)
    FTS5 trigram index, rowid = files.id: case-insensitive substring search.
folders(team_id, path, created_at)
    Every folder that exists: created by mkdir or implied by a file's folder
    (all ancestors are inserted too).
changes(seq, team_id, kind, op, object_key, folder, payload, at)
    The change feed (extension): one row per upsert or delete of a file or a
    folder; `seq` is the cursor. Old rows are pruned; a cursor older than the
    oldest kept row answers 410.
usage(team_id, bytes, files)
    Stored bytes and files per team, kept by triggers on `files` (a pending row
    becoming 'stored' adds, deleting a stored row subtracts), so quota checks
    cost one row read instead of a sum over every file.
kv(key, value)
    Small server state: `changes_floor`, the lowest cursor still answerable.
multipart(upload_id, team_id, file_row, created_at, expires_at)
parts(upload_id, part_number, etag, size)
    In-progress multipart uploads; `file_row` is the pending files row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    plan TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id),
    user_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    file_id TEXT UNIQUE NOT NULL,
    team_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    object_key TEXT UNIQUE NOT NULL,
    folder TEXT NOT NULL,
    filename TEXT NOT NULL,
    extension TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    checksum TEXT,
    state TEXT NOT NULL,
    upload_ip TEXT,
    is_public INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    delete_after REAL,
    max_size INTEGER,
    upload_kind TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_folder ON files(team_id, state, folder, created_at);
CREATE INDEX IF NOT EXISTS files_created ON files(team_id, state, created_at);
CREATE INDEX IF NOT EXISTS files_updated ON files(team_id, state, updated_at);
CREATE INDEX IF NOT EXISTS files_size ON files(team_id, state, size);
CREATE INDEX IF NOT EXISTS files_name ON files(team_id, state, filename);
CREATE INDEX IF NOT EXISTS files_ctype ON files(team_id, state, content_type);
CREATE INDEX IF NOT EXISTS files_ext ON files(team_id, state, extension);
CREATE INDEX IF NOT EXISTS files_sweep ON files(delete_after) WHERE delete_after IS NOT NULL;
CREATE TABLE IF NOT EXISTS attrs (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    team_id TEXT NOT NULL,
    name TEXT NOT NULL,
    vtext TEXT,
    vnum REAL
);
CREATE INDEX IF NOT EXISTS attrs_text ON attrs(team_id, name, vtext, file_id);
CREATE INDEX IF NOT EXISTS attrs_num ON attrs(team_id, name, vnum, file_id);
CREATE INDEX IF NOT EXISTS attrs_sort ON attrs(file_id, name, vnum, vtext);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    filename, prompt, negative_prompt, tokenize = 'trigram'
);
CREATE TABLE IF NOT EXISTS folders (
    team_id TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (team_id, path)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    op TEXT NOT NULL,
    object_key TEXT,
    folder TEXT NOT NULL,
    payload TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_team ON changes(team_id, seq);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS multipart (
    upload_id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    file_row INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL REFERENCES multipart(upload_id) ON DELETE CASCADE,
    part_number INTEGER NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
"""


# Applied in order to data dirs whose `PRAGMA user_version` is lower: index i brings
# a database to version i + 1.
MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS usage (
        team_id TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL DEFAULT 0,
        files INTEGER NOT NULL DEFAULT 0
    );
    CREATE TRIGGER IF NOT EXISTS usage_store AFTER UPDATE OF state ON files
    WHEN old.state != 'stored' AND new.state = 'stored' BEGIN
        INSERT INTO usage (team_id, bytes, files) VALUES (new.team_id, new.size, 1)
        ON CONFLICT(team_id) DO UPDATE SET bytes = bytes + new.size, files = files + 1;
    END;
    CREATE TRIGGER IF NOT EXISTS usage_delete AFTER DELETE ON files
    WHEN old.state = 'stored' BEGIN
        UPDATE usage SET bytes = bytes - old.size, files = files - 1
        WHERE team_id = old.team_id;
    END;
    CREATE TRIGGER IF NOT EXISTS usage_resize AFTER UPDATE OF size ON files
    WHEN old.state = 'stored' AND new.state = 'stored' BEGIN
        UPDATE usage SET bytes = bytes - old.size + new.size WHERE team_id = new.team_id;
    END;
    DELETE FROM usage;
    INSERT INTO usage (team_id, bytes, files)
        SELECT team_id, SUM(size), COUNT(*) FROM files WHERE state = 'stored' GROUP BY team_id;
    """,
]


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA cache_size=-65536")
    return conn


def init_schema(path: Path) -> None:
    conn = connect(path)
    try:
        conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    finally:
        conn.close()


def _statements(script: str) -> list[str]:
    """Split a script into statements (triggers hold `;` inside BEGIN ... END)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


class Database:
    """A small pool of connections; every query runs in a worker thread.

    `write` runs its function inside BEGIN IMMEDIATE so that checks and updates
    (quotas, unique keys) are atomic across threads and processes. Writers of this
    process take turns: two threads racing for SQLite's write lock would meet its busy
    handler, which sleeps milliseconds.
    """

    def __init__(self, path: Path, size: int = 4) -> None:
        init_schema(path)
        self.path = path
        self._free = [connect(path) for _ in range(size)]
        self._limiter = trio.CapacityLimiter(size)
        self._writer = trio.Lock()

    def _take(self) -> sqlite3.Connection:
        return self._free.pop()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._limiter:
            conn = self._take()
            try:
                return await trio.to_thread.run_sync(fn, conn)
            finally:
                self._free.append(conn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._writer, self._limiter:
            conn = self._take()
            try:
                return await trio.to_thread.run_sync(transaction, conn, fn)
            finally:
                self._free.append(conn)

    def close(self) -> None:
        for conn in self._free:
            conn.close()
        self._free.clear()


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
