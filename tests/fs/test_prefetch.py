"""Sibling prefetch: small files read one after another in a folder's order are
fetched ahead; any other pattern fetches nothing it was not asked for."""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import trio
import trio.testing

from tests.fs.harness import FS
from tests.fs.memremote import MemRemote
from tests.fs.mountfix import new_mount, wait_for
from tests.livesrv import LiveServer
from tests.remote.faultproxy import FaultProxy, proxy_in_thread


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


def test_a_fresh_mount_fetches_the_next_files_ahead_and_each_once(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """A real mount behind a pass-through proxy that counts the downloads: after three
    files read in name order the next ones are fetched before anyone asks; a folder read
    to its end then fetched each file once (no prefetch raced the reader's own GET)."""
    port = urlsplit(live_server.base_url).port
    assert port is not None
    rng = random.Random(3)
    data = {f"f{i:02d}": rng.randbytes(rng.randint(1, 5000)) for i in range(30)}
    local = tmp_path / "w"
    local.mkdir()
    for name, content in data.items():
        (local / name).write_bytes(content)
    with proxy_in_thread(FaultProxy(port)) as proxy:
        m = new_mount(tmp_path, proxy.base_url(), live_server.new_key())
        m.start()
        try:
            subprocess.run(["cp", "-r", str(local), str(m.path)], check=True)
        finally:
            m.unmount()
        (tmp_path / "fresh").mkdir()
        fresh = new_mount(tmp_path / "fresh", proxy.base_url(), m.key)
        fresh.start()
        try:

            def downloads() -> Counter[str]:
                return Counter(
                    s.target.partition("?")[0]
                    for s in list(proxy.seen)
                    if s.method == "GET" and s.target.startswith("/v1/dl/")
                )

            for name in ("f00", "f01", "f02"):
                assert (fresh.path / "w" / name).read_bytes() == data[name]
            wait_for(lambda: len(downloads()) >= 3 + 4, 10, "the next 4 files fetched ahead")
            out = subprocess.run(["cat", *sorted(data)], cwd=fresh.path / "w", capture_output=True)
            assert out.stdout == b"".join(data[name] for name in sorted(data))
            counts = downloads()
            assert (len(counts), set(counts.values())) == (len(data), {1})
        finally:
            fresh.unmount()
