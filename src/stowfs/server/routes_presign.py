"""Dialect `presign` (seed 002): presigned single PUT, and multipart uploads."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from typing import Any

import trio
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from . import files
from .auth import Principal
from .blobs import Received, TooLarge, too_large
from .config import UPLOAD_URL_LIFETIME
from .errors import APIError, bad_request, forbidden, not_found
from .names import check_filename, check_folder
from .parse import parse_uint
from .state import PrincipalDep, ServerState, StateDep, UrlsDep, client_ip
from .timeutil import iso
from .urls import EXPIRES, SIGNATURE, check_expiry

router = APIRouter(prefix="/v1")

_LIST_MAX = 10_000  # bounds the request; config.max_parts is enforced on the numbers

# type/subtype with RFC 9110 token characters, then optional printable parameters.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(;[ -~]*)?")


def _content_type(value: str | None, filename: str) -> str:
    """The declared type (it is served back as a header, so it must be clean)."""
    if not value:
        return files.guess_type(filename)
    if len(value) > 255 or not _CONTENT_TYPE.fullmatch(value):
        raise bad_request(f"invalid content type {value!r}", code="INVALID_CONTENT_TYPE")
    return value


def _valid_expiry(request: Request) -> int:
    """The URL's expiry if it is still valid (the caller checks the signature)."""
    expires = check_expiry(request.query_params.get(EXPIRES))
    if expires is None:
        raise forbidden("the URL has expired or has no valid expiry", code="URL_EXPIRED")
    return expires


def _signature_mismatch() -> APIError:
    return forbidden("signature does not match", code="SIGNATURE_MISMATCH")


async def _receive(state: ServerState, request: Request, limit: int, over: APIError) -> Received:
    """Stream the body to a temp file; `over` is raised past `limit` bytes."""
    try:
        return await state.blobs.receive_stream(request.stream(), limit)
    except TooLarge:
        raise over from None
    except ClientDisconnect:
        raise bad_request("the request body ended early", code="INCOMPLETE_BODY") from None


class PresignRequest(BaseModel):
    file_name: str
    file_size: int = Field(ge=0)
    content_type: str | None = None
    folder: str | None = None
    metadata: dict[str, Any] | None = None


@router.post("/files/presign")
async def presign(
    body: PresignRequest, who: PrincipalDep, state: StateDep, urls: UrlsDep, request: Request
) -> dict[str, Any]:
    filename = check_filename(body.file_name)
    folder = check_folder(body.folder)
    content_type = _content_type(body.content_type, filename)
    if body.file_size > state.config.put_max_bytes:
        raise too_large(state.config.put_max_bytes)
    row = await state.db.write(
        lambda c: files.insert_pending(
            c,
            who,
            folder=folder,
            filename=filename,
            metadata=body.metadata or {},
            upload_kind="put",
            max_size=body.file_size,
            upload_ip=client_ip(request),
            content_type=content_type,
            expected_size=body.file_size,
        )
    )
    key = row["object_key"]
    return {
        "file_key": key,
        "object_key": key,
        "folder": folder,
        "upload_url": urls.put_url(key, row["file_id"], body.file_size, UPLOAD_URL_LIFETIME),
        "upload_headers": {"Content-Length": str(body.file_size), "If-None-Match": "*"},
    }


