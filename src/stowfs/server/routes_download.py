"""Downloads: signed `file_url`s and public URLs, with Range, ETag and Last-Modified."""

from __future__ import annotations

import sqlite3
from email.utils import formatdate

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
    response = BlobResponse(
        state.blobs.path(row["file_id"]),
        media_type=row["content_type"],
        headers=headers,
    )
    http_range = request.headers.get("range")
    if http_range is not None:
        try:
            response._parse_range_header(http_range, int(row["size"]))
        except MalformedRangeHeader as exc:
            raise APIError(400, "INVALID_RANGE", str(exc.content)) from exc
        except RangeNotSatisfiable as exc:
            raise APIError(
                416,
                "RANGE_NOT_SATISFIABLE",
                f"range outside the {row['size']} bytes of the object",
                headers={"Content-Range": f"bytes */{exc.max_size}"},
            ) from exc
    return response


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
