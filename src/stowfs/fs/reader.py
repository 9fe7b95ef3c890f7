"""The read path: block-aligned ranged reads through the block cache. A random read
that misses a block fetches only the bytes it asks for, the next miss there the whole
block; so does a first read smaller than a block of a bigger file (`file`, thumbnailers
and players read a header first, and the first bytes come sooner). While reads stay
sequential, a read-ahead window (in blocks) doubles, and one background task per open
file streams the window's blocks with a single ranged GET per run (one long stream beats
many parallel short ones: both ends are Python). URL renewal is the Remote's business
(it renews before expiry and on 403).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..remote.base import Remote, RemoteFile
from .blockcache import BlockCache, Buffer, version_id
from .staging import Spawn

log = logging.getLogger(__name__)


@dataclass
class ReadState:
    """Per open handle: where the next sequential read would start, and the window."""

    next_offset: int = 0
    window: int = 1  # blocks
    ahead_to: int = 0  # first block the read-ahead has not asked for yet
    streamer: trio.CancelScope | None = None
    moved: trio.Event = field(default_factory=trio.Event)  # the reader advanced
    sampled: set[int] = field(default_factory=set)  # blocks read in part by a random read

    def stop(self) -> None:
        if self.streamer is not None:
            self.streamer.cancel()
            self.streamer = None


class Reader:
    def __init__(
        self,
        remote: Remote,
        cache: BlockCache,
        spawn: Spawn,
        max_window: int = 32,
        parallel: int = 8,
    ) -> None:
        self.remote = remote
        self.cache = cache
        self.spawn = spawn
        self.max_window = max_window
        self.block_size = cache.block_size
        self._inflight: dict[tuple[str, int], trio.Event] = {}
        self._limiter = trio.CapacityLimiter(parallel)

    async def read(self, file: RemoteFile, offset: int, size: int, seq: ReadState) -> Buffer:
        end = min(offset + size, file.size)
        if end <= offset:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        # Judged on arrival: the kernel sends a file's reads in order but several at
        # once, and they finish in any order.
        jumped = offset != seq.next_offset
        # A first read smaller than a block may be all there is (a header).
        sample = jumped or (seq.next_offset == 0 and end - offset < bs < file.size)
        self._read_ahead(file, offset, end, last, seq)
        # A block a sequential read outran its read-ahead for is streamed data too.
        persist = seq.window == 1 or self.cache.worth_keeping(file.size)
        if first == last:  # the common case: a kernel read inside one block
            vid = version_id(file)
            data = await self.cache.get(vid, first, offset - first * bs, end - offset)
            if data is None:
                if sample and self._sample(seq, vid, first):
                    async with self._limiter:
                        return await self.remote.read(file, offset, end - offset)
                block = memoryview(await self.block(file, first, persist))
                data = block[offset - first * bs : end - first * bs]
            return data
        # The kernel's reads are seldom block-aligned: most span two blocks, both
        # usually in memory already (no tasks needed for those).
        vid = version_id(file)
        blocks: dict[int, Buffer] = {}
        for index in range(first, last + 1):
            if (hot := self.cache.hot(vid, index)) is not None:
                blocks[index] = hot

        async def one(index: int) -> None:
            blocks[index] = await self.block(file, index, persist)

        missing = [index for index in range(first, last + 1) if index not in blocks]
        if missing:
            async with trio.open_nursery() as nursery:
                for index in missing:
                    nursery.start_soon(one, index)
        head = memoryview(blocks[first])[offset - first * bs :]  # views: one copy, the join
        tail = memoryview(blocks[last])[: end - last * bs]
        return b"".join([head, *(blocks[i] for i in range(first + 1, last)), tail])

    def _sample(self, seq: ReadState, vid: str, index: int) -> bool:
        """A random read's first miss in a block fetches only the bytes asked for (a
        whole block is 256 times a 4 KiB page); a second miss there fetches the block."""
        if index in seq.sampled or (vid, index) in self._inflight:
            return False
        seq.sampled.add(index)
        return True

    def _read_ahead(
        self, file: RemoteFile, offset: int, end: int, last: int, seq: ReadState
    ) -> None:
        if offset == seq.next_offset and offset > 0:
            seq.window = min(seq.window * 2, self.max_window)
        elif offset != seq.next_offset:  # a jump: random access, no read-ahead
            seq.stop()
            seq.window = 1
            seq.ahead_to = 0
        seq.next_offset = end
        seq.moved.set()
        seq.moved = trio.Event()
        if seq.window > 1 and seq.streamer is None and end < file.size:
            seq.ahead_to = max(seq.ahead_to, last + 1)
            scope = seq.streamer = trio.CancelScope()
            self.spawn(lambda: self._stream(file, seq, scope))

    async def _stream(self, file: RemoteFile, seq: ReadState, scope: trio.CancelScope) -> None:
        """Keep the window ahead of the reader filled, a run of blocks per GET."""
        bs = self.block_size
        final = (file.size - 1) // bs
        vid = version_id(file)
        with scope:
            while seq.ahead_to <= final:
                reading = seq.next_offset // bs
                limit = min(reading + seq.window, final)
                if seq.ahead_to - reading > seq.window // 2:
                    await seq.moved.wait()  # refill once half the window is read
                    continue
                first = seq.ahead_to
                run = []
                for index in range(first, limit + 1):
                    if (vid, index) in self._inflight or self.cache.has(vid, index):
                        break
                    run.append(index)
                seq.ahead_to = first + max(len(run), 1)
                if run:
                    try:
                        await self._fetch_run(file, vid, run)
                    except Exception as exc:  # best effort; the reader's own fetch reports
                        log.debug("read-ahead of %s failed: %s", file.key, exc)
                        return
        if seq.streamer is scope:
            seq.streamer = None

    async def _fetch_run(self, file: RemoteFile, vid: str, run: list[int]) -> None:
        bs = self.block_size
        events = {index: trio.Event() for index in run}
        for index, event in events.items():
            self._inflight[(vid, index)] = event
        try:
            start = run[0] * bs
            # A block's chunks are joined once it is whole: its only copy.
            chunks: list[memoryview] = []  # views: splitting a chunk copies nothing
            index, missing = run[0], min(bs, file.size - start)
            length = min(len(run) * bs, file.size - start)
            persist = self.cache.worth_keeping(file.size)
            async for received in self.remote.stream(file, start, length):
                chunk = memoryview(received)
                while len(chunk) >= missing > 0:
                    chunks.append(chunk[:missing])
                    chunk = chunk[missing:]
                    self._landed(vid, index, b"".join(chunks), persist)
                    events.pop(index).set()
                    chunks, index = [], index + 1
                    missing = min(bs, file.size - index * bs)
                if chunk:
                    chunks.append(chunk)
                    missing -= len(chunk)
        finally:
            for index, event in events.items():  # waiters fetch these themselves
                self._inflight.pop((vid, index), None)
                event.set()

    def _landed(self, vid: str, index: int, data: bytes, persist: bool = True) -> None:
        """A fetched block: in memory at once; to disk in the background, so the
        readers never wait for the disk (dropped if the disk lags far behind).
        `persist` False: a read-ahead stream of a file too big for the cache."""
        self.cache.remember(vid, index, data)
        self._inflight.pop((vid, index), None)
        if persist:
            self.spawn(lambda: self.cache.store(vid, index, data, optional=True))

    async def block(self, file: RemoteFile, index: int, persist: bool = True) -> Buffer:
        vid = version_id(file)
        while True:
            data = await self.cache.get(vid, index)
            if data is not None:
                return data
            event = self._inflight.get((vid, index))
            if event is None:
                break
            await event.wait()  # someone else fetches it; then look again
        event = self._inflight[(vid, index)] = trio.Event()
        try:
            async with self._limiter:
                bs = self.block_size
                data = await self.remote.read(file, index * bs, min(bs, file.size - index * bs))
            self._landed(vid, index, data, persist)
            return data
        finally:
            self._inflight.pop((vid, index), None)
            event.set()