@router.put("/put/{object_key:path}", include_in_schema=False)
async def presigned_put(object_key: str, request: Request, state: StateDep) -> Response:
    expires = _valid_expiry(request)

    def lookup(c: sqlite3.Connection) -> tuple[sqlite3.Row, Principal] | None:
        row = c.execute("SELECT * FROM files WHERE object_key = ?", (object_key,)).fetchone()
        return None if row is None else (row, files.owner(c, row))

    found = await state.db.read(lookup)
    if found is None:
        raise not_found("the upload has expired or was aborted")
    row, who = found
    # The signed size: `max_size` while pending (presign sets it to file_size), and
    # the stored size after (the body had to match it).
    size = int(row["max_size"] if row["state"] == "pending" else row["size"])
    signature = request.query_params.get(SIGNATURE, "")
    if not state.signer.verify(signature, "PUT", object_key, row["file_id"], size, expires):
        raise _signature_mismatch()
    length = request.headers.get("content-length")
    none_match = request.headers.get("if-none-match")
    if length is None or none_match is None:
        raise forbidden(
            "Content-Length and If-None-Match are signed and must be sent",
            code="SIGNED_HEADER_MISSING",
        )
    if parse_uint(length) != size or none_match.strip() != "*":
        raise forbidden(
            f"signed headers differ: Content-Length must be {size}, If-None-Match '*'",
            code="SIGNED_HEADER_MISMATCH",
        )
    if row["state"] != "pending":
        raise APIError(412, "ALREADY_EXISTS", f"{object_key} was already uploaded")
    received = await _receive(
        state, request, size, bad_request("body longer than declared", code="INCOMPLETE_BODY")
    )
    if received.size != size:
        received.path.unlink(missing_ok=True)
        raise bad_request(f"body has {received.size} of {size} bytes", code="INCOMPLETE_BODY")
    await files.publish_upload(
        state.db,
        received,
        row["content_type"],
        lambda c, facts: files.store(c, who, state.blobs, row["id"], received, facts),
    )
    return Response(status_code=200, headers={"ETag": f'"{received.md5}"'})


class InitiateRequest(BaseModel):
    file_name: str
    content_type: str | None = None
    folder: str | None = None
    metadata: dict[str, Any] | None = None
    file_size: int | None = Field(default=None, ge=0)


@router.post("/uploads/multipart/initiate")
async def initiate(
    body: InitiateRequest, who: PrincipalDep, state: StateDep, request: Request
) -> dict[str, Any]:
    cfg = state.config
    filename = check_filename(body.file_name)
    folder = check_folder(body.folder)
    content_type = _content_type(body.content_type, filename)
    if body.file_size is not None and body.file_size > cfg.multipart_max_bytes:
        raise too_large(cfg.multipart_max_bytes)

    def run(c: sqlite3.Connection) -> tuple[sqlite3.Row, str]:
        row = files.insert_pending(
            c,
            who,
            folder=folder,
            filename=filename,
            metadata=body.metadata or {},
            upload_kind="multipart",
            max_size=cfg.multipart_max_bytes if body.file_size is None else body.file_size,
            upload_ip=client_ip(request),
            content_type=content_type,
            expected_size=body.file_size or 0,
        )
        return row, files.open_multipart(c, row)

    row, upload_id = await state.db.write(run)
    return {
        "upload_id": upload_id,
        "file_key": row["object_key"],
        "object_key": row["object_key"],
        "folder": folder,
        "part_size_min": cfg.part_min_bytes,
        "part_size_max": cfg.part_max_bytes,
        "max_parts": cfg.max_parts,
        "expires_at": iso(row["delete_after"]),
    }


class PresignPartsRequest(BaseModel):
    upload_id: str
    part_numbers: list[int] | None = Field(default=None, min_length=1, max_length=_LIST_MAX)
    parts: int | None = Field(default=None, ge=1)


@router.post("/uploads/multipart/presign-parts")
async def presign_parts(
    body: PresignPartsRequest, who: PrincipalDep, state: StateDep, urls: UrlsDep
) -> dict[str, Any]:
    max_parts = state.config.max_parts
    if (body.part_numbers is None) == (body.parts is None):
        raise bad_request("give either part_numbers or parts")
    count = body.parts or 0
    numbers = body.part_numbers or list(range(1, min(count, max_parts) + 1))
    if count > max_parts or not all(1 <= n <= max_parts for n in numbers):
        raise bad_request(f"part numbers must be 1..{max_parts}", code="INVALID_PART_NUMBER")
    upload = await state.db.read(lambda c: files.open_upload(c, body.upload_id, who.team_id))
    lifetime = max(1, int(upload["expires_at"] - time.time()))
    return {
        "upload_id": body.upload_id,
        "parts": [
            {"part_number": n, "upload_url": urls.part_url(body.upload_id, n, lifetime)}
            for n in numbers
        ],
        "expires_at": iso(upload["expires_at"]),
    }


