"""Sibling prefetch: small files read one after another in a folder's order are
fetched ahead; any other pattern fetches nothing it was not asked for."""

from __future__ import annotations

import trio
import trio.testing

from tests.fs.harness import FS
from tests.fs.memremote import MemRemote


def put_files(remote: MemRemote, names: list[str], size: int = 100) -> None:
    for name in names:
        remote.put("w", name, name.encode().ljust(size, b"."))


async def settle(remote: MemRemote, reads: int) -> None:
    """Until the remote has served `reads` reads (the prefetches run in the background)."""
    with trio.fail_after(10):
        while remote.calls["read"] < reads:
            await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()
    assert remote.calls["read"] == reads


async def test_files_read_in_name_order_are_fetched_ahead(fs: FS, remote: MemRemote) -> None:
    names = [f"f{i:02d}" for i in range(12)]
    put_files(remote, names)
    for name in names[:3]:
        assert await fs.read_file(f"w/{name}") == name.encode().ljust(100, b".")
    # the third in a row: the next 4 come ahead, while the reader is still on its own
    await settle(remote, 3 + 4)
    for name in names[3:]:
        assert await fs.read_file(f"w/{name}") == name.encode().ljust(100, b".")
    await settle(remote, len(names))  # each file fetched once, never twice


async def test_files_read_in_inode_order_are_fetched_ahead(fs: FS, remote: MemRemote) -> None:
    """cp -r reads a folder in inode order (gnulib's savedir sorts by inode)."""
    put_files(remote, ["m", "c", "x", "a", "q", "b", "k", "z"])
    await fs.listdir("w")
    by_inode = sorted([(await fs.resolve(f"w/{n}"), n) for n in await fs.listdir("w")])
    assert [n for _, n in by_inode] != sorted(n for _, n in by_inode)  # two orders
    for _, name in by_inode[:3]:
        await fs.read_file(f"w/{name}")
    await settle(remote, 3 + 4)
    for _, name in by_inode[3:]:
        await fs.read_file(f"w/{name}")
    await settle(remote, 8)


async def test_reads_out_of_order_fetch_nothing_ahead(fs: FS, remote: MemRemote) -> None:
    names = [f"f{i:02d}" for i in range(12)]
    put_files(remote, names)
    for i in (5, 2, 8, 9, 3, 4, 0):  # never three in a row
        await fs.read_file(f"w/{names[i]}")
    await settle(remote, 7)


async def test_files_bigger_than_a_block_are_not_fetched_ahead(fs: FS, remote: MemRemote) -> None:
    """Their own read-ahead starts at once; `file *` reads only their headers."""
    block = fs.ops.options.block_size
    put_files(remote, [f"f{i}" for i in range(8)], size=block + 1)
    for i in range(4):
        await fs.read_file(f"w/f{i}", size=16)
    await settle(remote, 4)
