"""Drive `Operations` without a mount: path-level helpers over the FUSE handlers."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pyfuse3
import trio
import trio.testing

from stowfs.fs.operations import Operations
from stowfs.fs.options import MountOptions
from tests.fs.memremote import MemRemote

CTX: Any = None  # the handlers never look at the request context


@dataclass(frozen=True)
class Fields:
    """Stands in for pyfuse3.SetattrFields (read-only outside a request)."""

    update_size: bool = False
    update_mtime: bool = False


async def setattr_(
    ops: Operations,
    inode: pyfuse3.InodeT,
    *,
    size: int | None = None,
    mtime_ns: int | None = None,
    fh: pyfuse3.FileHandleT | None = None,
) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    if size is not None:
        attr.st_size = size
    if mtime_ns is not None:
        attr.st_mtime_ns = mtime_ns
    fields: Any = Fields(size is not None, mtime_ns is not None)
    return await ops.setattr(inode, attr, fields, fh, CTX)


def _record_entry(token: list[tuple[bytes, int]], name: bytes, attr: Any, next_id: int) -> bool:
    token.append((name, attr.st_ino))
    return True


async def read_entries(ops: Operations, inode: pyfuse3.InodeT) -> list[tuple[bytes, int]]:
    """A directory's entries as readdir gives them: (name, inode), "." and ".." too.
    readdir_reply needs a kernel token; the entries are recorded instead."""
    fh = await ops.opendir(inode, CTX)
    token: list[tuple[bytes, int]] = []
    with mock.patch.object(pyfuse3, "readdir_reply", _record_entry):
        await ops.readdir(fh, 0, token)
    await ops.releasedir(fh)
    return token


class FS:
    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.invalidated: list[tuple[int, str | None]] = []

    async def resolve(self, path: str) -> pyfuse3.InodeT:
        inode = pyfuse3.ROOT_INODE
        for part in [p for p in path.split("/") if p]:
            inode = (await self.ops.lookup(inode, part.encode(), CTX)).st_ino
        return inode

    async def split(self, path: str) -> tuple[pyfuse3.InodeT, bytes]:
        head, _, name = path.rstrip("/").rpartition("/")
        return await self.resolve(head), name.encode()

    async def listdir(self, path: str = "") -> list[str]:
        entries = await read_entries(self.ops, await self.resolve(path))
        return sorted(name.decode() for name, _ in entries if name not in (b".", b".."))

    async def stat(self, path: str) -> pyfuse3.EntryAttributes:
        return await self.ops.getattr(await self.resolve(path), CTX)

    async def exists(self, path: str) -> bool:
        try:
            await self.resolve(path)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return False
        return True

    async def open(self, path: str, flags: int = os.O_RDONLY) -> pyfuse3.FileHandleT:
        try:
            inode = await self.resolve(path)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT or not flags & os.O_CREAT:
                raise
            parent, name = await self.split(path)
            info, _ = await self.ops.create(parent, name, 0o644, flags, CTX)
            return info.fh
        return (await self.ops.open(inode, flags, CTX)).fh

    async def close(self, fh: pyfuse3.FileHandleT) -> None:
        try:
            await self.ops.flush(fh)
        finally:
            await self.ops.release(fh)

    async def write_file(self, path: str, data: bytes, flags: int = os.O_TRUNC) -> None:
        fh = await self.open(path, os.O_WRONLY | os.O_CREAT | flags)
        try:
            if data:
                await self.ops.write(fh, 0, data)
        finally:
            await self.close(fh)

    async def read_file(self, path: str, offset: int = 0, size: int = 1 << 30) -> bytes:
        fh = await self.open(path)
        try:
            return bytes(await self.ops.read(fh, offset, size))
        finally:
            await self.ops.release(fh)

    async def mkdir(self, path: str) -> None:
        parent, name = await self.split(path)
        await self.ops.mkdir(parent, name, 0o755, CTX)

    async def rmdir(self, path: str) -> None:
        parent, name = await self.split(path)
        await self.ops.rmdir(parent, name, CTX)

    async def unlink(self, path: str) -> None:
        parent, name = await self.split(path)
        await self.ops.unlink(parent, name, CTX)

    async def rename(self, old: str, new: str, flags: int = 0) -> None:
        p1, n1 = await self.split(old)
        p2, n2 = await self.split(new)
        await self.ops.rename(p1, n1, p2, n2, flags, CTX)

    async def getxattr(self, path: str, name: str) -> bytes:
        return await self.ops.getxattr(await self.resolve(path), name.encode(), CTX)

    async def setxattr(self, path: str, name: str, value: bytes) -> None:
        await self.ops.setxattr(await self.resolve(path), name.encode(), value, CTX)

    async def listxattr(self, path: str) -> list[str]:
        return sorted(n.decode() for n in await self.ops.listxattr(await self.resolve(path), CTX))

    async def removexattr(self, path: str, name: str) -> None:
        await self.ops.removexattr(await self.resolve(path), name.encode(), CTX)


@asynccontextmanager
async def mounted_ops(remote: MemRemote, cache_dir: Path, **options: Any) -> AsyncIterator[FS]:
    """Operations over `remote`, started in a nursery (no kernel involved)."""
    options.setdefault("dir_cache_time", 1000.0)
    options.setdefault("block_size", 64 * 1024)
    opts = MountOptions(cache_dir=cache_dir, **options)
    fs_holder: list[FS] = []

    def invalidate(inode: int, name: str | None) -> None:
        fs_holder[0].invalidated.append((inode, name))

    ops = Operations(remote, opts, invalidate)
    fs = FS(ops)
    fs_holder.append(fs)
    async with trio.open_nursery() as nursery:
        await ops.start(nursery)
        try:
            yield fs
        finally:
            nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await ops.shutdown()


def gated(remote: MemRemote, method: str, *, done: bool = False) -> tuple[trio.Event, trio.Event]:
    """From now on a call of `method` sets `entered`, then waits for `gate` to be set;
    `done`: the call is made first (its answer waits)."""
    entered, gate = trio.Event(), trio.Event()
    call = getattr(remote, method)

    async def waiting(*args: object, **kw: object) -> object:
        result = await call(*args, **kw) if done else None
        entered.set()
        await gate.wait()
        return result if done else await call(*args, **kw)

    setattr(remote, method, waiting)
    return entered, gate


async def open_once_all_wait(entered: trio.Event, gate: trio.Event) -> None:
    """Set `gate` once `entered` is and every task waits: the answer to a call (of
    `gated`) that comes only when nothing else can run, a shielded wait included."""
    await entered.wait()
    await trio.testing.wait_all_tasks_blocked()
    gate.set()


async def left_pending(remote: MemRemote, cache: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` (write-back) in a mount that ends with the service down, as after
    a kill -9: their rows stay for the next mount."""
    async with mounted_ops(remote, cache, write_back=1000.0) as fs:
        for path, data in files.items():
            await fs.write_file(path, data)
        remote.down = True
    remote.down = False
