"""Staging files: the local copy of a file being written, in the cache dir.

All file I/O runs in worker threads (never on the trio thread).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .journal import Progress

HASH_RUN = 16 * 1024 * 1024  # bytes hashed per worker-thread call
HASH_READ = 4 * 1024 * 1024

Spawn = Callable[[Callable[[], Awaitable[None]]], None]  # start a task in the mount's nursery


class Staged:
    """A file's bytes while they differ from (or are on their way to) the remote."""

    def __init__(self, path: Path, metadata: dict[str, Any], mtime: float) -> None:
        self.path = path
        self.metadata = metadata
        self.mtime = mtime
        self.size = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.generation = 1  # bumped by every change
        self.uploaded = 0  # the generation last uploaded
        self.journal_id: int | None = None
        self.progress: Progress | None = None  # an upload under way a failure interrupted
        self.public: bool | None = None  # the visibility to give the upload (None: default)
        self.uploading = False
        # The key the last upload attempt named: its object may exist unbeknown (under
        # way, or its answer lost) until that attempt landed, or the next one settled it.
        self.attempt: str | None = None
        self.attempt_journaled = False  # (`Uploader.changing`)
        self.unlinked = False  # removed while an upload went: its key is journaled at once
        self.lock = trio.Lock()  # one upload at a time
        self.journaling = trio.Lock()  # the journal row: one record or removal at a time
        # While every write has appended at the end (as cp does): the MD5 of bytes
        # [0, _hashed), fed off the write path (`follow`). None after any other write or
        # a truncate.
        self.digest: Any = hashlib.md5(usedforsecurity=False)
        self._hashed = 0
        self._hashing = trio.Lock()
        self._following = False

    @classmethod
    def create(cls, directory: Path, metadata: dict[str, Any], mtime: float) -> Staged:
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / uuid.uuid4().hex, metadata, mtime)

    @property
    def dirty(self) -> bool:
        return self.generation != self.uploaded

    @property
    def pending(self) -> bool:
        """Holds bytes the remote does not have yet."""
        return self.dirty or self.uploading

    @property
    def kept(self) -> bool:
        """The file must stay: its bytes are pending, or an upload of them is still being
        recorded (the journal row naming this file may outlive a crash till then)."""
        return self.pending or self.lock.locked()

    def touch(self, mtime: float) -> None:
        self.generation += 1
        self.mtime = mtime

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        if offset != self.size:
            self.digest = None  # also a second append sent before the first landed
        n = await trio.to_thread.run_sync(os.pwrite, self.fd, data, offset)
        self.size = max(self.size, offset + n)
        return n

    def follow(self, spawn: Spawn) -> None:
        """Hash what was appended in a background task, beside the writes: hashing in
        the write itself would make every write wait for it."""
        if not self._following and self.digest is not None and self._hashed < self.size:
            self._following = True

            async def run() -> None:
                try:
                    await self.md5()
                finally:
                    self._following = False

            spawn(run)

    async def md5(self) -> str | None:
        """The MD5 of the whole file while it was only appended to, else None."""
        async with self._hashing:
            while (digest := self.digest) is not None and self._hashed < self.size:
                start, end = self._hashed, min(self.size, self._hashed + HASH_RUN)
                try:
                    await trio.to_thread.run_sync(_hash_range, self.path, digest, start, end)
                except OSError:
                    self.digest = None  # unreadable: the stream is abandoned, not trusted
                    break
                if self.digest is digest:
                    self._hashed = end
            return None if self.digest is None else self.digest.hexdigest()

    async def read(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, self.fd, size, offset)

    async def truncate(self, size: int) -> None:
        if size != self.size:
            self.digest = None
        await trio.to_thread.run_sync(os.ftruncate, self.fd, size)
        self.size = size

    def discard(self) -> None:
        """Close and delete the file (its bytes are on the remote or were unlinked)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


def _hash_range(path: Path, digest: Any, start: int, end: int) -> None:
    # Its own descriptor: the staged file's may be closed meanwhile (discarded).
    fd = os.open(path, os.O_RDONLY)
    try:
        while start < end and (data := os.pread(fd, min(end - start, HASH_READ), start)):
            digest.update(data)
            start += len(data)
    finally:
        os.close(fd)
    if start < end:
        raise OSError(f"{path} is shorter than {end} bytes")


def sweep(directory: Path, keep: set[str]) -> int:
    """Delete the staging files no journal row names (`keep`: their file names; a crash
    before close left the others: their writer never had a successful close). Returns
    how many went."""
    gone = 0
    for path in directory.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)
            gone += 1
    return gone
