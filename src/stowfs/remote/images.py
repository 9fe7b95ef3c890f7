"""Dialect `images` (seed 001): one POST per image, a public URL valid 72 hours, nothing else.

URLs cannot be renewed: a caller that needs one longer uploads again before
`url_expires` (the sync daemon does)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from .. import errors
from . import records
from .base import CheckpointHook, KeyHook, ProgressHook, RemoteFile, UploadCheckpoint
from .common import HttpRemote
from .transport import OutcomeUnknown, document
from .upload import etag_md5, form_body

log = logging.getLogger("stowfs.remote")


def sniff_image(head: bytes) -> str | None:
    """The MIME type of a JPEG/PNG/WebP/GIF judged by content (as the service does)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


class ImagesRemote(HttpRemote):
    dialect = "images"

    async def verify(self) -> None:
        # A form without a file is refused as invalid only once the key is accepted.
        try:
            await self.transport.request("POST", "uploads/images", json={}, idempotent=True)
        except (errors.InvalidRequest, errors.UnsupportedMediaType):
            return
        except (errors.NotFound, errors.Unsupported) as exc:
            raise errors.ProtocolError(
                "the service has no image upload endpoint (wrong URL or dialect?)",
                status=exc.status,
            ) from None

    async def upload(
        self,
        source: Path,
        folder: str,
        name: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        checkpoint: UploadCheckpoint | None = None,
        on_checkpoint: CheckpointHook | None = None,
        progress: ProgressHook | None = None,
        on_key: KeyHook | None = None,
    ) -> RemoteFile:
        size, _ = await self._prepare(source, name)
        content_type = sniff_image(await trio.to_thread.run_sync(_head, source))
        if content_type is None:
            raise errors.UnsupportedMediaType(
                f"{name}: the images dialect takes only JPEG, PNG, WebP and GIF files"
            )
        body, headers = form_body({}, name, content_type, source, size, self.tuning, progress)
        try:
            response = await self.transport.request(
                "POST", "uploads/images", body=body, headers=headers
            )
        except OutcomeUnknown as exc:
            # No listing exists to check whether it landed, and a blind repeat could
            # leave two copies: report it instead.
            raise OutcomeUnknown(
                f"{name}: the connection broke while uploading and this dialect cannot"
                " tell whether the image was stored; upload it again if needed",
                status=exc.status,
            ) from None
        doc = document(response)
        url = doc.get("url")
        if not isinstance(url, str) or not url:
            raise errors.ProtocolError("the image upload answered no URL")
        stored = int(doc.get("bytes", size) or 0)
        if stored != size:
            raise errors.ProtocolError(f"{name}: the service stored {stored} of {size} bytes")
        await self._check_md5(url, body.md5, name)
        created = records.timestamp(doc.get("created_at"), self.transport.wall_clock())
        expires = created + self.capabilities.url_lifetime
        return RemoteFile(
            key=url,
            folder="",
            name=str(doc.get("filename") or name),
            size=size,
            content_type=str(doc.get("content_type") or content_type),
            checksum=body.md5,
            created_at=created,
            updated_at=created,
            metadata={},
            is_public=True,
            public_url=url,
            url=url,
            url_expires=expires,
        )

    async def _check_md5(self, url: str, md5: str | None, name: str) -> None:
        """Compare with the URL's ETag where it is a plain MD5 (S3, the reference server)."""
        try:
            response = await self.transport.request("HEAD", url)
        except errors.RemoteError as exc:
            log.info("%s: could not check the stored checksum (%s)", name, exc)
            return
        stored = etag_md5(response.headers.get("etag"))
        if stored is not None and md5 is not None and stored != md5:
            raise errors.ProtocolError(f"{name}: checksum mismatch after upload")
