"""The on-disk block cache: fixed-size blocks of remote objects, LRU, bounded in bytes.

A block is named by the object's version (key + checksum), so a changed object never
serves old bytes. A few recent blocks also stay in memory (kernel reads are smaller
than a block, and read-ahead lands here first). Disk I/O runs in worker threads.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

import trio

from ..remote.base import RemoteFile

log = logging.getLogger(__name__)

Buffer = bytes | memoryview  # block data: views of cached blocks, or bytes read

SCAN_FRACTION = 4
WRITE_BACKLOG = 4  # blocks waiting for the disk
MEMORY_BLOCKS = 80  # above the largest read-ahead window, so read-ahead stays in memory
# Cached blocks leave this much of the disk free, for staging files and the journal:
# a tenth of it, at most 1 GiB.
RESERVE_FRACTION = 10
RESERVE_MAX = 1 << 30


def shortfall(directory: Path, size: int) -> int:
    """How many bytes must go for `size` more to fit on `directory`'s disk above the
    reserve."""
    st = os.statvfs(directory)
    reserve = min(st.f_blocks * st.f_frsize // RESERVE_FRACTION, RESERVE_MAX)
    return max(0, size + reserve - st.f_bavail * st.f_frsize)


def version_id(file: RemoteFile) -> str:
    tag = file.checksum or f"{file.updated_at}:{file.size}"
    return hashlib.sha1(f"{file.key}\0{tag}".encode()).hexdigest()


class BlockCache:
    def __init__(self, directory: Path, max_bytes: int, block_size: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.block_size = block_size
        # (version id, block index) -> disk space: a key of strings takes far less memory
        # than a Path, and a cache of tiny blocks has hundreds of thousands of them.
        self._lru: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._total = 0
        self._memory: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._writing: dict[tuple[str, int], bytes] = {}  # on their way to disk
        self._doomed: list[Path] = []  # blocks discarded, unlinked with the next eviction
        self._writers = trio.CapacityLimiter(2)  # more threads only fight over the disk
        # Blocks count for the disk space they take: a file of a few bytes takes a whole
        # allocation unit, and a cache of tiny objects must not outgrow its cap by 40x.
        self._unit = 4096

    async def open(self) -> None:
        """Index what a previous mount left, oldest first; remove its cut-short writes."""

        def scan() -> list[tuple[float, tuple[str, int], int]]:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._unit = os.statvfs(self.directory).f_frsize or self._unit
            found = []
            for entry in self.directory.rglob("*.*"):
                vid, _, index = entry.stem.partition(".")
                if not index.isdigit():
                    continue  # not a block this cache wrote
                if entry.suffix == ".tmp":
                    entry.unlink(missing_ok=True)  # a write a crash cut short
                elif entry.suffix == ".blk":
                    st = entry.stat()
                    found.append((st.st_mtime, (vid, int(index)), self._footprint(st.st_size)))
            return sorted(found)

        for _, key, size in await trio.to_thread.run_sync(scan):
            self._lru[key] = size
            self._total += size
        await self._evict()

    def _footprint(self, size: int) -> int:
        return max(1, -(-size // self._unit)) * self._unit

    @property
    def total(self) -> int:
        return self._total

    def has(self, vid: str, index: int) -> bool:
        key = (vid, index)
        return key in self._memory or key in self._writing or key in self._lru

    def _path(self, vid: str, index: int) -> Path:
        return self.directory / vid[:2] / f"{vid}.{index}.blk"

    def hot(self, vid: str, index: int) -> bytes | None:
        """A block held in memory (recent, or on its way to disk), else None."""
        key = (vid, index)
        data = self._memory.get(key)
        if data is not None:
            self._memory.move_to_end(key)
            return data
        return self._writing.get(key)

    async def get(self, vid: str, index: int, start: int = 0, size: int = -1) -> Buffer | None:
        """Bytes [start, start+size) of a cached block (all of it by default); None if
        the block is not cached. A block in memory gives a view (no copy: replies to the
        kernel take any buffer); disk reads take only the slice asked for."""
        hot = self.hot(vid, index)
        if hot is not None:
            view = memoryview(hot)
            return view[start:] if size < 0 else view[start : start + size]
        key = (vid, index)
        if key not in self._lru:
            return None
        self._lru.move_to_end(key)
        path = self._path(vid, index)

        def read() -> bytes:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(size)

        try:
            return await trio.to_thread.run_sync(read)
        except FileNotFoundError:
            self._forget(key)
            return None

    def worth_keeping(self, file_size: int) -> bool:
        """Scan resistance: streaming a file larger than a quarter of the cache to
        disk would only evict the working set (and costs the mount a core)."""
        return file_size <= self.max_bytes // SCAN_FRACTION

    async def store(self, vid: str, index: int, data: bytes, *, optional: bool = False) -> None:
        """Write a block to disk (LRU-bounded). `optional` (fetched blocks): skipped
        when the disk lags behind, so memory stays bounded."""
        footprint = self._footprint(len(data))
        if footprint > self.max_bytes or (optional and len(self._writing) >= WRITE_BACKLOG):
            return
        key = (vid, index)
        path = self._path(*key)

        def write(room_made: bool) -> int:
            """Write the block if it fits above the reserve (or room was made for it);
            else return the bytes missing."""
            path.parent.mkdir(parents=True, exist_ok=True)  # (again, if the dir was removed)
            short = 0 if room_made else shortfall(self.directory, footprint)
            if short:
                return short
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_bytes(data)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, path)
            return 0

        self._writing[key] = data
        try:
            async with self._writers:
                short = await trio.to_thread.run_sync(write, False)  # one thread hop, usually
                if short:
                    if await self.free(short) < short:
                        return  # the disk is full of other things: the block is not kept
                    await trio.to_thread.run_sync(write, True)
        except OSError as exc:
            level = logging.INFO if exc.errno == errno.ENOSPC else logging.WARNING
            log.log(level, "a block is not cached: %s", exc)
            return
        finally:
            del self._writing[key]
        self._forget(key)
        self._lru[key] = footprint
        self._total += footprint
        await self._evict()

    def remember(self, vid: str, index: int, data: bytes) -> None:
        self._memory[(vid, index)] = data
        self._memory.move_to_end((vid, index))
        while len(self._memory) > MEMORY_BLOCKS:
            self._memory.popitem(last=False)

    def discard(self, file: RemoteFile) -> None:
        """Forget the blocks of a version no longer shown; their files go with the next
        eviction (no thread hop of its own)."""
        vid = version_id(file)
        for key in [k for k in self._memory if k[0] == vid]:
            del self._memory[key]
        count = max(1, -(-file.size // self.block_size))
        # A huge file's blocks are looked for among those cached, not counted through.
        keys = [(vid, i) for i in range(count)] if count <= len(self._lru) else list(self._lru)
        for key in keys:
            if key[0] == vid and key in self._lru:
                self._forget(key)
                self._doomed.append(self._path(*key))

    def _forget(self, key: tuple[str, int]) -> None:
        size = self._lru.pop(key, None)
        if size is not None:
            self._total -= size

    async def free(self, size: int) -> int:
        """Evict least recently used blocks of at least `size` bytes in all (a staging
        file needs the disk); returns how many bytes went."""
        return await self._evict(max(0, min(self._total - size, self.max_bytes)))

    async def _evict(self, keep: int | None = None) -> int:
        """Evict down to `keep` bytes (the size limit by default); returns bytes freed."""
        limit = self.max_bytes if keep is None else keep
        victims, freed = self._doomed, 0
        self._doomed = []
        while self._total > limit and self._lru:
            key, size = self._lru.popitem(last=False)
            self._total -= size
            freed += size
            victims.append(self._path(*key))
        if victims:

            def unlink() -> None:
                for path in victims:
                    path.unlink(missing_ok=True)

            await trio.to_thread.run_sync(unlink)
        return freed
