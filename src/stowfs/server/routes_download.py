"""Downloads: signed `file_url`s and public URLs, with Range, ETag and Last-Modified."""

from __future__ import annotations

import sqlite3
from email.utils import formatdate
from pathlib import Path

import trio
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response

from .errors import APIError, forbidden, not_found
from .state import ServerState, StateDep
from .timeutil import parse_iso
from .urls import EXPIRES, SIGNATURE, check_expiry

router = APIRouter(prefix="/v1", include_in_schema=False)


class BlobResponse(FileResponse):
    # 64 KiB (Starlette's default) is ~10x too slow on loopback; 4 MiB reaches GB/s.
    chunk_size = 4 * 1024 * 1024


# A body this small is read in one worker-thread call and sent whole: FileResponse's
# stat, open, reads and close are a thread hand-off each, most of a small GET's time.
SMALL_BODY = 1024 * 1024


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _row(conn: sqlite3.Connection, object_key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM files WHERE object_key = ? AND state = 'stored'", (object_key,)
    ).fetchone()
    return row


async def _serve(state: ServerState, request: Request, row: sqlite3.Row) -> Response:
    etag = f'"{row["checksum"]}"'
    headers = {
        "ETag": etag,
        "Last-Modified": formatdate(parse_iso(row["created_at"]), usegmt=True),
        "Cache-Control": "private, max-age=0",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    path = state.blobs.path(row["file_id"])
    size = int(row["size"])
    ranges: list[tuple[int, int]] = []  # none: the whole object
    http_range = request.headers.get("range")
    if http_range is not None:
        try:
            ranges = BlobResponse._parse_range_header(http_range, size)
        except MalformedRangeHeader as exc:
            raise APIError(400, "INVALID_RANGE", str(exc.content)) from exc
        except RangeNotSatisfiable as exc:
            raise APIError(
                416,
                "RANGE_NOT_SATISFIABLE",
                f"range outside the {row['size']} bytes of the object",
                headers={"Content-Range": f"bytes */{exc.max_size}"},
            ) from exc
    start, end = ranges[0] if ranges else (0, size)
    small = len(ranges) <= 1 and end - start <= SMALL_BODY and "if-range" not in request.headers
    if request.method != "GET" or not small:
        return BlobResponse(path, media_type=row["content_type"], headers=headers)
    body = await trio.to_thread.run_sync(_read_range, path, start, end)
    headers["Accept-Ranges"] = "bytes"
    if ranges:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return Response(body, 206 if ranges else 200, headers, media_type=row["content_type"])


@router.api_route("/dl/{object_key:path}", methods=["GET", "HEAD"])
async def signed_download(object_key: str, request: Request, state: StateDep) -> Response:
    expires = check_expiry(request.query_params.get(EXPIRES))
    if expires is None:
        raise forbidden("the URL has expired or has no valid expiry", code="URL_EXPIRED")
    row = await state.db.read(lambda c: _row(c, object_key))
    if row is None:
        raise not_found(f"no file {object_key!r}")
    signature = request.query_params.get(SIGNATURE, "")
    if not state.signer.verify(signature, "GET", object_key, row["file_id"], expires):
        raise forbidden("signature does not match", code="SIGNATURE_MISMATCH")
    return await _serve(state, request, row)


@router.api_route("/public/{object_key:path}", methods=["GET", "HEAD"])
async def public_download(object_key: str, request: Request, state: StateDep) -> Response:
    row = await state.db.read(lambda c: _row(c, object_key))
    if row is None or not row["is_public"]:
        # Private and missing look the same: a public URL never reveals a private file.
        raise not_found(f"no public file {object_key!r}")
    return await _serve(state, request, row)
