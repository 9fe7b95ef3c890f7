"""A pyfuse3 filesystem that does no work: the floor of any pyfuse3 + trio mount here.

    python -m tests.benchmarks.nullfs MOUNTPOINT SIZE COUNT

`big` is a file of SIZE bytes whose reads return views of one constant buffer; `many`
is a folder of COUNT empty files. Attributes never expire; xattrs answer "none" at once.
The benchmark reads and lists it beside stowfs, so what pyfuse3, trio and the kernel
cost (a round trip into Python, filling the page cache) is measured, not guessed.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from stowfs.fs.mount import raise_kernel_read_ahead

ROOT, BIG, MANY = 1, 2, 3
FIRST = 4  # inode of many/f0
BUFFER = memoryview(os.urandom(1024 * 1024))


class NullOperations(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, size: int, count: int, mountpoint: Path) -> None:
        super().__init__()
        self.size, self.count, self.mountpoint = size, count, mountpoint
        self.started = False

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(inode)
        a.entry_timeout = a.attr_timeout = 3600
        directory = inode in (ROOT, MANY)
        a.st_mode = (stat.S_IFDIR | 0o755) if directory else (stat.S_IFREG | 0o644)
        a.st_nlink = 2 if directory else 1
        a.st_size = self.size if inode == BIG else 0
        a.st_blksize = 128 * 1024
        return a

    async def getattr(self, inode: pyfuse3.InodeT, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if not self.started:  # after the kernel's INIT, as stowfs does it
            self.started = True
            await trio.to_thread.run_sync(raise_kernel_read_ahead, self.mountpoint)
        return self._attr(inode)

    async def lookup(
        self, parent: pyfuse3.InodeT, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        if parent == ROOT and name in (b"big", b"many"):
            return self._attr(BIG if name == b"big" else MANY)
        if parent == MANY and name.startswith(b"f") and name[1:].isdigit():
            index = int(name[1:])
            if index < self.count:
                return self._attr(FIRST + index)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: pyfuse3.InodeT, ctx: Any) -> pyfuse3.FileHandleT:
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: Any) -> None:
        names = [b"big", b"many"] if fh == ROOT else [b"f%d" % i for i in range(self.count)]
        for index in range(start_id, len(names)):
            inode = (BIG + index) if fh == ROOT else (FIRST + index)
            if not pyfuse3.readdir_reply(token, names[index], self._attr(inode), index + 1):
                return

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=False)

    async def read(  # type: ignore[override]
        self, fh: pyfuse3.FileHandleT, off: int, size: int
    ) -> memoryview:
        return BUFFER[: max(0, min(size, self.size - off, len(BUFFER)))]

    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: pyfuse3.InodeT, ctx: Any) -> Sequence[bytes]:
        return []


def main() -> None:
    mountpoint, size, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    ops = NullOperations(size, count, mountpoint)
    pyfuse3.init(ops, str(mountpoint), set(pyfuse3.default_options) | {"fsname=nullfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