@router.put("/part/{upload_id}/{part_number}", include_in_schema=False)
async def put_part(upload_id: str, part_number: int, request: Request, state: StateDep) -> Response:
    expires = _valid_expiry(request)
    signature = request.query_params.get(SIGNATURE, "")
    if not state.signer.verify(signature, "PART", upload_id, part_number, expires):
        raise _signature_mismatch()
    await state.db.read(lambda c: files.open_upload(c, upload_id))
    limit = state.config.part_max_bytes
    declared = parse_uint(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise too_large(limit)
    received = await _receive(state, request, limit, too_large(limit))
    try:
        await state.db.write(
            lambda c: files.save_part(c, state.blobs, upload_id, part_number, received)
        )
    finally:
        received.path.unlink(missing_ok=True)
    return Response(status_code=200, headers={"ETag": f'"{received.md5}"'})


class PartEntry(BaseModel):
    part_number: int
    etag: str


class CompleteRequest(BaseModel):
    upload_id: str
    parts: list[PartEntry] = Field(max_length=_LIST_MAX)


def _multipart_etag(listed: list[tuple[int, str]]) -> str:
    """S3's multipart ETag: MD5 of the parts' binary MD5s, then '-<count>'."""
    digest = hashlib.md5(usedforsecurity=False)
    for _, etag in listed:
        digest.update(bytes.fromhex(etag))
    return f'"{digest.hexdigest()}-{len(listed)}"'


def _etag(value: str) -> str:
    text = value.strip().removeprefix("W/").strip('"').lower()
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise bad_request(f"invalid ETag {value!r}", code="INVALID_PART")
    return text


@router.post("/uploads/multipart/complete")
async def complete(body: CompleteRequest, who: PrincipalDep, state: StateDep) -> dict[str, Any]:
    listed = [(p.part_number, _etag(p.etag)) for p in body.parts]
    min_size = state.config.part_min_bytes

    def check(c: sqlite3.Connection) -> tuple[sqlite3.Row, int | None]:
        upload = files.find_upload(c, body.upload_id, who.team_id)
        if upload["state"] == "stored":  # completed before: answer the same object
            return upload, None
        return upload, files.check_parts(c, body.upload_id, listed, min_size)

    # A write transaction only for a consistent view of `multipart` and `parts`.
    row, total = await state.db.write(check)
    if total is not None:
        if total > row["max_size"]:
            raise too_large(row["max_size"])
        try:
            received = await state.blobs.concat(
                [state.blobs.part_path(body.upload_id, n) for n, _ in listed]
            )
        except FileNotFoundError:  # a concurrent complete (same answer) or abort (404)
            row, total = await state.db.write(check)
            if total is not None:
                raise files.no_such_upload(body.upload_id) from None
            return _completed(row, listed)
        row = await files.publish_upload(
            state.db,
            received,
            row["content_type"],
            lambda c, facts: files.complete_multipart(
                c, who, state.blobs, body.upload_id, listed, min_size, received, facts
            ),
        )
        await trio.to_thread.run_sync(state.blobs.remove_parts, body.upload_id)
    return _completed(row, listed)


def _completed(row: sqlite3.Row, listed: list[tuple[int, str]]) -> dict[str, Any]:
    return {
        "file_key": row["object_key"],
        "object_key": row["object_key"],
        "size": row["size"],
        "checksum": row["checksum"],
        "etag": _multipart_etag(listed),
    }


class AbortRequest(BaseModel):
    upload_id: str


@router.post("/uploads/multipart/abort")
async def abort(body: AbortRequest, who: PrincipalDep, state: StateDep) -> dict[str, Any]:
    await state.db.write(lambda c: files.abort_multipart(c, who.team_id, body.upload_id))
    await trio.to_thread.run_sync(state.blobs.remove_parts, body.upload_id)
    return {"success": True, "upload_id": body.upload_id}
