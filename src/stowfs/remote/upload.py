"""The write path shared by the dialects: file bodies (MD5 on the fly), the presigned
POST form, and resumable multipart uploads with parallel parts and checkpoints."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .. import errors
from ..checksum import md5_file
from ..tasks import open_nursery
from .base import CheckpointHook, KeyHook, ProgressHook, UploadCheckpoint
from .capabilities import ServerInfo
from .transport import OutcomeUnknown, Transport, document
from .tuning import MiB, Tuning, plan_parts

log = logging.getLogger("stowfs.remote")

UrlFor = Callable[[int, bool], Awaitable[str]]  # (part number, renew) -> signed URL
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_PRESIGN_BATCH = 100  # part URLs asked for at once
GROWING_PART = 32 * MiB  # parts of a file sent while it is written (its size unknown)


def guess_type(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def etag_md5(etag: str | None) -> str | None:
    """The MD5 an ETag carries, if it is a plain one (not S3's multipart `md5-N`)."""
    value = (etag or "").strip().removeprefix("W/").strip('"').lower()
    return value if _MD5_HEX.match(value) else None


class FileSlice:
    """Bytes [offset, offset+length) of a file as a request body, any number of times.

    Each pass reads in a worker thread and (with `hash`) hashes as it goes; `md5` is the
    digest of the last complete pass (the bytes that actually went out)."""

    def __init__(
        self,
        path: Path,
        offset: int,
        length: int,
        chunk: int,
        *,
        head: bytes = b"",
        tail: bytes = b"",
        progress: ProgressHook | None = None,
        hash: bool = True,
    ) -> None:
        self.path, self.offset, self.length, self.chunk = path, offset, length, chunk
        self.head, self.tail = head, tail
        self.progress = progress
        self.hash = hash
        self.md5: str | None = None

    @property
    def content_length(self) -> int:
        return len(self.head) + self.length + len(self.tail)

    def __call__(self) -> AsyncIterator[bytes]:
        return self._pass()

    async def _pass(self) -> AsyncIterator[bytes]:
        digest = hashlib.md5(usedforsecurity=False)
        fd = -1  # opened by the first read: a small file costs one thread hand-off
        try:
            if self.head:
                yield self.head
            pos, end = self.offset, self.offset + self.length
            while pos < end:
                want = min(self.chunk, end - pos)
                fd, data = await trio.to_thread.run_sync(
                    self._read, fd, want, pos, digest if self.hash else None
                )
                if len(data) != want:
                    raise errors.StowfsError(f"{self.path} changed while uploading (shorter)")
                pos += want
                yield data
                if self.progress is not None:
                    self.progress(want)
            if self.tail:
                yield self.tail
        finally:
            if fd >= 0:
                os.close(fd)
        if self.hash:
            self.md5 = digest.hexdigest()

    def _read(self, fd: int, size: int, offset: int, digest: Any) -> tuple[int, bytes]:
        opened = fd < 0
        if opened:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, size, offset)
        except BaseException:
            if opened:
                os.close(fd)
            raise
        if digest is not None:
            digest.update(data)
        return fd, data


def form_body(
    fields: Mapping[str, str],
    filename: str,
    content_type: str,
    source: Path,
    size: int,
    tuning: Tuning,
    progress: ProgressHook | None,
) -> tuple[FileSlice, dict[str, str]]:
    """A multipart/form-data body: every field in order, `file` last (the policy's rule);
    built by hand so the file streams from disk with a known Content-Length."""
    boundary = secrets.token_hex(16)
    quoted = filename.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D")
    quoted = quoted.replace("\n", "%0A")
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    )
    body = FileSlice(
        source,
        0,
        size,
        tuning.io_chunk,
        head=head.encode(),
        tail=f"\r\n--{boundary}--\r\n".encode(),
        progress=progress,
    )
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(body.content_length),
    }
    return body, headers


@dataclass(frozen=True)
class NewObject:
    """What the caller asks to create."""

    folder: str
    name: str
    content_type: str
    metadata: Mapping[str, Any] | None


@dataclass(frozen=True)
class Uploaded:
    key: str
    md5: str  # of the local bytes sent
    response: Mapping[str, Any]  # the last JSON answer (complete / presign), may be empty
    confirmed: bool  # False: the final answer was lost; the caller must check the state


