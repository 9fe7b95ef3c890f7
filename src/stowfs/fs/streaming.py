"""Big files upload while they are written.

Once a file that has only been appended to grows past what one request uploads, a
multipart upload begins and each part goes out as soon as the file holds it whole; the
close-time upload then sends only the last parts (the file's MD5 is computed beside the
writes, from the page cache, so close does not wait for a whole pass). Any other write,
a truncate, a rename or a failed part abandons the stream: the close-time upload then
sends the whole file, as for any other file. The stream is a head start, never the only
copy of anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from ..errors import StowfsError
from ..remote.base import Remote, UploadCheckpoint
from .journal import Progress
from .staging import Spawn, Staged

log = logging.getLogger(__name__)

Target = tuple[str, str, dict[str, Any]]  # folder, name, metadata
PARALLEL = 4  # parts in flight per file while it is written


@dataclass
class Stream:
    folder: str
    name: str
    metadata: dict[str, Any]  # what the upload was begun with
    checkpoint: UploadCheckpoint | None = None  # None: being begun
    handed: int = 0  # parts 1..handed have been started
    inflight: int = 0
    broken: bool = False
    idle: trio.Event = field(default_factory=trio.Event)  # set while nothing is in flight

    def __post_init__(self) -> None:
        self.idle.set()


class Streamer:
    def __init__(self, remote: Remote, spawn: Spawn) -> None:
        self.remote = remote
        self.spawn = spawn
        caps = remote.capabilities
        self.threshold = caps.single_upload_max if caps.multipart else None
        self._streams: dict[Staged, Stream] = {}

    def wrote(self, staged: Staged, target: Callable[[], Target]) -> None:
        """After a write: begin, feed or abandon the file's stream. `target` (where the
        file goes, with what metadata) is asked for only when a stream begins."""
        stream = self._streams.get(staged)
        if stream is None:
            if self.threshold is None or staged.digest is None or staged.size <= self.threshold:
                return
            folder, name, metadata = target()
            stream = self._streams[staged] = Stream(folder, name, metadata)
            self._start(staged, stream, partial(self._begin, stream))
        elif staged.digest is None or stream.broken:
            self.abandon(staged)
            return
        else:
            self._pump(staged, stream)
        staged.follow(self.spawn)  # the close-time complete needs the whole file's MD5

    async def finish(self, staged: Staged, folder: str, name: str) -> Stream | None:
        """Before the close-time upload: the stream to complete (its checkpoint carries
        the file's MD5), once its parts in flight have landed; None: upload it all."""
        stream = self._streams.get(staged)
        if stream is None:
            return None
        await stream.idle.wait()
        if self._streams.pop(staged, None) is not stream:
            return None  # abandoned while waiting
        cp = stream.checkpoint
        moved = (folder, name) != (stream.folder, stream.name)
        md5 = await staged.md5()
        if cp is None or stream.broken or md5 is None or moved:
            await self._abort(stream)  # here: finish also runs at unmount, past the nursery
            return None
        cp.md5 = md5
        return stream

    def progress(self, staged: Staged) -> Progress | None:
        """The parts the file's stream has landed so far, as progress to journal (the
        file was only appended to: they hold its bytes); None: no intact stream."""
        stream = self._streams.get(staged)
        cp = stream.checkpoint if stream is not None else None
        if stream is None or cp is None or stream.broken or staged.digest is None:
            return None
        return Progress(stream.folder, stream.name, stream.metadata, cp)

    def abandon(self, staged: Staged) -> None:
        stream = self._streams.pop(staged, None)
        if stream is not None:
            stream.broken = True
            self.spawn(partial(self._abort, stream))

    # -- the tasks ------------------------------------------------------------------
    def _start(self, staged: Staged, stream: Stream, fn: Callable[[], Awaitable[None]]) -> None:
        if not stream.inflight:
            stream.idle = trio.Event()
        stream.inflight += 1

        async def run() -> None:
            try:
                await fn()
            except (StowfsError, OSError) as exc:
                log.info("streaming upload of %s stopped: %s", stream.name, exc)
                stream.broken = True
            finally:
                stream.inflight -= 1
                if not stream.inflight:
                    stream.idle.set()
            if not stream.broken and self._streams.get(staged) is stream:
                self._pump(staged, stream)

        self.spawn(run)

    async def _begin(self, stream: Stream) -> None:
        cp = await self.remote.begin_upload(stream.folder, stream.name, stream.metadata)
        stream.checkpoint = cp
        stream.broken = stream.broken or cp is None

    def _pump(self, staged: Staged, stream: Stream) -> None:
        cp = stream.checkpoint
        if cp is None:
            return
        while stream.inflight < PARALLEL and staged.size >= (stream.handed + 1) * cp.part_size:
            stream.handed += 1
            self._start(
                staged, stream, partial(self.remote.upload_part, cp, stream.handed, staged.path)
            )

    async def _abort(self, stream: Stream) -> None:
        """Release a stream's parts once nothing of it is in flight (a begin included)."""
        await stream.idle.wait()
        if stream.checkpoint is not None:
            await self.remote.abort_upload(stream.checkpoint)
