"""Dialect `images` (seed 001): one form upload, answered with a URL valid 72 hours."""

from __future__ import annotations

import sqlite3
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from . import files, imaging
from .blobs import Received, read_form, too_large
from .config import IMAGE_URL_LIFETIME
from .errors import APIError, bad_request
from .names import check_filename
from .state import PrincipalDep, StateDep, UrlsDep, client_ip
from .timeutil import parse_iso

router = APIRouter(prefix="/v1")

FOLDER = "uploads"
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


def _basename(sent: str | None) -> str:
    """The client's file name without any directory part ('' if it sent none)."""
    name = (sent or "").replace("\\", "/").rsplit("/", 1)[-1]
    return check_filename(name) if name else ""


async def _web_format(received: Received) -> str:
    """The image format judged by content; anything else is dropped with a 415."""
    found = await imaging.probe(received.path)
    if found is None or found[0] not in imaging.WEB_FORMATS:
        received.path.unlink(missing_ok=True)
        raise APIError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "the file is not a JPEG, PNG, WebP or GIF image",
            accepted=sorted(imaging.WEB_FORMATS.values()),
        )
    return found[0]


@router.post("/uploads/images")
async def upload_image(
    request: Request, who: PrincipalDep, state: StateDep, urls: UrlsDep
) -> dict[str, Any]:
    limit = state.config.image_max_bytes
    form = await read_form(request, limit)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("the form has no `file` field", code="MISSING_FILE")
        if (upload.size or 0) > limit:
            raise too_large(limit)
        sent_name = _basename(upload.filename)
        received = await state.blobs.receive_file(upload.file)
    finally:
        await form.close()
    image_format = await _web_format(received)
    filename = sent_name or f"image.{_EXTENSIONS[image_format]}"
    content_type = imaging.WEB_FORMATS[image_format]

    def commit(c: sqlite3.Connection, facts: dict[str, Any]) -> sqlite3.Row:
        pending = files.insert_pending(
            c,
            who,
            folder=FOLDER,
            filename=filename,
            metadata={},
            upload_kind="images",
            max_size=limit,
            upload_ip=client_ip(request),
            content_type=content_type,
            expected_size=received.size,
        )
        return files.store(c, who, state.blobs, pending["id"], received, facts)

    row = await files.publish_upload(state.db, received, content_type, commit)
    url, _ = urls.file_url(row["object_key"], row["file_id"], IMAGE_URL_LIFETIME)
    return {
        "url": url,
        "filename": filename,
        "content_type": content_type,
        "bytes": row["size"],
        "created_at": int(parse_iso(row["created_at"])),
    }
