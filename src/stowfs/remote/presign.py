"""Dialect `presign` (seed 002): presigned PUT, multipart for big files; no listing.

The service never lists or describes an object, so `upload` returns everything the
caller needs to keep its own record (key, size, checksum, content type)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import errors
from ..checksum import md5_file
from . import records
from .base import CheckpointHook, KeyHook, ProgressHook, RemoteFile, UploadCheckpoint
from .capabilities import ServerInfo
from .common import HttpRemote
from .transport import Transport
from .tuning import Tuning
from .upload import FileSlice, Multipart, NewObject, Uploaded, etag_md5

log = logging.getLogger("stowfs.remote")


class PresignRemote(HttpRemote):
    dialect = "presign"

    multipart: Multipart  # always: the dialect's large uploads

    def __init__(self, transport: Transport, info: ServerInfo, tuning: Tuning) -> None:
        super().__init__(transport, info, tuning)
        self.multipart = Multipart(transport, info, tuning)

    async def verify(self) -> None:
        # An empty description is refused as invalid only once the key is accepted.
        try:
            await self.transport.request("POST", "files/presign", json={}, idempotent=True)
        except errors.InvalidRequest:
            return
        except (errors.NotFound, errors.Unsupported) as exc:
            raise errors.ProtocolError(
                "the service has no presign endpoint (wrong URL or dialect?)", status=exc.status
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
        size, content_type = await self._prepare(source, name)
        target = NewObject(folder.strip("/"), name, content_type, metadata)
        if size <= self._single_max() and checkpoint is None:
            done = await self._put(source, size, target, progress, on_key)
        else:
            done = await self.multipart.upload(
                source,
                target,
                checkpoint=checkpoint,
                on_checkpoint=on_checkpoint,
                progress=progress,
                on_key=on_key,
            )
            if not done.confirmed:
                raise errors.Unavailable(
                    f"{name}: the answer to completing the upload was lost twice;"
                    " its outcome is unknown"
                )
        file = records.remote_file({**done.response, "file_key": done.key})
        return RemoteFile(
            key=done.key,
            folder=target.folder,
            name=name,
            size=size,
            content_type=content_type,
            checksum=done.md5,
            created_at=self.transport.wall_clock(),
            updated_at=self.transport.wall_clock(),
            metadata=dict(metadata or {}),
            url=file.url,
            url_expires=file.url_expires,
        )

    async def _put(
        self,
        source: Path,
        size: int,
        target: NewObject,
        progress: ProgressHook | None,
        on_key: KeyHook | None,
    ) -> Uploaded:
        request: dict[str, Any] = {
            "file_name": target.name,
            "file_size": size,
            "content_type": target.content_type,
            "folder": target.folder,
        }
        if target.metadata:
            request["metadata"] = dict(target.metadata)
        grant = await self.transport.call("POST", "files/presign", json=request, idempotent=True)
        key = str(grant["file_key"])
        if on_key is not None:
            await on_key(key)
        headers = {str(k): str(v) for k, v in (grant.get("upload_headers") or {}).items()}
        headers.setdefault("Content-Length", str(size))
        body = FileSlice(source, 0, size, self.tuning.io_chunk, progress=progress)
        # If-None-Match: * makes the PUT safe to repeat: a second one gets 412, which after
        # a lost answer means the first one landed.
        response = await self.transport.request(
            "PUT",
            str(grant["upload_url"]),
            body=body,
            headers=headers,
            accept_on_retry=frozenset({412}),
        )
        if response.status_code == 412:
            log.info("upload of %s: the answer was lost but the object is there", target.name)
            return Uploaded(key, await md5_file(source), grant, True)
        sent = etag_md5(response.headers.get("etag"))
        if sent is not None and body.md5 is not None and sent != body.md5:
            raise errors.ProtocolError(f"{target.name}: the service stored different bytes")
        return Uploaded(key, body.md5 or await md5_file(source), grant, True)