class Multipart:
    """The multipart endpoints (seed 002 + the abort extension)."""

    def __init__(self, transport: Transport, info: ServerInfo, tuning: Tuning) -> None:
        self.transport = transport
        self.info = info
        self.tuning = tuning

    def plan(self, size: int) -> tuple[int, int]:
        return plan_parts(
            size,
            min_part=self.info.limit("multipart_part_min_bytes"),
            max_part=self.info.limit("multipart_part_max_bytes"),
            max_parts=self.info.limit("multipart_max_parts"),
            tuning=self.tuning,
        )

    async def upload(
        self,
        source: Path,
        target: NewObject,
        *,
        checkpoint: UploadCheckpoint | None,
        on_checkpoint: CheckpointHook | None,
        progress: ProgressHook | None,
        on_key: KeyHook | None,
    ) -> Uploaded:
        stat = await trio.to_thread.run_sync(os.stat, source)
        size, mtime_ns = stat.st_size, stat.st_mtime_ns
        cp = checkpoint
        if cp is not None and cp.growing:  # the source is complete now
            cp.size, cp.mtime_ns, cp.growing = size, mtime_ns, False
            if any(n * cp.part_size > size for n in cp.parts):
                log.info("%s shrank below the parts sent while it grew: starting over", source)
                await self.abort(cp.upload_id)
                cp = None
        if cp is not None and (cp.size != size or cp.mtime_ns != mtime_ns):
            log.info("%s changed since the interrupted upload: starting over", source)
            await self.abort(cp.upload_id)
            cp = None
        restarted = False
        while True:
            if cp is None:
                cp = await self._initiate(target, size, mtime_ns)
                if on_checkpoint is not None:
                    await on_checkpoint(cp)
            if on_key is not None and cp.key:  # (a service may name it only at completion)
                await on_key(cp.key)
            try:
                md5 = await self._send_parts(source, cp, on_checkpoint, progress)
                return await self._complete(cp, md5)
            except errors.NotFound:
                # An upload from a checkpoint may have expired on the server: once, anew.
                if restarted or (checkpoint is None and not cp.parts):
                    raise
                log.info("upload %s is gone on the server: starting over", cp.upload_id)
                cp, restarted = None, True
            except (errors.Unavailable, errors.RateLimited):
                raise  # transient: the parts stay for a resume from the checkpoint
            except errors.RemoteError:
                await self.abort(cp.upload_id)  # refused for good: free the parts
                raise

    async def begin(self, target: NewObject) -> UploadCheckpoint:
        """A multipart upload of a source still growing: parts of a fixed size."""
        cp = await self._initiate(target, None, 0)
        part = self.tuning.part_size or GROWING_PART
        cp.part_size = max(self.info.limit("multipart_part_min_bytes"), part)
        cp.part_size = min(cp.part_size, self.info.limit("multipart_part_max_bytes"))
        cp.growing = True
        return cp

    async def send_part(self, cp: UploadCheckpoint, n: int, source: Path) -> None:
        async def url_for(number: int, renew: bool) -> str:
            return (await self._presign(cp.upload_id, [number]))[number]

        offset = (n - 1) * cp.part_size
        body = FileSlice(source, offset, cp.part_size, self.tuning.io_chunk, hash=False)
        cp.parts[n] = await self._put_part(n, body, url_for)

    async def _initiate(
        self, target: NewObject, size: int | None, mtime_ns: int
    ) -> UploadCheckpoint:
        body: dict[str, Any] = {
            "file_name": target.name,
            "content_type": target.content_type,
            "folder": target.folder,
        }
        if size is not None:
            body["file_size"] = size
        if target.metadata:
            body["metadata"] = dict(target.metadata)
        # Safe to repeat: an initiated upload that is never completed holds no object.
        response = await self.transport.request(
            "POST", "uploads/multipart/initiate", json=body, idempotent=True
        )
        doc = document(response)
        upload_id = doc.get("upload_id") or doc.get("uploadId")
        key = doc.get("file_key") or doc.get("object_key") or doc.get("key") or ""
        if not upload_id:
            raise errors.ProtocolError("multipart initiate returned no upload id")
        part_size, _ = self.plan(size or 0)
        return UploadCheckpoint(str(upload_id), str(key), size or 0, part_size, {}, mtime_ns)

    async def _presign(self, upload_id: str, numbers: list[int]) -> dict[int, str]:
        response = await self.transport.request(
            "POST",
            "uploads/multipart/presign-parts",
            json={"upload_id": upload_id, "part_numbers": numbers},
            idempotent=True,
        )
        doc = document(response)
        items = doc.get("parts") or doc.get("urls") or []
        urls: dict[int, str] = {}
        for item in items:
            if isinstance(item, Mapping):
                urls[int(item["part_number"])] = str(item.get("upload_url") or item["url"])
        missing = set(numbers) - set(urls)
        if missing:
            raise errors.ProtocolError(f"no signed URL for parts {sorted(missing)[:5]}")
        return urls

    async def _send_parts(
        self,
        source: Path,
        cp: UploadCheckpoint,
        on_checkpoint: CheckpointHook | None,
        progress: ProgressHook | None,
    ) -> str:
        """Upload every missing part; returns the MD5 of the whole file."""
        count = max(1, -(-cp.size // cp.part_size))
        todo = [n for n in range(1, count + 1) if n not in cp.parts]
        parallel = max(1, min(self.plan(cp.size)[1], len(todo)))
        if progress is not None:
            progress(sum(min(cp.part_size, cp.size - (n - 1) * cp.part_size) for n in cp.parts))
        urls: dict[int, str] = {}
        lock = trio.Lock()
        send, receive = trio.open_memory_channel[int](len(todo) + 1)
        for n in todo:
            send.send_nowait(n)
        send.close()
        whole: list[str] = []

        async def url_for(n: int, renew: bool) -> str:
            async with lock:
                if renew or n not in urls:
                    batch = [m for m in todo if m >= n and ((renew and m == n) or m not in urls)]
                    urls.update(await self._presign(cp.upload_id, batch[:_PRESIGN_BATCH]))
                return urls[n]

        async def worker() -> None:
            async for n in receive:
                offset = (n - 1) * cp.part_size
                body = FileSlice(
                    source,
                    offset,
                    min(cp.part_size, cp.size - offset),
                    self.tuning.io_chunk,
                    progress=progress,
                    hash=False,  # the whole file is hashed once, beside the parts
                )
                etag = await self._put_part(n, body, url_for)
                async with lock:
                    cp.parts[n] = etag
                    if on_checkpoint is not None:
                        await on_checkpoint(cp)

        async def hash_whole() -> None:
            whole.append(cp.md5 or await md5_file(source))

        async with open_nursery() as nursery:
            nursery.start_soon(hash_whole)
            for _ in range(parallel):
                nursery.start_soon(worker)
        return whole[0]

    async def _put_part(self, n: int, body: FileSlice, url_for: UrlFor) -> str:
        renew = False
        while True:
            url = await url_for(n, renew)
            try:
                response = await self.transport.request(
                    "PUT", url, body=body, headers={"Content-Length": str(body.content_length)}
                )
            except errors.Forbidden:
                if renew:
                    raise
                renew = True  # the part URL expired: sign it again
                continue
            etag = str(response.headers.get("etag", "")).strip()
            if not etag:
                raise errors.ProtocolError(f"part {n}: the service answered no ETag")
            return etag

    async def _complete(self, cp: UploadCheckpoint, md5: str) -> Uploaded:
        body = {
            "upload_id": cp.upload_id,
            "parts": [{"part_number": n, "etag": cp.parts[n]} for n in sorted(cp.parts)],
        }
        complete = partial(
            self.transport.request, "POST", "uploads/multipart/complete", json=body, slow=True
        )
        try:
            response = await complete()
        except OutcomeUnknown:
            # The parts are joined at most once: ask again; an upload that is gone or an
            # object that exists means the lost answer was a success.
            try:
                response = await complete()
            except (errors.NotFound, errors.AlreadyExists, OutcomeUnknown):
                return Uploaded(cp.key, md5, {}, confirmed=False)
        doc = document(response) if response.content else {}
        stored = doc.get("checksum")
        if isinstance(stored, str) and stored and stored.lower() != md5:
            raise errors.ProtocolError(f"upload {cp.upload_id}: checksum mismatch after upload")
        key = str(doc.get("file_key") or doc.get("object_key") or cp.key)
        return Uploaded(key, md5, doc, confirmed=True)

    async def abort(self, upload_id: str) -> None:
        """Best effort: release an upload's parts (an extension; absent is fine)."""
        try:
            await self.transport.request(
                "POST", "uploads/multipart/abort", json={"upload_id": upload_id}, idempotent=True
            )
        except errors.RemoteError as exc:
            log.info("could not abort upload %s: %s", upload_id, exc)
