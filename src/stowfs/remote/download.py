"""The read path: signed URLs cached with their expiry, ranged GETs, resume, parallel ranges."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import trio

from .. import errors
from ..tasks import open_nursery
from .base import RemoteFile
from .transport import Transport, describe
from .tuning import Tuning

log = logging.getLogger("stowfs.remote")

Renew = Callable[[RemoteFile], Awaitable[RemoteFile]]
# Keys whose newest URL is kept (the most recently used): a long-lived mount or daemon
# sees keys come and go elsewhere without end. One forgotten costs nothing while the
# URL its file carries is valid, else a renewal.
URLS_KEPT = 10_000


class Downloader:
    def __init__(self, transport: Transport, renew: Renew | None, tuning: Tuning) -> None:
        self.transport = transport
        self.renew = renew  # None: the dialect cannot issue a new URL
        self.tuning = tuning
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()  # the oldest first

    def remember(self, file: RemoteFile) -> None:
        if file.url:
            expires = file.url_expires if file.url_expires is not None else math.inf
            known = self._urls.get(file.key)
            if known is None or known[1] < expires:
                self._urls[file.key] = (file.url, expires)
            self._urls.move_to_end(file.key)
            if len(self._urls) > URLS_KEPT:
                self._urls.popitem(last=False)

    def forget(self, key: str) -> None:
        self._urls.pop(key, None)

    async def fresh_url(
        self, file: RemoteFile, min_valid: float, *, force: bool = False
    ) -> tuple[str, float]:
        self.remember(file)
        known = self._urls.get(file.key)
        now = self.transport.wall_clock()
        if known is not None and not force and known[1] - now >= min_valid:
            return known
        if self.renew is None:
            if known is not None and known[1] > now and not force:
                return known
            if known is None:  # (presign: an upload gives a key to pass on, no download)
                raise errors.Forbidden(
                    f"the service gave no download URL for {file.path!r}: this dialect"
                    " cannot read it back"
                )
            raise errors.Forbidden(
                f"the download URL of {file.path!r} has expired and this dialect cannot renew it"
            )
        log.debug("renewing the download URL of %s", file.key)
        renewed = await self.renew(file)
        if not renewed.url:
            raise errors.ProtocolError(f"the service gave no download URL for {file.path!r}")
        self.forget(file.key)
        self.remember(renewed)
        return self._urls[file.key]

    async def stream(
        self, file: RemoteFile, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        end = file.size if length is None else min(file.size, offset + length)
        pos = max(0, offset)
        policy = self.transport.policy
        failures = 0  # since the last byte received
        forced = False  # renewed after a 403 and not yet past it
        start = trio.current_time()
        while pos < end:
            url, _ = await self.fresh_url(file, self.tuning.url_margin, force=forced)
            try:
                async with self.transport.stream(
                    "GET",
                    url,
                    headers={"Range": f"bytes={pos}-{end - 1}", "Accept-Encoding": "identity"},
                ) as response:
                    if response.status_code == 416:
                        return  # the object is shorter than we thought: EOF
                    if response.status_code == 403:
                        if forced:
                            raise errors.Forbidden(
                                f"{describe('GET', url)}: refused even with a fresh URL",
                                status=403,
                            )
                        forced = True
                        continue
                    skip = pos if response.status_code == 200 else 0  # Range ignored
                    async for chunk in response.aiter_raw():
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                        chunk = chunk[: end - pos]
                        if not chunk:
                            continue
                        pos += len(chunk)
                        failures, forced = 0, False
                        yield chunk
                        if pos >= end and response.status_code != 206:
                            return  # the whole object came: stop reading it
                    # A range read to its end lets the connection be kept alive (one left
                    # before its end is closed: a new connection per small read).
                    if pos < end:  # a clean end of body, but short: the object shrank
                        return
            except httpx.TransportError as exc:
                # A body broken mid-way: resume with Range from `pos`. The retry budget
                # counts from the last progress, so a long download is not cut short.
                if failures == 0:
                    start = trio.current_time()
                wait = policy.backoff(failures, self.transport.rng)
                failures += 1
                elapsed = trio.current_time() - start
                if failures >= policy.max_attempts or elapsed + wait > policy.max_elapsed:
                    raise errors.Unavailable(
                        f"{describe('GET', url)}: download failed at byte {pos}"
                        f" ({type(exc).__name__})"
                    ) from None
                log.info(
                    "download of %s broke at %d (%s); resuming", file.key, pos, type(exc).__name__
                )
                await trio.sleep(wait)

    async def read(self, file: RemoteFile, offset: int, length: int) -> bytes:
        end = min(file.size, offset + max(0, length))
        size = end - offset
        if size <= 0:
            return b""
        if size <= self.tuning.read_split:
            return b"".join([chunk async for chunk in self.stream(file, offset, size)])
        pieces = min(self.tuning.read_parallel, -(-size // (self.tuning.read_split // 2)))
        step = -(-size // pieces)
        # Each piece keeps its chunks; one join at the end is the only copy.
        chunks: list[list[bytes]] = [[] for _ in range(pieces)]

        async def fetch(index: int) -> None:
            low = index * step
            async for chunk in self.stream(file, offset + low, min(step, size - low)):
                chunks[index].append(chunk)

        async with open_nursery() as nursery:
            for index in range(pieces):
                nursery.start_soon(fetch, index)
        # Short only at EOF: keep the pieces up to the first short one.
        whole: list[bytes] = []
        for index in range(pieces):
            whole.extend(chunks[index])
            if sum(map(len, chunks[index])) < min(step, size - index * step):
                break
        return b"".join(whole)
