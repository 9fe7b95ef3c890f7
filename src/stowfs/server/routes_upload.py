"""The presigned POST target (`upload_url` of the storage dialect): checks the policy."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response

from . import files
from .auth import Principal
from .blobs import read_form, too_large
from .config import URL_EXPIRATION_DEFAULT
from .errors import APIError, bad_request, forbidden
from .records import file_record
from .state import ServerState, StateDep, UrlsDep
from .timeutil import parse_iso
from .urls import Urls

router = APIRouter(prefix="/v1")


def _check_policy(policy: dict[str, Any], fields: dict[str, str]) -> tuple[str, int, int]:
    """Every condition must hold; returns (key, min, max) of the signed policy."""
    try:
        if parse_iso(str(policy["expiration"])) < time.time():
            raise forbidden("the upload policy has expired", code="EXPIRED")
        key, low, high = "", 0, 0
        for cond in policy["conditions"]:
            if isinstance(cond, list) and cond[0] == "content-length-range":
                low, high = int(cond[1]), int(cond[2])
                continue
            for name, value in cond.items():
                if fields.get(name) != value:
                    raise forbidden(f"policy condition failed: {name}", code="POLICY_MISMATCH")
                if name == "key":
                    key = value
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise forbidden("malformed upload policy", code="INVALID_POLICY") from exc
    if not key:
        raise forbidden("policy names no key", code="INVALID_POLICY")
    return key, low, high


@router.post("/upload", include_in_schema=False)
async def presigned_post(request: Request, state: StateDep, urls: UrlsDep) -> Response:
    form = await read_form(request, state.config.post_max_bytes)
    try:
        items = list(form.multi_items())
        if not items or items[-1][0] != "file" or not isinstance(items[-1][1], UploadFile):
            raise bad_request("the form must end with the `file` field", code="FILE_NOT_LAST")
        fields = {k: v for k, v in items[:-1] if isinstance(v, str)}
        upload = items[-1][1]
        assert isinstance(upload, UploadFile)
        policy = state.signer.decode_policy(
            fields.get("policy", ""), fields.get("x-stowfs-signature", "")
        )
        if policy is None:
            raise forbidden("signature does not match the policy", code="SIGNATURE_MISMATCH")
        key, low, high = _check_policy(policy, fields)
        size = upload.size or 0
        if not low <= size <= high:
            raise too_large(high) if size > high else bad_request("file is too small")
        # The policy signed the row's content type: no lookup needed before the commit.
        return await _finish(state, urls, key, fields.get("Content-Type", ""), upload)
    finally:
        await form.close()


def _pending(conn: sqlite3.Connection, key: str) -> tuple[sqlite3.Row, Principal] | None:
    row = conn.execute("SELECT * FROM files WHERE object_key = ?", (key,)).fetchone()
    return None if row is None else (row, files.owner(conn, row))


async def _finish(
    state: ServerState, urls: Urls, key: str, content_type: str, upload: UploadFile
) -> Response:
    received = await state.blobs.receive_file(upload.file)

    def commit(conn: sqlite3.Connection, facts: dict[str, Any]) -> sqlite3.Row:
        # Looked up in the commit's own transaction: one thread hop fewer per upload.
        found = _pending(conn, key)
        if found is None:
            raise APIError(404, "NOT_FOUND", "the upload has expired or was aborted")
        row, who = found
        return files.store(conn, who, state.blobs, row["id"], received, facts)

    stored = await files.publish_upload(state.db, received, content_type, commit)
    # 201 with the stored object's record (as GET file gives it) spares clients a stat.
    return JSONResponse(
        file_record(stored, urls, URL_EXPIRATION_DEFAULT),
        status_code=201,
        headers={"ETag": f'"{received.md5}"'},
    )
