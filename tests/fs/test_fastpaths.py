"""The read and listing fast paths: read-ahead judged as reads arrive, disk writes off
the read path, kernel entry/attribute caching, cheap answers for foreign xattrs."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from stowfs.remote.base import RemoteFile
from tests.fs.harness import CTX, FS, mounted_ops
from tests.fs.memremote import MemRemote


async def test_read_ahead_starts_while_the_first_reads_wait(
    fs: FS, remote: MemRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel sends several reads at once; they finish in any order, so a run of
    reads is seen as sequential when they arrive, not when their data does."""
    bs = 64 * 1024
    data = os.urandom(bs * 16)
    remote.put("", "big", data)
    fh = await fs.open("big")
    gate = trio.Event()
    plain_read = remote.read

    async def slow_first_block(file: RemoteFile, offset: int, length: int) -> bytes:
        if offset == 0:
            await gate.wait()
        return await plain_read(file, offset, length)

    monkeypatch.setattr(remote, "read", slow_first_block)
    out: dict[int, bytes] = {}

    async def one(offset: int) -> None:
        out[offset] = bytes(await fs.ops.read(fh, offset, bs // 8))

    async with trio.open_nursery() as nursery:
        for offset in range(0, bs, bs // 8):  # in order, all in the first block
            nursery.start_soon(one, offset)
            await trio.testing.wait_all_tasks_blocked()
        assert remote.served > 0  # blocks after the first are on their way already
        gate.set()
    assert b"".join(out[o] for o in sorted(out)) == data[:bs]
    await fs.ops.release(fh)


async def test_fetched_blocks_reach_the_disk_cache(fs: FS, remote: MemRemote) -> None:
    remote.put("", "f", os.urandom(100))
    assert len(await fs.read_file("f")) == 100
    with trio.fail_after(5):  # written in the background: the read did not wait
        while fs.ops.cache.total == 0:
            await trio.sleep(0.01)
    assert fs.ops.cache.total == os.statvfs(fs.ops.cache.directory).f_frsize  # its disk block


async def test_kernel_keeps_entries_as_long_as_the_listing(fs: FS, remote: MemRemote) -> None:
    remote.put("", "f", b"1")
    attr = await fs.stat("f")
    assert attr.entry_timeout == attr.attr_timeout == fs.ops.options.dir_cache_time


async def test_a_file_changed_elsewhere_is_invalidated_even_if_never_read(
    fs: FS, remote: MemRemote
) -> None:
    remote.put("", "f", b"1")
    inode = await fs.resolve("f")
    remote.put("", "f", b"longer")  # replaced elsewhere: the kernel's size is wrong
    fs.ops.tree.nodes[pyfuse3.ROOT_INODE].listed_at = None
    await fs.resolve("f")
    assert (inode, None) in fs.invalidated
    assert (await fs.stat("f")).st_size == 6


async def test_foreign_xattr_namespaces_answer_enodata_at_once(fs: FS, remote: MemRemote) -> None:
    remote.put("", "f", b"1")
    inode = await fs.resolve("f")
    before = sum(remote.calls.values())
    for target in (inode, pyfuse3.InodeT(10**9)):  # a known inode, and one never given out
        for name in (b"security.selinux", b"system.posix_acl_access", b"trusted.x"):
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await fs.ops.getxattr(target, name, CTX)
            assert exc.value.errno == errno.ENODATA
    assert sum(remote.calls.values()) == before


async def test_other_namespaces_can_answer_not_supported(tmp_path: Path) -> None:
    remote = MemRemote()
    remote.put("", "f", b"1")
    async with mounted_ops(remote, tmp_path / "cache", other_xattrs="enotsup") as fs:
        inode = await fs.resolve("f")
        for call in (
            lambda: fs.ops.getxattr(inode, b"security.selinux", CTX),
            lambda: fs.ops.getxattr(inode, b"system.posix_acl_access", CTX),
            lambda: fs.ops.removexattr(inode, b"trusted.x", CTX),
        ):
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await call()
            assert exc.value.errno == errno.ENOTSUP
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.ops.getxattr(inode, b"user.nope", CTX)
        assert exc.value.errno == errno.ENODATA


async def test_a_read_across_blocks_is_exact(fs: FS, remote: MemRemote) -> None:
    bs = 64 * 1024
    data = os.urandom(bs * 4 + 123)
    remote.put("", "big", data)
    for offset, size in ((bs - 7, 2 * bs + 20), (3 * bs + 5, 2 * bs), (5, 4 * bs + 500)):
        assert await fs.read_file("big", offset, size) == data[offset : offset + size]


async def test_streaming_a_file_too_big_for_the_cache_keeps_the_disk_cache(
    remote: MemRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scan resistance: read-ahead blocks of a file over a quarter of the cache stay in
    memory only; every block of a small file is offered to the disk cache."""
    bs = 64 * 1024
    big, small = os.urandom(bs * 32), os.urandom(bs * 8)
    remote.put("", "big", big)
    remote.put("", "small", small)
    remote.put("", "big2", big)
    async with mounted_ops(remote, tmp_path / "c", cache_max_size=bs * 64, block_size=bs) as fs:
        offered: list[int] = []
        plain_store = fs.ops.cache.store

        async def store(vid: str, index: int, data: bytes, *, optional: bool = False) -> None:
            offered.append(index)
            await plain_store(vid, index, data, optional=optional)

        monkeypatch.setattr(fs.ops.cache, "store", store)

        async def read_in_order(name: str, size: int) -> bytes:
            offered.clear()
            fh = await fs.open(name)
            parts = [await fs.ops.read(fh, o, bs // 4) for o in range(0, size, bs // 4)]
            await fs.ops.release(fh)
            await trio.testing.wait_all_tasks_blocked()
            return b"".join(parts)

        assert await read_in_order("big", len(big)) == big
        assert offered == []  # the stream, and the blocks read on demand within it
        assert await read_in_order("small", len(small)) == small
        assert sorted(offered) == list(range(8))

        async def broken(file: RemoteFile, offset: int = 0, length: int | None = None) -> Any:
            raise OSError("the read-ahead stream broke")
            yield b""

        # Without its read-ahead a sequential reader fetches each block itself:
        # streamed data all the same, kept from the disk cache.
        monkeypatch.setattr(remote, "stream", broken)
        assert await read_in_order("big2", len(big)) == big
        assert offered == []
