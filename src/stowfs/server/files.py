"""File and folder operations on the metadata DB.

Every function takes an open connection and runs inside one transaction
(`Database.write`), so quota checks, unique keys and the change feed stay exact
with many concurrent requests and processes.
"""

from __future__ import annotations

import itertools
import json
import mimetypes
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import imaging
from .auth import Principal
from .blobs import BlobStore, Received, publish
from .config import DAY, IMAGE_URL_LIFETIME, PLANS, UPLOAD_URL_LIFETIME
from .db import Database
from .errors import APIError, not_found
from .fields import TEXT_FIELDS, check_writable, index_rows, merge_patch, validate_metadata
from .names import ancestors, subtree_bounds
from .parse import parse_uint
from .records import bare_record, metadata_of
from .timeutil import iso, parse_iso


def guess_type(filename: str) -> str:
    return mimetypes.guess_type(filename, strict=False)[0] or "application/octet-stream"


def extension_of(filename: str) -> str:
    stem, dot, ext = filename.rpartition(".")
    return ext.lower() if dot and stem else ""


def quota_error(message: str, **extra: Any) -> APIError:
    return APIError(507, "QUOTA_EXCEEDED", message, **extra)


def changed_row(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> sqlite3.Row:
    """The one files row an INSERT or UPDATE ... RETURNING * wrote. fetchall runs the
    statement to its end, so none stays open in the transaction."""
    (row,) = conn.execute(sql, params).fetchall()
    assert isinstance(row, sqlite3.Row)
    return row


def by_id(conn: sqlite3.Connection, row_id: int) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM files WHERE id = ?", (row_id,)).fetchone()
    assert row is not None
    return row


def get_row(conn: sqlite3.Connection, team_id: str, object_key: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM files WHERE object_key = ? AND team_id = ? AND state = 'stored'",
        (object_key, team_id),
    ).fetchone()
    if row is None:
        raise not_found(f"no file {object_key!r}")
    return row


def _unique_key(conn: sqlite3.Connection, team_id: str, folder: str, name: str, ms: int) -> str:
    prefix = f"{team_id}/{folder}/" if folder else f"{team_id}/"
    while True:
        key = f"{prefix}{ms}_{name}"
        if conn.execute("SELECT 1 FROM files WHERE object_key = ?", (key,)).fetchone() is None:
            return key
        ms += 1


def usage_totals(conn: sqlite3.Connection, team_id: str) -> tuple[int, int]:
    row = conn.execute("SELECT bytes, files FROM usage WHERE team_id = ?", (team_id,)).fetchone()
    return (0, 0) if row is None else (int(row["bytes"]), int(row["files"]))


def check_quota(conn: sqlite3.Connection, who: Principal, add_bytes: int) -> None:
    used_bytes, used_files = usage_totals(conn, who.team_id)
    plan = who.plan
    if used_files + 1 > plan.max_files:
        raise quota_error(
            f"the {plan.name} plan allows {plan.max_files} files",
            limit_files=plan.max_files,
            used_files=used_files,
        )
    if used_bytes + add_bytes > plan.storage_bytes:
        raise quota_error(
            f"the {plan.name} plan allows {plan.storage_bytes} bytes",
            limit_bytes=plan.storage_bytes,
            used_bytes=used_bytes,
        )


def insert_pending(
    conn: sqlite3.Connection,
    who: Principal,
    *,
    folder: str,
    filename: str,
    metadata: dict[str, Any],
    upload_kind: str,
    max_size: int,
    upload_ip: str | None,
    content_type: str | None = None,
    expected_size: int = 0,
) -> sqlite3.Row:
    check_writable(list(metadata))
    validate_metadata(metadata)
    check_quota(conn, who, expected_size)
    now = time.time()
    key = _unique_key(conn, who.team_id, folder, filename, int(now * 1000))
    return changed_row(
        conn,
        "INSERT INTO files (file_id, team_id, user_id, object_key, folder, filename, extension,"
        " content_type, state, upload_ip, metadata, created_at, updated_at, delete_after,"
        " max_size, upload_kind, size) VALUES (?,?,?,?,?,?,?,?,'pending',?,?,?,?,?,?,?,?)"
        " RETURNING *",
        (
            secrets.token_hex(12),
            who.team_id,
            who.user_id,
            key,
            folder,
            filename,
            extension_of(filename),
            content_type or guess_type(filename),
            upload_ip,
            json.dumps(metadata, ensure_ascii=False),
            iso(now),
            iso(now),
            now + UPLOAD_URL_LIFETIME,
            max_size,
            upload_kind,
            expected_size,
        ),
    )


def deadline(row: sqlite3.Row, metadata: dict[str, Any], created: float) -> float | None:
    """When the sweeper removes this stored file: images after 72 h, else retention_days."""
    limits = []
    if row["upload_kind"] == "images":
        limits.append(created + IMAGE_URL_LIFETIME)
    days = metadata.get("retention_days")
    if isinstance(days, int) and not isinstance(days, bool) and days >= 0:
        limits.append(created + days * DAY)
    return min(limits) if limits else None


def store(
    conn: sqlite3.Connection,
    who: Principal,
    blobs: BlobStore,
    file_row: int,
    received: Received,
    facts: dict[str, Any] | None = None,
) -> sqlite3.Row:
    """Make a pending upload visible: quota, publish the bytes, index, change feed."""
    row = conn.execute("SELECT * FROM files WHERE id = ?", (file_row,)).fetchone()
    if row is None:
        raise not_found("the upload has expired or was aborted")
    if row["state"] != "pending":
        raise APIError(412, "ALREADY_EXISTS", f"{row['object_key']} was already uploaded")
    check_quota(conn, who, received.size)
    metadata = metadata_of(row)
    for key, value in (facts or {}).items():
        metadata.setdefault(key, value)
    now = time.time()
    publish(received.path, blobs.path(row["file_id"]))
    stored = changed_row(
        conn,
        "UPDATE files SET state = 'stored', size = ?, checksum = ?, metadata = ?,"
        " updated_at = ?, delete_after = ?, max_size = NULL WHERE id = ? RETURNING *",
        (
            received.size,
            received.md5,
            json.dumps(metadata, ensure_ascii=False),
            iso(now),
            deadline(row, metadata, now),
            file_row,
        ),
    )
    reindex(conn, stored)
    ensure_folders(conn, who.team_id, stored["folder"])
    record_file_change(conn, stored, "upsert")
    return stored


def reindex(conn: sqlite3.Connection, row: sqlite3.Row) -> None:
    metadata = metadata_of(row)
    conn.execute("DELETE FROM attrs WHERE file_id = ?", (row["id"],))
    conn.executemany(
        "INSERT INTO attrs (file_id, team_id, name, vtext, vnum) VALUES (?, ?, ?, ?, ?)",
        [(row["id"], row["team_id"], *r) for r in index_rows(metadata)],
    )
    conn.execute("DELETE FROM fts WHERE rowid = ?", (row["id"],))
    texts = [row["filename"]] + [
        v if isinstance(v := metadata.get(k), str) else "" for k in TEXT_FIELDS[1:]
    ]
    conn.execute(
        "INSERT INTO fts (rowid, filename, prompt, negative_prompt) VALUES (?, ?, ?, ?)",
        (row["id"], *texts),
    )


def unindex(conn: sqlite3.Connection, row_id: int) -> None:
    conn.execute("DELETE FROM attrs WHERE file_id = ?", (row_id,))
    conn.execute("DELETE FROM fts WHERE rowid = ?", (row_id,))


def record_change(
    conn: sqlite3.Connection,
    team_id: str,
    kind: str,
    op: str,
    folder: str,
    payload: dict[str, Any],
    object_key: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO changes (team_id, kind, op, object_key, folder, payload, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (team_id, kind, op, object_key, folder, json.dumps(payload), iso(time.time())),
    )


def record_file_change(conn: sqlite3.Connection, row: sqlite3.Row, op: str) -> None:
    payload = (
        bare_record(row)
        if op == "upsert"
        else {
            "file_id": row["file_id"],
            "object_key": row["object_key"],
            "filename": row["filename"],
            "folder": row["folder"],
        }
    )
    record_change(conn, row["team_id"], "file", op, row["folder"], payload, row["object_key"])


def ensure_folders(conn: sqlite3.Connection, team_id: str, folder: str) -> None:
    now = iso(time.time())
    for path in ancestors(folder):
        cur = conn.execute(
            "INSERT OR IGNORE INTO folders (team_id, path, created_at) VALUES (?, ?, ?)",
            (team_id, path, now),
        )
        if cur.rowcount:
            record_change(conn, team_id, "folder", "upsert", path, {"path": path})


def remove_row(conn: sqlite3.Connection, row: sqlite3.Row) -> None:
    """Delete a file row (not its blob: the caller removes that after commit)."""
    unindex(conn, row["id"])
    conn.execute("DELETE FROM files WHERE id = ?", (row["id"],))
    if row["state"] == "stored":
        record_file_change(conn, row, "delete")


def on_hold(metadata: dict[str, Any]) -> bool:
    return metadata.get("legal_hold") is True


def delete_file(conn: sqlite3.Connection, who: Principal, object_key: str) -> sqlite3.Row:
    row = get_row(conn, who.team_id, object_key)
    if on_hold(metadata_of(row)):
        raise APIError(409, "LEGAL_HOLD", f"{object_key} is under legal hold")
    remove_row(conn, row)
    return row


def patch_metadata(
    conn: sqlite3.Connection, who: Principal, object_key: str, patch: dict[str, Any]
) -> sqlite3.Row:
    check_writable(list(patch))
    row = get_row(conn, who.team_id, object_key)
    metadata = merge_patch(metadata_of(row), patch)
    validate_metadata(metadata)
    now = time.time()
    updated = changed_row(
        conn,
        "UPDATE files SET metadata = ?, updated_at = ?, delete_after = ? WHERE id = ? RETURNING *",
        (
            json.dumps(metadata, ensure_ascii=False),
            iso(now),
            deadline(row, metadata, _created_ts(row)),
            row["id"],
        ),
    )
    reindex(conn, updated)
    record_file_change(conn, updated, "upsert")
    return updated


def _created_ts(row: sqlite3.Row) -> float:
    return parse_iso(row["created_at"])


def set_public(
    conn: sqlite3.Connection, who: Principal, object_key: str, is_public: bool
) -> sqlite3.Row:
    row = get_row(conn, who.team_id, object_key)
    updated = changed_row(
        conn,
        "UPDATE files SET is_public = ?, updated_at = ? WHERE id = ? RETURNING *",
        (int(is_public), iso(time.time()), row["id"]),
    )
    record_file_change(conn, updated, "upsert")
    return updated


def move(
    conn: sqlite3.Connection, who: Principal, object_key: str, folder: str, filename: str
) -> sqlite3.Row:
    row = get_row(conn, who.team_id, object_key)
    ms_text = row["object_key"].rsplit("/", 1)[-1].split("_", 1)[0]
    ms = parse_uint(ms_text) or int(time.time() * 1000)
    new_key = _unique_key(conn, who.team_id, folder, filename, ms)
    # The type follows the name unless it was declared otherwise (a presigned upload):
    # rsync's and sed's temp files become `photo.png` by a move.
    content_type = row["content_type"]
    if content_type == guess_type(row["filename"]):
        content_type = guess_type(filename)
    record_file_change(conn, row, "delete")
    moved = changed_row(
        conn,
        "UPDATE files SET object_key = ?, folder = ?, filename = ?, extension = ?,"
        " content_type = ?, updated_at = ? WHERE id = ? RETURNING *",
        (
            new_key,
            folder,
            filename,
            extension_of(filename),
            content_type,
            iso(time.time()),
            row["id"],
        ),
    )
    reindex(conn, moved)
    ensure_folders(conn, who.team_id, folder)
    record_file_change(conn, moved, "upsert")
    return moved


def list_files(
    conn: sqlite3.Connection, team_id: str, folder: str | None, limit: int, offset: int
) -> tuple[list[sqlite3.Row], int]:
    where = "team_id = ? AND state = 'stored'"
    args: list[Any] = [team_id]
    if folder is not None:
        where += " AND folder = ?"
        args.append(folder)
    total = conn.execute(f"SELECT COUNT(*) FROM files WHERE {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM files WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return rows, int(total)


def list_folders(
    conn: sqlite3.Connection, team_id: str, parent: str | None
) -> list[dict[str, Any]]:
    stats: dict[str, list[int]] = {}
    for path in conn.execute("SELECT path FROM folders WHERE team_id = ?", (team_id,)):
        stats[path[0]] = [0, 0]
    groups = conn.execute(
        "SELECT folder, COUNT(*), COALESCE(SUM(size), 0) FROM files"
        " WHERE team_id = ? AND state = 'stored' GROUP BY folder",
        (team_id,),
    )
    for folder, count, size in groups:
        for path in ancestors(folder):
            entry = stats.setdefault(path, [0, 0])
            entry[0] += count
            entry[1] += size
    result = []
    for path in sorted(stats):
        head, _, name = path.rpartition("/")
        if parent is not None and head != parent:
            continue
        count, size = stats[path]
        result.append({"name": name, "path": path, "file_count": count, "total_size": size})
    return result


def create_folder(conn: sqlite3.Connection, team_id: str, path: str) -> None:
    ensure_folders(conn, team_id, path)


def delete_folder(conn: sqlite3.Connection, team_id: str, path: str, recursive: bool) -> list[str]:
    """Remove a folder (and with `recursive` its contents); returns blob ids to remove."""
    if (
        conn.execute(
            "SELECT 1 FROM folders WHERE team_id = ? AND path = ?", (team_id, path)
        ).fetchone()
        is None
    ):
        raise not_found(f"no folder {path!r}")
    low, high = subtree_bounds(path)
    in_tree = "team_id = ? AND (folder = ? OR (folder >= ? AND folder < ?))"
    rows = conn.execute(f"SELECT * FROM files WHERE {in_tree}", (team_id, path, low, high))
    files = rows.fetchall()
    subfolders = conn.execute(
        "SELECT path FROM folders WHERE team_id = ? AND path >= ? AND path < ?",
        (team_id, low, high),
    ).fetchall()
    stored = [r for r in files if r["state"] == "stored"]
    if not recursive and (stored or subfolders):
        raise APIError(409, "FOLDER_NOT_EMPTY", f"folder {path!r} is not empty")
    held = [r["object_key"] for r in stored if on_hold(metadata_of(r))]
    if held:
        raise APIError(409, "LEGAL_HOLD", f"{len(held)} file(s) under legal hold", files=held)
    for row in files:
        remove_row(conn, row)
    for (sub,) in sorted(subfolders, reverse=True):
        _drop_folder(conn, team_id, sub)
    _drop_folder(conn, team_id, path)
    return [r["file_id"] for r in files]


def _drop_folder(conn: sqlite3.Connection, team_id: str, path: str) -> None:
    conn.execute("DELETE FROM folders WHERE team_id = ? AND path = ?", (team_id, path))
    record_change(conn, team_id, "folder", "delete", path, {"path": path})


def usage(conn: sqlite3.Connection, who: Principal) -> dict[str, Any]:
    total, count = usage_totals(conn, who.team_id)
    by_type = [
        {"content_type": ct, "size": size, "count": n}
        for ct, size, n in conn.execute(
            "SELECT content_type, SUM(size), COUNT(*) FROM files WHERE team_id = ?"
            " AND state = 'stored' GROUP BY content_type ORDER BY SUM(size) DESC",
            (who.team_id,),
        )
    ]
    return {
        "total_bytes": total,
        "total_mb": round(total / (1024 * 1024), 2),
        "file_count": count,
        "formatted_size": format_size(total),
        "by_content_type": by_type,
        "plan": who.plan.name,
        "limit_bytes": who.plan.storage_bytes,
        "limit_files": who.plan.max_files,
    }


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


CHANGES_FLOOR = "changes_floor"


def changes(
    conn: sqlite3.Connection, team_id: str, cursor: str | None, limit: int
) -> dict[str, Any]:
    latest = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
    if cursor == "latest":
        return {"changes": [], "cursor": str(latest), "has_more": False}
    parsed = parse_uint(cursor or "0")
    if parsed is None:
        raise APIError(400, "INVALID_CURSOR", f"invalid cursor {cursor!r}")
    after = parsed
    floor_row = conn.execute("SELECT value FROM kv WHERE key = ?", (CHANGES_FLOOR,)).fetchone()
    if floor_row is not None and after < int(floor_row[0]):
        raise APIError(410, "CURSOR_EXPIRED", "cursor is older than the kept history; relist")
    rows = conn.execute(
        "SELECT seq, kind, op, object_key, folder, payload, at FROM changes"
        " WHERE team_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (team_id, after, limit + 1),
    ).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    out = []
    for r in rows:
        item = json.loads(r["payload"])
        item.update({"seq": r["seq"], "kind": r["kind"], "op": r["op"], "changed_at": r["at"]})
        out.append(item)
    next_cursor = rows[-1]["seq"] if has_more else max(latest, after)
    return {"changes": out, "cursor": str(next_cursor), "has_more": has_more}


def prune_changes(conn: sqlite3.Connection, older_than: float) -> None:
    row = conn.execute("SELECT MAX(seq) FROM changes WHERE at < ?", (iso(older_than),)).fetchone()
    if row[0] is None:
        return
    conn.execute("DELETE FROM changes WHERE seq <= ?", (row[0],))
    conn.execute(
        "INSERT INTO kv (key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (CHANGES_FLOOR, str(row[0])),
    )


def sweep(conn: sqlite3.Connection, now: float) -> list[str]:
    """Rows past their deadline (not on legal hold); returns blob ids to remove."""
    gone = []
    for row in conn.execute(
        "SELECT * FROM files WHERE delete_after IS NOT NULL AND delete_after < ?", (now,)
    ).fetchall():
        if row["state"] == "stored" and on_hold(metadata_of(row)):
            continue
        remove_row(conn, row)
        gone.append(row["file_id"])
    return gone


def remove_blobs(blobs: BlobStore, file_ids: list[str]) -> None:
    for file_id in file_ids:
        blobs.remove(file_id)


def cleanup_temp(blobs: BlobStore, older_than: float) -> None:
    for entry in os.scandir(blobs.tmp):
        if entry.stat().st_mtime < older_than:
            Path(entry.path).unlink(missing_ok=True)


T = TypeVar("T")


def owner(conn: sqlite3.Connection, row: sqlite3.Row) -> Principal:
    """The uploader of a file row: signed upload URLs carry no API key."""
    plan = conn.execute("SELECT plan FROM teams WHERE id = ?", (row["team_id"],)).fetchone()[0]
    return Principal(row["team_id"], row["user_id"], PLANS[plan], "")


async def publish_upload(
    db: Database,
    received: Received,
    content_type: str,
    commit: Callable[[sqlite3.Connection, dict[str, Any]], T],
) -> T:
    """Run `commit(conn, image facts)` in a write transaction (it calls `store`).

    The temp file is consumed either way: published by the commit, else removed.
    """
    try:
        facts = await imaging.facts(received.path, content_type)
        return await db.write(lambda c: commit(c, facts))
    finally:
        received.path.unlink(missing_ok=True)


# Multipart uploads (presign dialect). The pending files row is created at
# initiate; `multipart` links it to the upload id, `parts` records every part
# received. After complete the multipart row stays until it expires, so that a
# retried complete answers the same object instead of failing.


def open_multipart(conn: sqlite3.Connection, row: sqlite3.Row) -> str:
    """Start a multipart upload for a pending row; it expires with the row."""
    upload_id = secrets.token_hex(16)
    conn.execute(
        "INSERT INTO multipart (upload_id, team_id, file_row, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (upload_id, row["team_id"], row["id"], row["created_at"], row["delete_after"]),
    )
    return upload_id


def no_such_upload(upload_id: str) -> APIError:
    return APIError(404, "NO_SUCH_UPLOAD", f"no multipart upload {upload_id!r}")


def find_upload(
    conn: sqlite3.Connection, upload_id: str, team_id: str | None = None
) -> sqlite3.Row:
    """The upload joined with its files row (pending or, once completed, stored).

    Unknown, expired and other teams' uploads all answer 404 alike.
    """
    row: sqlite3.Row | None = conn.execute(
        "SELECT m.upload_id, m.expires_at, f.* FROM multipart m JOIN files f ON f.id = m.file_row"
        " WHERE m.upload_id = ? AND m.expires_at >= ?",
        (upload_id, time.time()),
    ).fetchone()
    if row is None or (team_id is not None and row["team_id"] != team_id):
        raise no_such_upload(upload_id)
    return row


def open_upload(
    conn: sqlite3.Connection, upload_id: str, team_id: str | None = None
) -> sqlite3.Row:
    """An upload still accepting parts (not completed)."""
    row = find_upload(conn, upload_id, team_id)
    if row["state"] != "pending":
        raise APIError(404, "NO_SUCH_UPLOAD", f"multipart upload {upload_id!r} is completed")
    return row


def save_part(
    conn: sqlite3.Connection,
    blobs: BlobStore,
    upload_id: str,
    part_number: int,
    received: Received,
) -> None:
    """Record a part and publish its bytes in one transaction, so the recorded ETag
    always describes the file on disk even when the same part is sent twice at once."""
    open_upload(conn, upload_id)
    conn.execute(
        "INSERT INTO parts (upload_id, part_number, etag, size) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(upload_id, part_number) DO UPDATE SET etag = excluded.etag,"
        " size = excluded.size",
        (upload_id, part_number, received.md5, received.size),
    )
    publish(received.path, blobs.part_path(upload_id, part_number))


def check_parts(
    conn: sqlite3.Connection, upload_id: str, listed: list[tuple[int, str]], min_size: int
) -> int:
    """Validate a complete request's (part number, ETag) list; returns the total size."""
    if not listed:
        raise APIError(400, "INVALID_PART", "the part list is empty")
    numbers = [n for n, _ in listed]
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise APIError(400, "INVALID_PART_ORDER", "parts must be listed in ascending order")
    stored = {
        r["part_number"]: r
        for r in conn.execute(
            "SELECT part_number, etag, size FROM parts WHERE upload_id = ?", (upload_id,)
        )
    }
    for number, etag in listed:
        if number not in stored or stored[number]["etag"] != etag:
            raise APIError(
                400,
                "INVALID_PART",
                f"part {number} was not uploaded or its ETag does not match",
                part_number=number,
            )
    for number, _ in listed[:-1]:
        if stored[number]["size"] < min_size:
            raise APIError(
                400,
                "ENTITY_TOO_SMALL",
                f"part {number} has {stored[number]['size']} bytes; all parts but the last"
                f" need at least {min_size}",
                part_number=number,
                min_size=min_size,
            )
    return sum(int(stored[number]["size"]) for number, _ in listed)


def complete_multipart(
    conn: sqlite3.Connection,
    who: Principal,
    blobs: BlobStore,
    upload_id: str,
    listed: list[tuple[int, str]],
    min_size: int,
    received: Received,
    facts: dict[str, Any],
) -> sqlite3.Row:
    """Publish the joined parts. The list is checked again here: a part replaced
    while the parts were being joined changed its ETag, so it cannot slip through."""
    upload = find_upload(conn, upload_id, who.team_id)
    if upload["state"] == "stored":  # a concurrent complete won: same object
        return by_id(conn, upload["id"])
    check_parts(conn, upload_id, listed, min_size)
    stored = store(conn, who, blobs, upload["id"], received, facts)
    conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
    return stored


def abort_multipart(conn: sqlite3.Connection, team_id: str, upload_id: str) -> None:
    upload = open_upload(conn, upload_id, team_id)
    remove_row(conn, by_id(conn, upload["id"]))  # cascades to multipart and parts


def sweep_multipart(conn: sqlite3.Connection, now: float) -> list[str]:
    """Expired uploads: abandoned ones lose their pending row; returns their ids."""
    expired = conn.execute(
        "SELECT m.upload_id, m.file_row, f.state FROM multipart m"
        " JOIN files f ON f.id = m.file_row WHERE m.expires_at < ?",
        (now,),
    ).fetchall()
    for upload in expired:
        if upload["state"] == "pending":
            remove_row(conn, by_id(conn, upload["file_row"]))
        else:
            conn.execute("DELETE FROM multipart WHERE upload_id = ?", (upload["upload_id"],))
    return [u["upload_id"] for u in expired]


def multipart_ids(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT upload_id FROM multipart")}


def cleanup_parts(blobs: BlobStore, known: set[str], older_than: float) -> None:
    """Part directories of no known upload (a crash, a removed pending row).

    The age limit spares uploads started after `known` was read.
    """
    for entry in os.scandir(blobs.parts):
        if entry.name not in known and entry.stat().st_mtime < older_than:
            blobs.remove_parts(entry.name)
