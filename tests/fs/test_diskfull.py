"""A full or failing cache disk: the journal, the block cache and staging files on it
fail to be written or read; the mount must say so, lose nothing, and stay up."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest
import trio

from stowfs.fs import blockcache
from stowfs.fs.blockcache import BlockCache, version_id
from stowfs.fs.journal import Journal, JournalError
from stowfs.remote.base import RemoteFile
from tests.fs.harness import mounted_ops
from tests.fs.memremote import MemRemote
from tests.fs.mountfix import Mount, drop_page_cache, new_mount
from tests.livesrv import LiveServer

MB = 1_000_000


def test_a_full_journal_raises_enospc(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    conn = journal._conn  # the only way to make SQLite's own "disk full" here
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(JournalError) as exc:  # a row of two pages: the file must grow
        journal.record(None, tmp_path / "s", "", "f", None, {"pad": "x" * 8000})
    assert exc.value.errno == errno.ENOSPC
    assert isinstance(exc.value.__cause__, sqlite3.OperationalError)


async def test_a_journaled_upload_whose_staging_file_is_unreadable_waits(
    remote: MemRemote, tmp_path: Path, patient_clock: trio.abc.Clock
) -> None:
    cache = tmp_path / "cache"
    (cache / "staging" / "bad").mkdir(parents=True)  # reading it fails (EISDIR)
    (cache / "staging" / "good").write_bytes(b"good")
    journal = Journal(cache / "journal.db")
    journal.record(None, cache / "staging" / "bad", "", "bad", None, {})
    journal.record(None, cache / "staging" / "good", "", "good", None, {})
    journal.close()
    async with mounted_ops(remote, cache) as fs:
        with trio.fail_after(30):
            while not remote.by_path("good"):
                await trio.sleep(0.1)
        assert [e.name for e in fs.ops.journal.pending()] == ["bad"]  # kept, retried
        await fs.write_file("after", b"ok")  # the mount goes on
        assert remote.by_path("after")


def failing(*args: object) -> object:
    raise JournalError(errno.ENOSPC, "the upload journal: database or disk is full")


async def test_a_file_the_journal_cannot_hold_is_uploaded_at_close(
    remote: MemRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with mounted_ops(remote, tmp_path / "cache", write_back=300.0) as fs:
        fs.ops.journal.record = failing  # type: ignore[method-assign,assignment]
        await fs.write_file("a", b"bytes")  # write-back, but no row: sent now
        [f] = remote.by_path("a")
        assert remote.blobs[f.key] == b"bytes"
    assert "a: uploading at close" in caplog.text


async def test_an_upload_the_journal_cannot_hold_is_kept_and_retried(
    remote: MemRemote, tmp_path: Path, patient_clock: trio.abc.Clock
) -> None:
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        await fs.listdir()
        fs.ops.journal.record = failing  # type: ignore[method-assign,assignment]
        remote.down = True
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.write_file("a", b"bytes")
        assert exc.value.errno == errno.EIO  # the upload's error, not the journal's
        assert await fs.read_file("a") == b"bytes"
        remote.down = False
        with trio.fail_after(60):
            while not remote.by_path("a"):
                await trio.sleep(0.5)
        [f] = remote.by_path("a")
        assert remote.blobs[f.key] == b"bytes"


async def test_a_journal_row_that_cannot_be_removed_stays_the_files(
    remote: MemRemote, tmp_path: Path
) -> None:
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        remove = fs.ops.journal.remove
        fs.ops.journal.remove = failing  # type: ignore[method-assign,assignment]
        fh = await fs.open("a", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"one")
        await fs.ops.flush(fh)  # uploaded; its row stays
        fs.ops.journal.remove = remove  # type: ignore[method-assign]
        await fs.ops.write(fh, 0, b"two")
        await fs.close(fh)  # the same row is updated, then removed
        assert fs.ops.journal.pending() == []
        [f] = remote.by_path("a")
        assert remote.blobs[f.key] == b"two"


async def test_the_block_cache_keeps_room_and_survives_write_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = os.statvfs(tmp_path).f_frsize  # blocks count for the disk space they take
    cache = BlockCache(tmp_path / "blocks", max_bytes=25 * unit, block_size=unit)
    await cache.open()
    for index in range(3):
        await cache.store("aa11", index, b"x" * unit)
    assert cache.total == 3 * unit
    short = {"bytes": unit + unit // 2}
    monkeypatch.setattr(blockcache, "shortfall", lambda directory, size: short["bytes"])
    await cache.store("aa11", 3, b"y" * unit)  # two old blocks make room for it
    assert [cache.has("aa11", i) for i in range(4)] == [False, False, True, True]
    short["bytes"] = 100 * unit  # the disk is full of other things: nothing to give
    await cache.store("aa11", 4, b"z" * unit)
    assert not cache.has("aa11", 4)
    assert cache.total == 0  # what it held went, in vain but in order
    short["bytes"] = 0
    (tmp_path / "blocks" / "bb").write_bytes(b"")  # the block's folder cannot be made
    await cache.store("bb22", 0, b"w" * unit)  # not cached, no error
    assert not cache.has("bb22", 0)
    await cache.store("aa11", 5, b"v" * unit)
    assert await cache.get("aa11", 5) == b"v" * unit
    monkeypatch.undo()  # the disk's own figures again
    shutil.rmtree(tmp_path / "blocks")  # the user cleared the cache dir of a live mount
    await cache.store("cc33", 0, b"u" * unit)
    assert await cache.get("cc33", 0) == b"u" * unit


async def test_tiny_blocks_count_for_the_disk_space_they_take(tmp_path: Path) -> None:
    """A cache of objects of a few bytes stays within its cap on disk, not in bytes of
    data only (each file takes a whole allocation unit), also after a remount."""
    unit = os.statvfs(tmp_path).f_frsize
    cache = BlockCache(tmp_path / "blocks", max_bytes=4 * unit, block_size=unit)
    await cache.open()
    for index in range(10):
        await cache.store(f"{index:02d}ff", 0, b"tiny")
    on_disk = list((tmp_path / "blocks").rglob("*.blk"))
    assert (len(on_disk), cache.total) == (4, 4 * unit)
    assert all(cache.has(f"{index:02d}ff", 0) for index in range(6, 10))
    (tmp_path / "blocks" / "stray.blk").write_bytes(b"not ours")  # left alone, not counted
    (tmp_path / "blocks" / "stray.tmp").write_bytes(b"not ours either")
    cut_short = tmp_path / "blocks" / "09" / "09ff.1.tmp"  # a crash in the middle of a write
    cut_short.write_bytes(b"ti")
    again = BlockCache(tmp_path / "blocks", max_bytes=2 * unit, block_size=unit)
    await again.open()  # a smaller cap at the next mount: the oldest go
    assert len(list((tmp_path / "blocks").rglob("*.blk"))) == 3
    assert not cut_short.exists()
    assert (tmp_path / "blocks" / "stray.tmp").exists()
    assert (again.total, again.has("09ff", 0), again.has("08ff", 0)) == (2 * unit, True, True)


async def test_discarded_blocks_go_with_the_next_eviction(tmp_path: Path) -> None:
    unit = os.statvfs(tmp_path).f_frsize
    cache = BlockCache(tmp_path / "blocks", max_bytes=100 * unit, block_size=unit)
    await cache.open()

    def version(key: str, size: int) -> RemoteFile:
        return RemoteFile(key, "", key, size, "application/octet-stream", "md5", 0.0, 0.0)

    small, huge, other = version("s", 2 * unit), version("h", 10**15), version("o", unit)
    for file, blocks in ((small, 2), (huge, 3), (other, 1)):
        for index in range(blocks):
            await cache.store(version_id(file), index, b"x" * unit)
    cache.remember(version_id(small), 0, b"x" * unit)
    cache.discard(small)
    cache.discard(huge)  # far more blocks than cached: looked for among the cached ones
    assert not cache.has(version_id(small), 0)
    assert cache.total == unit
    assert len(list(cache.directory.rglob("*.blk"))) == 6  # until the next eviction
    await cache.store(version_id(other), 1, b"y" * unit)
    assert len(list(cache.directory.rglob("*.blk"))) == 2
    assert await cache.get(version_id(other), 0) == b"x" * unit


@pytest.fixture
def small_cache_mount(live_server: LiveServer, tmp_path: Path) -> Iterator[Mount]:
    """A real mount whose cache dir is a 20 MB tmpfs, with a larger --cache-max-size."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.cache.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(m.cache)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        m.start("--cache-max-size", "100M")
        try:
            yield m
        finally:
            m.unmount()
    finally:
        subprocess.run(["umount", "-l", str(m.cache)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_full_cache_disk_with_a_real_mount(small_cache_mount: Mount, tmp_path: Path) -> None:
    m = small_cache_mount
    kept = {}
    for i in range(4):  # 24 MB of reads into 20 MB: cached up to the reserve
        kept[f"r{i}"] = os.urandom(6 * MB)
        (m.path / f"r{i}").write_bytes(kept[f"r{i}"])
        drop_page_cache(m.path / f"r{i}")
    for name, data in kept.items():
        assert (m.path / name).read_bytes() == data
    assert free_bytes(m.cache) >= 1 * MB  # the block cache left room

    (tmp_path / "w").write_bytes(os.urandom(12 * MB))  # needs the cache's room
    subprocess.run(["cp", str(tmp_path / "w"), str(m.path / "w")], check=True)
    kept["w"] = (tmp_path / "w").read_bytes()

    (tmp_path / "huge").write_bytes(os.urandom(30 * MB))  # more than the disk
    done = subprocess.run(
        ["cp", str(tmp_path / "huge"), str(m.path / "huge")], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "No space left on device" in done.stderr
    os.unlink(m.path / "huge")

    assert m.proc is not None
    assert m.proc.poll() is None  # still up, and right
    assert sorted(os.listdir(m.path)) == sorted(kept)
    for name, data in kept.items():
        drop_page_cache(m.path / name)
        assert (m.path / name).read_bytes() == data
        assert m.remote_bytes(m.remote_file(name)) == data
