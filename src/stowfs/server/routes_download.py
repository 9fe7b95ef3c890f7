"""Downloads: signed `file_url`s and public URLs, with Range, ETag and Last-Modified."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response

from .blobs import BlobStore
from .errors import APIError, forbidden, not_found
from .state import ServerState, StateDep
from .timeutil import parse_iso
from .urls import EXPIRES, SIGNATURE, check_expiry

router = APIRouter(prefix="/v1", include_in_schema=False)


class BlobResponse(FileResponse):
    # 64 KiB (Starlette's default) is ~10x too slow on loopback; 4 MiB reaches GB/s.
    chunk_size = 4 * 1024 * 1024


# A body this small is read in the row's worker-thread call and sent whole: FileResponse's
# stat, open, reads and close are a thread hand-off each, most of a small GET's time.
SMALL_BODY = 1024 * 1024


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


@dataclass(frozen=True)
class _Asked:
    """What of a download request decides the answer (read on the trio thread)."""

    method: str
    range: str | None
    if_none_match: str | None
    if_range: bool


@dataclass(frozen=True)
class _Found:
    row: sqlite3.Row
    etag: str
    ranges: list[tuple[int, int]]  # none: the whole object
    body: bytes | None  # a small answer, read at once; None: streamed (or a 304)


def _find(
    conn: sqlite3.Connection,
    blobs: BlobStore,
    object_key: str,
    asked: _Asked,
    authorize: Callable[[sqlite3.Row | None], sqlite3.Row],
) -> _Found:
    """The row (authorized before anything else is looked at), the ranges, and a small
    body, in one worker-thread call: each thread hand-off is a good part of a small GET."""
    row = authorize(
        conn.execute(
            "SELECT * FROM files WHERE object_key = ? AND state = 'stored'", (object_key,)
        ).fetchone()
    )
    etag = f'"{row["checksum"]}"'
    if asked.if_none_match == etag:
        return _Found(row, etag, [], None)
    size = int(row["size"])
    ranges: list[tuple[int, int]] = []
    if asked.range is not None:
        try:
            ranges = BlobResponse._parse_range_header(asked.range, size)
        except MalformedRangeHeader as exc:
            raise APIError(400, "INVALID_RANGE", str(exc.content)) from exc
        except RangeNotSatisfiable as exc:
            raise APIError(
                416,
                "RANGE_NOT_SATISFIABLE",
                f"range outside the {size} bytes of the object",
                headers={"Content-Range": f"bytes */{exc.max_size}"},
            ) from exc
    start, end = ranges[0] if ranges else (0, size)
    small = len(ranges) <= 1 and end - start <= SMALL_BODY and not asked.if_range
    body = None
    if asked.method == "GET" and small:
        body = _read_range(blobs.path(row["file_id"]), start, end)
    return _Found(row, etag, ranges, body)


async def _serve(
    state: ServerState,
    request: Request,
    object_key: str,
    authorize: Callable[[sqlite3.Row | None], sqlite3.Row],
) -> Response:
    asked = _Asked(
        request.method,
        request.headers.get("range"),
        request.headers.get("if-none-match"),
        "if-range" in request.headers,
    )
    found = await state.db.read(lambda c: _find(c, state.blobs, object_key, asked, authorize))
    row = found.row
    headers = {
        "ETag": found.etag,
        "Last-Modified": formatdate(parse_iso(row["created_at"]), usegmt=True),
        "Cache-Control": "private, max-age=0",
    }
    if asked.if_none_match == found.etag:
        return Response(status_code=304, headers=headers)
    if found.body is None:
        path = state.blobs.path(row["file_id"])
        return BlobResponse(path, media_type=row["content_type"], headers=headers)
    headers["Accept-Ranges"] = "bytes"
    status = 200
    if found.ranges:
        start, end = found.ranges[0]
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{row['size']}"
        status = 206
    return Response(found.body, status, headers, media_type=row["content_type"])


@router.api_route("/dl/{object_key:path}", methods=["GET", "HEAD"])
async def signed_download(object_key: str, request: Request, state: StateDep) -> Response:
    expires = check_expiry(request.query_params.get(EXPIRES))
    if expires is None:
        raise forbidden("the URL has expired or has no valid expiry", code="URL_EXPIRED")
    signature = request.query_params.get(SIGNATURE, "")

    def authorize(row: sqlite3.Row | None) -> sqlite3.Row:
        if row is None:
            raise not_found(f"no file {object_key!r}")
        if not state.signer.verify(signature, "GET", object_key, row["file_id"], expires):
            raise forbidden("signature does not match", code="SIGNATURE_MISMATCH")
        return row

    return await _serve(state, request, object_key, authorize)


@router.api_route("/public/{object_key:path}", methods=["GET", "HEAD"])
async def public_download(object_key: str, request: Request, state: StateDep) -> Response:
    def authorize(row: sqlite3.Row | None) -> sqlite3.Row:
        if row is None or not row["is_public"]:
            # Private and missing look the same: a public URL never reveals a private file.
            raise not_found(f"no public file {object_key!r}")
        return row

    return await _serve(state, request, object_key, authorize)
