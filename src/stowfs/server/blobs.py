"""Object bytes on local disk, written atomically: temp file, fsync, rename.

Bytes are first received into a temp file (`Received`); the metadata transaction
that makes the object visible publishes it with a rename. A crash leaves at
worst an orphan temp file (swept later), never a partial object.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import trio
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..tasks import open_nursery
from .errors import APIError, bad_request
from .parse import parse_uint

COPY_CHUNK = 4 * 1024 * 1024
SMALL_FILE = 1024 * 1024  # a form's file up to this size is copied in one read


class TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Received:
    """Bytes received into a temp file, not yet visible."""

    path: Path
    size: int
    md5: str


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.objects = root / "objects"
        self.parts = root / "parts"
        for d in (self.tmp, self.objects, self.parts):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        return self.objects / file_id[:2] / file_id

    def part_path(self, upload_id: str, part_number: int) -> Path:
        return self.parts / upload_id / f"{part_number:05d}"

    def new_temp(self) -> Path:
        return self.tmp / f"{secrets.token_hex(12)}.part"

    async def receive_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> Received:
        """Stream a request body into a temp file. Raises TooLarge past `max_bytes`."""
        tmp = self.new_temp()
        try:
            f = await trio.to_thread.run_sync(open_new, tmp)
            with f:
                size, md5 = await write_hashed(chunks, max_bytes, f)
                await trio.to_thread.run_sync(sync_file, f)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Received(tmp, size, md5)

    async def receive_file(self, source: IO[bytes]) -> Received:
        """Copy a spooled form upload into a temp file."""

        def run() -> Received:
            if source.seek(0, os.SEEK_END) <= SMALL_FILE:
                # One read and one write: a second thread, a 4 MiB buffer and a spool
                # put on disk first would be most of a small upload's time.
                source.seek(0)
                return self._write_whole(source.read())
            fd = source.fileno()  # puts a spool still in memory on disk
            source.flush()  # the descriptor is read, not Python's buffer
            return self._join([fd])

        return await trio.to_thread.run_sync(run)

    def _write_whole(self, data: bytes) -> Received:
        tmp = self.new_temp()
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                sync_file(out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Received(tmp, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest())

    async def concat(self, sources: list[Path]) -> Received:
        """Join multipart parts into one temp file."""

        def run() -> Received:
            with ExitStack() as stack:
                parts = [stack.enter_context(open(p, "rb", buffering=0)) for p in sources]
                return self._join([p.fileno() for p in parts])

        return await trio.to_thread.run_sync(run)

    def _join(self, sources: list[int]) -> Received:
        """Copy the open files `sources`, one after the other, into a new temp file.

        The kernel copies them and fsyncs in a second thread while this one reads them
        for the MD5, so the cost is the hashing alone. Both read the same open files:
        the checksum describes the bytes copied even if a part is replaced meanwhile.
        """
        tmp = self.new_temp()
        try:
            with open(tmp, "wb", buffering=0) as out, ThreadPoolExecutor(1) as copier:
                copied = copier.submit(copy_all, sources, out.fileno())
                md5, size = hash_all(sources)
                copied.result()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Received(tmp, size, md5)

    def remove(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)

    def remove_parts(self, upload_id: str) -> None:
        shutil.rmtree(self.parts / upload_id, ignore_errors=True)


def open_new(path: Path) -> BinaryIO:
    # Buffered: its write() writes all of a big buffer, where a raw write may be short.
    return open(path, "wb")


async def write_hashed(
    chunks: AsyncIterator[bytes], max_bytes: int, out: BinaryIO
) -> tuple[int, str]:
    """Write `chunks` to `out`; returns (size, MD5). Raises TooLarge past `max_bytes`.

    The body's small chunks are gathered into buffers of COPY_CHUNK bytes; a worker
    thread hashes and writes each buffer (both release the GIL) while the trio thread
    receives the next: it only runs the HTTP protocol, one thread hop per buffer.
    """
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0

    def absorb(pieces: list[bytes]) -> None:
        data = b"".join(pieces)
        md5.update(data)
        out.write(data)

    # Unbuffered: at most one buffer being written and one being gathered.
    send, receive = trio.open_memory_channel[list[bytes]](0)

    async def drain() -> None:
        async with receive:
            async for pieces in receive:
                await trio.to_thread.run_sync(absorb, pieces)

    async with open_nursery() as nursery:  # one side's failure cancels the other
        nursery.start_soon(drain)
        async with send:
            pending: list[bytes] = []
            buffered = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= COPY_CHUNK:
                    await send.send(pending)
                    pending, buffered = [], 0
            await send.send(pending)
    return size, md5.hexdigest()


def sync_file(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


# copy_file_range cannot serve these (another filesystem, an old kernel, a sandbox).
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def copy_all(sources: list[int], out: int) -> None:
    """Append every source (read from its start) to `out` in the kernel, then fsync.

    copy_file_range shares the blocks where the filesystem can (XFS, btrfs), else
    copies in the kernel; sendfile is the kernel copy for the cases it cannot serve.
    """
    for src in sources:
        offset = 0
        try:
            while copied := os.copy_file_range(src, out, COPY_CHUNK, offset):
                offset += copied
        except OSError as exc:
            if offset or exc.errno not in _NO_COPY_RANGE:
                raise
            while copied := os.sendfile(out, src, offset, COPY_CHUNK):
                offset += copied
    os.fsync(out)


def hash_all(sources: list[int]) -> tuple[str, int]:
    """(MD5, size) of the sources read from their start to their end, in order."""
    md5 = hashlib.md5(usedforsecurity=False)
    buffer = bytearray(COPY_CHUNK)
    view = memoryview(buffer)
    size = 0
    for src in sources:
        offset = 0
        while count := os.preadv(src, [buffer], offset):
            md5.update(view[:count])
            offset += count
        size += offset
    return md5.hexdigest(), size


def publish(tmp: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def too_large(limit: int) -> APIError:
    return APIError(413, "TOO_LARGE", f"file exceeds the limit of {limit} bytes", limit_bytes=limit)


FORM_OVERHEAD = 64 * 1024  # boundaries and the other fields, beyond the file itself


async def limited(chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncGenerator[bytes, None]:
    """Pass `chunks` through; raises TooLarge past `max_bytes`."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge
        yield chunk


async def read_form(request: Request, file_limit: int) -> FormData:
    """Parse a multipart form holding a file of up to `file_limit` bytes.

    413 early from a declared Content-Length, else once the stream passes the
    limit; 400 if malformed. The file parts spool to disk; close the form after.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        # Starlette's parser would fail with a KeyError (a 500) without the header.
        raise bad_request("expected a multipart/form-data body")
    limit = file_limit + FORM_OVERHEAD
    declared = parse_uint(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise too_large(file_limit)
    parser = MultiPartParser(request.headers, limited(request.stream(), limit), max_fields=64)
    try:
        return await parser.parse()
    except TooLarge:
        raise too_large(file_limit) from None
    except MultiPartException as exc:
        raise bad_request(f"malformed form: {exc.message}") from exc
