"""The FUSE handlers over the in-memory remote: fast and precise, no kernel."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from stowfs.errors import (
    AuthFailed,
    Conflict,
    Forbidden,
    InvalidRequest,
    QuotaExceeded,
    RemoteError,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from stowfs.fs.blockcache import version_id
from stowfs.fs.journal import Journal
from stowfs.fs.names import disambiguated
from stowfs.fs.operations import MKNOD_GRACE, USAGE_TTL
from stowfs.fs.tree import GONE_KEPT, ROOT
from stowfs.remote.base import Change, FieldInfo, RemoteFile, UploadCheckpoint
from tests.fs.harness import (
    CTX,
    FS,
    gated,
    left_pending,
    mounted_ops,
    open_once_all_wait,
    read_entries,
    setattr_,
)
from tests.fs.memremote import CAPS, MemRemote

RENAME_WHITEOUT = 4  # linux/fs.h; pyfuse3 names only the other two flags


def fuse_errno(exc: pytest.ExceptionInfo[pyfuse3.FUSEError]) -> int:
    return exc.value.errno


async def test_listing_shows_folders_and_files(fs: FS, remote: MemRemote) -> None:
    remote.put("", "a.txt", b"hello")
    remote.put("sub", "b.bin", b"x" * 10)
    assert await fs.listdir() == ["a.txt", "sub"]
    assert await fs.listdir("sub") == ["b.bin"]
    attr = await fs.stat("sub/b.bin")
    assert attr.st_size == 10
    assert await fs.read_file("a.txt") == b"hello"
    assert await fs.read_file("a.txt", offset=1, size=3) == b"ell"


async def test_duplicate_names_are_all_shown(fs: FS, remote: MemRemote) -> None:
    old = remote.put("", "cat.png", b"old")
    remote.put("", "cat.png", b"new")
    other = f"{disambiguated('cat.png', old.key)}"
    assert other.startswith("cat~")
    assert other.endswith(".png")
    assert await fs.listdir() == sorted(["cat.png", other])
    assert await fs.read_file("cat.png") == b"new"
    assert await fs.read_file(other) == b"old"


@pytest.mark.parametrize(
    "name", ["a" * 250 + ".txt", "가" * 80 + ".png", "b" * 255, "c." + "x" * 253]
)
async def test_duplicates_of_long_names_can_be_opened_and_removed(
    fs: FS, remote: MemRemote, name: str
) -> None:
    """A disambiguated name past NAME_MAX bytes could be listed, not looked up."""
    for data in (b"1", b"2", b"3"):
        remote.put("", name, data)
    shown = await fs.listdir()
    assert len(shown) == 3
    for entry in shown:
        assert len(entry.encode()) <= 255
        assert await fs.read_file(entry) in (b"1", b"2", b"3")
        await fs.unlink(entry)
    assert remote.files == {}


async def test_a_file_deleted_elsewhere_while_open_reads_as_a_stale_handle(
    fs: FS, remote: MemRemote
) -> None:
    f = remote.put("sub", "gone", b"bytes")
    assert await fs.listdir("sub") == ["gone"]
    fh = await fs.open("sub/gone")
    await remote.delete(f.key)  # elsewhere
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.ops.read(fh, 0, 5)
    assert fuse_errno(exc) == errno.ESTALE  # not ENOENT: the file is open
    await fs.ops.release(fh)
    assert await fs.listdir("sub") == []  # listed again at once


async def test_a_version_found_gone_by_a_read_drops_the_kernels_entry_of_its_name(
    fs: FS, remote: MemRemote
) -> None:
    """The kernel keeps a name's entry for a while, and opens the inode it knows: once a
    read finds that version gone (replaced elsewhere, not yet seen here), the entry goes,
    so the next open of the path looks the name up and reads the new object, not ESTALE
    again until the entry times out."""
    f = remote.put("", "f", b"old")
    inode = await fs.resolve("f")
    remote.put("", "f", b"new")  # another mount's replace, unseen here
    await remote.delete(f.key)
    fh = (await fs.ops.open(inode, os.O_RDONLY, CTX)).fh  # by the kernel's cached entry
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.ops.read(fh, 0, 3)
    assert fuse_errno(exc) == errno.ESTALE
    assert (ROOT, "f") in fs.invalidated
    await fs.ops.release(fh)
    assert await fs.resolve("f") != inode
    assert await fs.read_file("f") == b"new"


async def test_blocks_of_versions_no_longer_shown_leave_the_cache(
    fs: FS, remote: MemRemote
) -> None:
    """Deleted, or replaced by an upload here: the old version's cached blocks go (with the
    next eviction), not only when the LRU reaches them; a file removed while open keeps
    its blocks readable until it is closed."""
    bs = fs.ops.options.block_size
    for name, size in (("gone", 2 * bs), ("edited", bs), ("open", bs), ("kept", 10)):
        remote.put("", name, name[0].encode() * size)
    cache = fs.ops.cache

    async def cached(*names: str) -> None:
        """Read the files; return once their blocks are on disk (written in the background)."""
        for name in names:
            await fs.read_file(name)
        files = [fs.ops.tree.nodes[await fs.resolve(name)].file for name in names]
        blocks = [(version_id(f), i) for f in files if f for i in range(-(-f.size // bs))]
        with trio.fail_after(10):
            while not all(block in cache._lru for block in blocks):
                await trio.sleep(0.01)

    def on_disk() -> int:
        return len(list(cache.directory.rglob("*.blk")))

    await cached("gone", "edited", "open")
    assert on_disk() == 4
    gone = await fs.resolve("gone")
    await fs.unlink("gone")
    await fs.ops.forget([(gone, fs.ops.tree.nodes[gone].lookups)])  # the kernel lets go
    await fs.write_file("edited", b"new")  # uploaded: the old version is not shown
    fh = await fs.open("open")
    await fs.unlink("open")
    await cached("kept")  # a store, and so an eviction
    assert on_disk() == 2  # the open file's block and kept's
    assert cache.total == cache._footprint(bs) + cache._footprint(10)
    assert bytes(await fs.ops.read(fh, 0, bs)) == b"o" * bs  # from the cache: it is gone
    await fs.ops.release(fh)
    assert await fs.read_file("edited") == b"new"


async def replace_elsewhere(fs: FS, remote: MemRemote, old: RemoteFile, data: bytes) -> None:
    """Another mount's replace: the new object, then the old one deleted; seen here at
    the next listing."""
    remote.put(old.folder, old.name, data)
    await remote.delete(old.key)
    fs.ops.tree.expire(fs.ops.tree.nodes[ROOT])


async def test_a_reader_open_across_a_replace_elsewhere_never_sees_a_mix(
    fs: FS, remote: MemRemote
) -> None:
    bs = 64 * 1024
    old, new = b"o" * (2 * bs), b"n" * (2 * bs)
    f = remote.put("", "f", old)
    inode = await fs.resolve("f")
    fh = await fs.open("f")
    assert await fs.ops.read(fh, 0, bs) == old[:bs]  # a whole block: kept in the cache
    await replace_elsewhere(fs, remote, f, new)
    assert await fs.resolve("f") != inode  # the new object: another inode, no shared pages
    assert (ROOT, "f") in fs.invalidated
    assert await fs.read_file("f") == new
    assert await fs.ops.read(fh, 0, bs) == old[:bs]  # the version it opened
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.ops.read(fh, bs, bs)  # that version is gone from the server
    assert fuse_errno(exc) == errno.ESTALE
    await fs.ops.release(fh)
    assert inode not in fs.ops.tree.nodes or not fs.ops.tree.nodes[inode].attached


async def test_a_writer_open_across_a_replace_elsewhere_edits_the_new_object(
    fs: FS, remote: MemRemote
) -> None:
    f = remote.put("", "f", b"old")
    inode = await fs.resolve("f")
    fh = await fs.open("f", os.O_WRONLY)
    await replace_elsewhere(fs, remote, f, b"newer")
    assert await fs.resolve("f") == inode
    await fs.ops.write(fh, 0, b"N")
    await fs.close(fh)
    [g] = remote.by_path("f")
    assert remote.blobs[g.key] == b"Newer"


async def test_create_uploads_on_close(fs: FS, remote: MemRemote) -> None:
    await fs.write_file("new.txt", b"data")
    [f] = remote.by_path("new.txt")
    assert remote.blobs[f.key] == b"data"
    assert isinstance(f.metadata["mtime"], float)
    assert await fs.read_file("new.txt") == b"data"
    assert not list((fs.ops.staging_dir).iterdir())  # staging cleaned up


async def test_empty_create_makes_an_object(fs: FS, remote: MemRemote) -> None:
    await fs.write_file("empty", b"")
    [f] = remote.by_path("empty")
    assert f.size == 0


async def test_edit_in_place_replaces_after_upload(fs: FS, remote: MemRemote) -> None:
    old = remote.put("", "f.txt", b"hello world", {"prompt": "a cat"})
    fh = await fs.open("f.txt", os.O_RDWR)
    await fs.ops.write(fh, 6, b"WORLD")
    await fs.close(fh)
    [new] = remote.by_path("f.txt")
    assert new.key != old.key
    assert old.key not in remote.files
    assert remote.blobs[new.key] == b"hello WORLD"
    assert new.metadata["prompt"] == "a cat"  # metadata follows the edit


async def test_append_and_truncate(fs: FS, remote: MemRemote) -> None:
    remote.put("", "f", b"12345")
    fh = await fs.open("f", os.O_WRONLY | os.O_APPEND)
    await fs.ops.write(fh, 5, b"678")
    await fs.close(fh)
    assert remote.blobs[remote.by_path("f")[0].key] == b"12345678"
    await setattr_(fs.ops, await fs.resolve("f"), size=3)  # truncate(2): no close follows
    assert remote.blobs[remote.by_path("f")[0].key] == b"123"
    assert (await fs.stat("f")).st_size == 3


async def test_failed_replacement_keeps_the_old_object(fs: FS, remote: MemRemote) -> None:
    old = remote.put("", "f", b"old")
    remote.fail["upload"] = Unavailable("down", status=503)
    fh = await fs.open("f", os.O_WRONLY | os.O_TRUNC)
    await fs.ops.write(fh, 0, b"new bytes")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.ops.flush(fh)
    assert fuse_errno(exc) == errno.EIO
    assert remote.files[old.key].size == 3  # untouched
    assert await fs.ops.read(fh, 0, 100) == b"new bytes"  # nothing lost locally
    await fs.close(fh)  # the retry on close goes through
    [new] = remote.by_path("f")
    assert remote.blobs[new.key] == b"new bytes"


async def test_refused_upload_reaches_close(fs: FS, remote: MemRemote) -> None:
    remote.fail["upload"] = TooLarge("big", status=413)
    fh = await fs.open("x.bin", os.O_WRONLY | os.O_CREAT)
    await fs.ops.write(fh, 0, b"abc")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.ops.flush(fh)
    assert fuse_errno(exc) == errno.EFBIG
    await fs.ops.release(fh)
    assert not remote.by_path("x.bin")
    assert not await fs.exists("x.bin")  # a refused new file is not shown
    assert await trio.to_thread.run_sync(fs.ops.journal.pending) == []
    [kept] = (fs.ops.options.cache_dir / "refused").iterdir()  # nothing written is lost
    assert (kept.name.endswith("-x.bin"), kept.read_bytes()) == (True, b"abc")


async def test_an_edit_refused_twice_keeps_its_last_bytes(
    fs: FS, remote: MemRemote, caplog: pytest.LogCaptureFixture
) -> None:
    remote.put("", "f", b"old")
    fh = await fs.open("f", os.O_WRONLY)
    for offset, data in ((0, b"new"), (3, b" and more")):
        await fs.ops.write(fh, offset, data)
        remote.fail["upload"] = TooLarge("big", status=413)
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.ops.flush(fh)
        assert fuse_errno(exc) == errno.EFBIG
    await fs.ops.release(fh)
    assert await fs.read_file("f") == b"old"  # the remote's version stands
    [kept] = (fs.ops.options.cache_dir / "refused").iterdir()
    assert kept.read_bytes() == b"new and more"
    said = [r.getMessage() for r in caplog.records if "refused by the remote" in r.getMessage()]
    assert (
        said
        == [f"upload of f refused by the remote; the change was not kept, its bytes are in {kept}"]
        * 2
    )


async def test_an_upload_refused_in_the_background_is_dropped_not_retried(
    remote: MemRemote, tmp_path: Path, patient_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Write-back, or an earlier mount's journal: the remote refuses the bytes for good
    (a drop folder given a non-image, say): retrying every few minutes forever would
    never do. The change is dropped, and the log says so."""
    cache = tmp_path / "cache"

    async def settled(fs: FS) -> None:
        for _ in range(10_000):
            if not fs.ops.journal.pending():
                break
            await trio.sleep(1)
        await trio.sleep(1000)  # time for retries, were there any

    async with mounted_ops(remote, cache, write_back=1.0) as fs:
        remote.fail["upload"] = UnsupportedMediaType("not an image", status=415)
        await fs.write_file("x.txt", b"abc")  # close returns at once
        await settled(fs)
        assert remote.calls["upload"] == 1
        assert not await fs.exists("x.txt")
        assert fs.ops.journal.pending() == []
        remote.down = True
        await fs.write_file("y.txt", b"abc")  # stays journaled: the remote is down
    assert len(Journal(cache / "journal.db").pending()) == 1
    remote.down = False
    remote.fail["upload"] = UnsupportedMediaType("not an image", status=415)
    tries = remote.calls["upload"]
    async with mounted_ops(remote, cache) as fs:
        await settled(fs)
        assert remote.calls["upload"] == tries + 1
        assert fs.ops.journal.pending() == []
    assert list((cache / "staging").iterdir()) == []
    assert remote.files == {}
    kept = sorted(p.name.rpartition("-")[2] for p in (cache / "refused").iterdir())
    assert kept == ["x.txt", "y.txt"]  # refused at once, and at the next mount
    caplog.clear()
    async with mounted_ops(remote, cache):
        pass  # every mount says what is kept, until the user removes it
    assert f"2 file(s) the service refused are kept in {cache / 'refused'}" in caplog.text


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (QuotaExceeded("full", status=507), errno.ENOSPC),
        (AuthFailed("key", status=401), errno.EACCES),
        (Forbidden("policy", status=403), errno.EACCES),
    ],
)
async def test_failed_upload_reaches_close_and_is_kept(
    fs: FS, remote: MemRemote, error: RemoteError, code: int
) -> None:
    remote.fail["upload"] = error
    fh = await fs.open("x.bin", os.O_WRONLY | os.O_CREAT)
    await fs.ops.write(fh, 0, b"abc")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.ops.flush(fh)
    assert fuse_errno(exc) == code
    await fs.ops.release(fh)
    assert await fs.read_file("x.bin") == b"abc"  # nothing lost
    assert len(await trio.to_thread.run_sync(fs.ops.journal.pending)) == 1
    assert await fs.ops.uploader.drain() == 0  # the condition cleared: it goes up
    [f] = remote.by_path("x.bin")
    assert remote.blobs[f.key] == b"abc"


async def test_legal_hold_refuses_unlink(fs: FS, remote: MemRemote) -> None:
    remote.put("", "held", b"1", {"legal_hold": True})
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.unlink("held")
    assert fuse_errno(exc) == errno.EPERM
    assert await fs.listdir() == ["held"]


async def test_unlink_mkdir_rmdir(fs: FS, remote: MemRemote) -> None:
    remote.put("d", "f", b"1")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.rmdir("d")
    assert fuse_errno(exc) == errno.ENOTEMPTY
    await fs.unlink("d/f")
    assert remote.files == {}
    await fs.rmdir("d")
    assert "d" not in remote.folders
    await fs.mkdir("e")
    assert "e" in remote.folders
    assert await fs.listdir() == ["e"]
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.mkdir("e")
    assert fuse_errno(exc) == errno.EEXIST
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.unlink("nope")
    assert fuse_errno(exc) == errno.ENOENT


async def test_rename_file_over_existing(fs: FS, remote: MemRemote) -> None:
    remote.put("", "a", b"A")
    remote.put("", "b", b"B")
    inode = await fs.resolve("a")
    await fs.rename("a", "b")
    assert await fs.listdir() == ["b"]
    assert await fs.resolve("b") == inode  # inode follows the file
    [f] = remote.files.values()
    assert (f.name, remote.blobs[f.key]) == ("b", b"A")
    for flag in (pyfuse3.RENAME_EXCHANGE, RENAME_WHITEOUT):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.rename("b", "b2", flag)
        assert fuse_errno(exc) == errno.EINVAL
    assert [f.name for f in remote.files.values()] == ["b"]


@pytest.mark.parametrize("source", ["pending", "uploaded"])
async def test_a_rename_over_a_file_that_cannot_be_removed_changes_nothing(
    remote: MemRemote, tmp_path: Path, source: str
) -> None:
    """rename(2) is whole or not at all: the target's delete refused (the service away
    then), the source goes back to its name and the target stays. The source stayed
    moved over the target, which came back at the next listing (a file was lost)."""
    target = remote.put("", "b", b"old b")
    if source == "uploaded":
        remote.put("", "c", b"c")
    async with mounted_ops(remote, tmp_path / "cache", write_back=1000.0) as fs:
        assert await fs.listdir() == (["b", "c"] if source == "uploaded" else ["b"])
        if source == "pending":
            await fs.write_file("c", b"c")
        remote.fail["delete"] = Unavailable("server down", status=503)
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.rename("c", "b")
        assert fuse_errno(exc) == errno.EIO
        assert await fs.listdir() == ["b", "c"]
        assert await fs.read_file("b") == b"old b"
        assert await fs.read_file("c") == b"c"
        assert await fs.ops.uploader.drain() == 0
    stored = sorted((f.name, remote.blobs[f.key]) for f in remote.files.values())
    assert stored == [("b", b"old b"), ("c", b"c")]
    assert target.key in remote.files


async def test_rename_folder_moves_every_file(fs: FS, remote: MemRemote) -> None:
    remote.put("x", "1", b"1")
    remote.put("x/y", "2", b"2")
    await fs.listdir("x/y")
    await fs.rename("x", "z")
    assert sorted(f.path for f in remote.files.values()) == ["z/1", "z/y/2"]
    assert "x" not in remote.folders
    assert await fs.read_file("z/y/2") == b"2"


async def test_rename_folder_while_a_file_lands_in_it_elsewhere(fs: FS, remote: MemRemote) -> None:
    remote.put("x", "1", b"1")
    await fs.listdir("x")
    entered, gate = gated(remote, "move", done=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.rename, "x", "z")
        await entered.wait()
        remote.put("x", "late", b"2")  # after the rename listed x
        gate.set()
    assert await fs.read_file("z/1") == b"1"
    assert sorted(f.path for f in remote.files.values()) == ["x/late", "z/1"]  # none lost
    fs.ops.tree.nodes[ROOT].listed_at = None
    assert await fs.listdir() == ["x", "z"]
    assert await fs.listdir("x") == ["late"]


async def folder_x_moving(
    fs: FS, remote: MemRemote, monkeypatch: pytest.MonkeyPatch, then: Callable[[], object]
) -> None:
    """Folder x of files 1, 2, 3, listed; `then()` runs once the first file has moved."""
    for name in "123":
        remote.put("x", name, name.encode())
    assert await fs.listdir("x") == ["1", "2", "3"]
    moved = remote.move

    async def first_then(file: RemoteFile, folder: str, name: str) -> RemoteFile:
        new = await moved(file, folder, name)
        if folder != "x":
            then()
        return new

    monkeypatch.setattr(remote, "move", first_then)


async def test_a_folder_rename_that_breaks_halfway_shows_where_each_file_is(
    fs: FS, remote: MemRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service goes away after the first file moved: the rename fails (EIO) and the
    mount shows both folders as the service has them, each file readable, at once."""
    await folder_x_moving(fs, remote, monkeypatch, lambda: setattr(remote, "down", True))
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.rename("x", "z")
    assert fuse_errno(exc) == errno.EIO
    remote.down = False
    assert sorted(f.path for f in remote.files.values()) == ["x/2", "x/3", "z/1"]
    assert await fs.listdir() == ["x", "z"]
    assert await fs.listdir("x") == ["2", "3"]
    assert await fs.listdir("z") == ["1"]
    for path in ("x/2", "x/3", "z/1"):
        assert await fs.read_file(path) == path[-1].encode()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Conflict("legal hold", status=409), errno.EPERM),  # refused for good
        (Unavailable("server down", status=503), errno.EIO),  # retries spent, then back
    ],
)
async def test_a_folder_rename_that_fails_halfway_is_put_back(
    fs: FS,
    remote: MemRemote,
    monkeypatch: pytest.MonkeyPatch,
    error: RemoteError,
    expected: int,
) -> None:
    """The second file's move fails: the first goes back, the new folder goes, and the
    folder is whole where it was."""

    def fail_the_next() -> None:
        remote.fail["move"] = error

    await folder_x_moving(fs, remote, monkeypatch, fail_the_next)
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.rename("x", "z")
    assert fuse_errno(exc) == expected
    assert sorted(f.path for f in remote.files.values()) == ["x/1", "x/2", "x/3"]
    assert "z" not in remote.folders
    assert await fs.listdir() == ["x"]
    assert await fs.listdir("x") == ["1", "2", "3"]
    for name in "123":
        assert await fs.read_file(f"x/{name}") == name.encode()


async def test_an_undone_folder_rename_over_an_empty_folder_leaves_that_folder(
    fs: FS, remote: MemRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rename(2) over an empty folder replaces it; undone, the empty folder stays."""

    def refuse_the_next() -> None:
        remote.fail["move"] = Conflict("legal hold", status=409)

    await folder_x_moving(fs, remote, monkeypatch, refuse_the_next)
    await fs.mkdir("z")
    with pytest.raises(pyfuse3.FUSEError):
        await fs.rename("x", "z")
    assert sorted(f.path for f in remote.files.values()) == ["x/1", "x/2", "x/3"]
    assert "z" in remote.folders
    assert await fs.listdir() == ["x", "z"]
    assert await fs.listdir("z") == []


async def test_a_folder_rename_cut_short_by_an_unmount_is_put_back(
    fs: FS, remote: MemRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the second file moves (the mount is going away): the first file
    still goes back before the cancellation is let through."""
    for name in "12":
        remote.put("x", name, name.encode())
    await fs.listdir("x")
    moved = remote.move
    stuck = trio.Event()

    async def second_hangs(file: RemoteFile, folder: str, name: str) -> RemoteFile:
        if folder == "z" and any(f.folder == "z" for f in remote.files.values()):
            stuck.set()
            await trio.sleep_forever()
        return await moved(file, folder, name)

    monkeypatch.setattr(remote, "move", second_hangs)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.rename, "x", "z")
            await stuck.wait()
            scope.cancel()
    assert sorted(f.path for f in remote.files.values()) == ["x/1", "x/2"]
    assert "z" not in remote.folders


async def test_rename_folder_where_folders_cannot_be_removed(tmp_path: Path) -> None:
    """The seed's storage API has no folder delete: the files move, the rename is done,
    and the old folder stays, empty, as the service keeps it."""
    remote = MemRemote(dataclasses.replace(CAPS, rmdir=False))
    remote.put("x", "1", b"1")
    async with mounted_ops(remote, tmp_path / "cache", dir_cache_time=0.0) as fs:
        await fs.listdir("x")
        await fs.rename("x", "z")
        assert [f.path for f in remote.files.values()] == ["z/1"]
        assert await fs.read_file("z/1") == b"1"
        assert await fs.listdir("x") == []  # listed again: the service's empty folder


async def test_a_folder_rename_past_the_path_limit_moves_nothing(tmp_path: Path) -> None:
    """Where a folder below would get a longer path than the service takes, the rename
    fails with ENAMETOOLONG before any file moves (not halfway, files split in two)."""
    remote = MemRemote(dataclasses.replace(CAPS, folder_path_max=20))
    remote.put("top", "a", b"a")
    remote.put("top/deep/er", "f", b"f")  # 11 characters
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        await fs.rename("top", "t" * 12)  # t.../deep/er: 20
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.rename("t" * 12, "t" * 13)
        assert fuse_errno(exc) == errno.ENAMETOOLONG
        assert sorted(f.path for f in remote.files.values()) == [
            f"{'t' * 12}/a",
            f"{'t' * 12}/deep/er/f",
        ]
        assert await fs.read_file(f"{'t' * 12}/deep/er/f") == b"f"


async def test_rename_of_staged_file_is_local(fs: FS, remote: MemRemote) -> None:
    fh = await fs.open("tmp", os.O_WRONLY | os.O_CREAT)
    await fs.ops.write(fh, 0, b"zz")
    await fs.rename("tmp", "final")
    assert remote.calls["move"] == 0
    await fs.close(fh)
    [f] = remote.files.values()
    assert f.name == "final"


async def test_mtime_is_kept_in_metadata(fs: FS, remote: MemRemote) -> None:
    f = remote.put("", "f", b"1")
    out = await setattr_(fs.ops, await fs.resolve("f"), mtime_ns=1_600_000_000_500_000_000)
    assert out.st_mtime_ns == 1_600_000_000_500_000_000
    assert remote.files[f.key].metadata["mtime"] == 1_600_000_000.5


async def test_the_mtime_xattr_sets_the_mtime(fs: FS, remote: MemRemote) -> None:
    """user.mtime is the key that keeps the mtime: setting it is a touch, a value stat
    could not show is refused, and a pending file's upload takes it too."""
    f = remote.put("", "f", b"1")
    inode = await fs.resolve("f")
    await fs.setxattr("f", "user.mtime", b"1500000000.5")
    assert (await fs.stat("f")).st_mtime_ns == 1_500_000_000_500_000_000
    assert remote.files[f.key].metadata["mtime"] == 1_500_000_000.5
    assert (inode, None) in fs.invalidated  # the kernel's cached attributes go
    for bad in (b"yesterday", b"true", b"[1]"):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.setxattr("f", "user.mtime", bad)
        assert fuse_errno(exc) == errno.EINVAL
    assert remote.files[f.key].metadata["mtime"] == 1_500_000_000.5
    calls = remote.calls["patch_metadata"]
    await fs.setxattr("f", "user.mtime", b"1500000000.5")  # as read: nothing sent
    assert remote.calls["patch_metadata"] == calls
    fh = await fs.open("f", os.O_WRONLY)
    await fs.ops.write(fh, 0, b"2")
    await fs.setxattr("f", "user.mtime", b"1400000000")  # while its new bytes are pending
    await fs.close(fh)
    [g] = remote.by_path("f")
    assert (remote.blobs[g.key], g.metadata["mtime"]) == (b"2", 1_400_000_000)


async def test_a_folder_keeps_its_mtime_in_memory(fs: FS, remote: MemRemote) -> None:
    remote.put("d", "f", b"1")
    inode = await fs.resolve("d")
    calls = sum(remote.calls.values())
    out = await setattr_(fs.ops, inode, mtime_ns=1_600_000_000_000_000_000)
    assert out.st_mtime_ns == 1_600_000_000_000_000_000
    assert (await fs.stat("d")).st_mtime_ns == 1_600_000_000_000_000_000
    assert sum(remote.calls.values()) == calls  # folders have no metadata to send it to


async def test_xattrs_round_trip(fs: FS, remote: MemRemote) -> None:
    f = remote.put("", "img.png", b"x", {"prompt": "a cat", "seed": 42, "tags": ["a", "b"]})
    assert await fs.getxattr("img.png", "user.prompt") == b"a cat"
    assert await fs.getxattr("img.png", "user.seed") == b"42"
    assert await fs.getxattr("img.png", "user.tags") == b'["a","b"]'
    names = await fs.listxattr("img.png")
    assert {"user.prompt", "user.seed", "user.tags", "user.stowfs.url"} <= set(names)
    await fs.setxattr("img.png", "user.seed", b"43")
    await fs.setxattr("img.png", "user.note", b"42")  # a number
    await fs.setxattr("img.png", "user.label", b'"42"')  # a string that looks like one
    meta = remote.files[f.key].metadata
    assert (meta["seed"], meta["note"], meta["label"]) == (43, 42, "42")
    assert await fs.getxattr("img.png", "user.label") == b'"42"'
    await fs.removexattr("img.png", "user.note")
    assert "note" not in remote.files[f.key].metadata
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.removexattr("img.png", "user.note")
    assert fuse_errno(exc) == pyfuse3.ENOATTR


async def test_xattr_facts_and_public(fs: FS, remote: MemRemote) -> None:
    f = remote.put("", "p", b"x")
    assert await fs.getxattr("p", "user.stowfs.key") == f.key.encode()
    assert (await fs.getxattr("p", "user.stowfs.url")).endswith(b"?fresh")
    assert (await fs.getxattr("p", "user.stowfs.url_expires")).endswith(b"Z")
    assert await fs.getxattr("p", "user.stowfs.public") == b"false"
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.getxattr("p", "user.stowfs.public_url")
    assert fuse_errno(exc) == pyfuse3.ENOATTR
    await fs.setxattr("p", "user.stowfs.public", b"true")
    assert remote.files[f.key].is_public
    assert (await fs.getxattr("p", "user.stowfs.public_url")).startswith(b"mem://public/")


async def test_xattrs_written_back_as_read_change_nothing(fs: FS, remote: MemRemote) -> None:
    """What copy tools do (cp --preserve=xattr, rsync -X, tar --xattrs, setfattr
    --restore): write back every xattr listed, facts included, or remove those the
    source lacks. Facts take it without effect (as chmod does); a metadata value written
    back unchanged sends nothing."""
    f = remote.put("", "p", b"x", {"seed": 42})
    dump = {name: await fs.getxattr("p", name) for name in await fs.listxattr("p")}
    before = dict(remote.calls)
    for name, value in dump.items():
        await fs.setxattr("p", name, value)
    await fs.setxattr("p", "user.stowfs.key", b"another/key")  # another file's facts
    await fs.setxattr("p", "user.stowfs.size", b"7")
    for name in dump:
        if name.startswith("user.stowfs."):
            await fs.removexattr("p", name)
    assert dict(remote.calls) == before  # nothing sent
    assert remote.files[f.key] == f
    assert await fs.getxattr("p", "user.stowfs.key") == f.key.encode()
    assert await fs.getxattr("p", "user.stowfs.size") == b"1"


async def test_public_set_while_a_file_is_written_goes_up_with_it(
    remote: MemRemote, tmp_path: Path
) -> None:
    """cp --preserve=xattr sets the xattrs on the file it is still writing: the object
    does not exist yet; it is made public once its bytes are up. A journaled upload
    keeps that for the next mount. A rewrite of a public file keeps it public."""
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache) as fs:
        fh = await fs.open("new", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"bytes")
        await fs.setxattr("new", "user.stowfs.public", b"true")
        assert await fs.getxattr("new", "user.stowfs.public") == b"true"
        assert remote.calls["upload"] == 0
        await fs.close(fh)
        [new] = remote.by_path("new")
        assert new.is_public
        assert remote.blobs[new.key] == b"bytes"
        await fs.write_file("new", b"rewritten")
        [rewritten] = remote.by_path("new")
        assert rewritten.key != new.key
        assert rewritten.is_public
    async with mounted_ops(remote, cache, write_back=1000.0) as fs:
        fh = await fs.open("later", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"later")
        await fs.setxattr("later", "user.stowfs.public", b"true")
        await fs.close(fh)
        remote.down = True  # no upload, no clean unmount: as after a kill -9
    journal = Journal(cache / "journal.db")
    [entry] = journal.pending()
    journal.close()
    assert entry.public is True
    remote.down = False
    async with mounted_ops(remote, cache):
        with trio.fail_after(5):
            while not remote.by_path("later"):
                await trio.sleep(0.01)
    [later] = remote.by_path("later")
    assert later.is_public
    assert remote.blobs[later.key] == b"later"


async def test_facts_of_a_pending_file_are_those_of_its_new_bytes(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Right after a write-back close, the URL asked for is that of the bytes just
    written (not of the object they replace, nor none at all): they go up first. So
    does making a pending file public."""
    old = remote.put("", "replaced", b"old")
    async with mounted_ops(remote, tmp_path / "cache", write_back=1000.0) as fs:
        await fs.write_file("replaced", b"new")
        await fs.write_file("created", b"fresh")
        assert remote.calls["upload"] == 0  # both pending
        url = await fs.getxattr("replaced", "user.stowfs.url")
        [new] = remote.by_path("replaced")
        assert new.key != old.key
        assert remote.blobs[new.key] == b"new"
        assert url == f"mem://{new.key}?fresh".encode()
        assert new.checksum is not None
        assert await fs.getxattr("replaced", "user.stowfs.checksum") == new.checksum.encode()
        await fs.setxattr("created", "user.stowfs.public", b"true")
        [created] = remote.by_path("created")
        assert created.is_public
        assert remote.blobs[created.key] == b"fresh"
        assert fs.ops.journal.pending() == []
        fh = await fs.open("replaced", os.O_WRONLY)  # a writer at work: no upload mid-way
        await fs.ops.write(fh, 0, b"half")
        assert await fs.getxattr("replaced", "user.stowfs.key") == new.key.encode()
        assert remote.blobs[new.key] == b"new"
        await fs.close(fh)
        assert await fs.getxattr("replaced", "user.stowfs.key") != new.key.encode()


async def test_xattr_limits_and_namespaces_never_call_the_network(
    fs: FS, remote: MemRemote
) -> None:
    remote.put("", "p", b"x")
    await fs.resolve("p")
    before = sum(remote.calls.values())
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.setxattr("p", "user.big", b"x" * 11_000)
    assert fuse_errno(exc) == errno.E2BIG
    for name in ("security.capability", "system.posix_acl_access", "trusted.x", "user.none"):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.getxattr("p", name)
        assert fuse_errno(exc) == pyfuse3.ENOATTR
    assert sum(remote.calls.values()) == before


class SchemaRemote(MemRemote):
    """A remote with a metadata schema, whose uploads refuse values of another type (as
    the reference server does): one refused value would refuse the bytes with it."""

    FIELDS = (FieldInfo("seed", "long"), FieldInfo("tags", "keyword", array=True))
    READ_ONLY = (FieldInfo("size", "long", writable=False),)

    def __init__(self) -> None:
        super().__init__(dataclasses.replace(CAPS, search=True))

    async def schema(self) -> list[FieldInfo]:
        return [*self.FIELDS, *self.READ_ONLY]

    def put(
        self,
        folder: str,
        name: str,
        data: bytes,
        metadata: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> RemoteFile:
        fields = {f.name: f for f in (*self.FIELDS, *self.READ_ONLY)}
        if any(k in fields and not fields[k].accepts(v) for k, v in (metadata or {}).items()):
            raise InvalidRequest("metadata refused", status=400)
        return super().put(folder, name, data, metadata, key)


async def test_a_value_of_the_wrong_type_on_a_file_not_uploaded_yet_is_refused_at_once(
    tmp_path: Path,
) -> None:
    """As it is on an uploaded file (the service refuses the PATCH): sent with the bytes
    later, it refused their whole upload, and the file was gone from the mount."""
    remote = SchemaRemote()
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        fh = await fs.open("gen.png", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"png")
        for name, value in (("user.seed", b"abc"), ("user.size", b"3"), ("user.tags", b"[1]")):
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await fs.setxattr("gen.png", name, value)
            assert fuse_errno(exc) == errno.EINVAL
        await fs.setxattr("gen.png", "user.seed", b"42")
        await fs.setxattr("gen.png", "user.tags", b'["cat"]')
        await fs.setxattr("gen.png", "user.note", b"free-form")  # not in the schema
        await fs.close(fh)
        [f] = remote.by_path("gen.png")
        assert remote.blobs[f.key] == b"png"
        assert {k: f.metadata[k] for k in ("seed", "tags", "note")} == {
            "seed": 42,
            "tags": ["cat"],
            "note": "free-form",
        }


async def test_refused_node_types(fs: FS) -> None:
    for op in (fs.ops.symlink, fs.ops.link):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await op()
        assert fuse_errno(exc) == errno.EPERM
    for mode in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFSOCK):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.ops.mknod(ROOT, b"dev", mode | 0o644, 0, CTX)
        assert fuse_errno(exc) == errno.EPERM


async def test_mknod_of_a_regular_file_makes_an_empty_file(
    fs: FS, remote: MemRemote, autojump_clock: object
) -> None:
    attr = await fs.ops.mknod(ROOT, b"t", stat.S_IFREG | 0o644, 0, CTX)
    assert (stat.S_ISREG(attr.st_mode), attr.st_size) == (True, 0)
    assert ((await fs.stat("t")).st_size, remote.calls["upload"]) == (0, 0)
    await trio.sleep(MKNOD_GRACE + 1)
    [f] = remote.by_path("t")
    assert remote.blobs[f.key] == b""
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.ops.mknod(ROOT, b"t", 0o644, 0, CTX)
    assert fuse_errno(exc) == errno.EEXIST


async def test_a_file_made_by_mknod_then_written_is_one_upload(
    fs: FS, remote: MemRemote, patient_clock: object
) -> None:
    """As `tar --xattrs` does: mknod, setxattr, then open (no O_TRUNC), write, close.
    The close sends the object once, with its metadata: no empty object first, no
    metadata patch, no replacement (it used to take all three)."""
    await fs.listdir()
    await fs.ops.mknod(ROOT, b"t", stat.S_IFREG | 0o644, 0, CTX)
    await fs.setxattr("t", "user.seed", b"7")
    await fs.write_file("t", b"bytes", flags=0)
    [f] = remote.by_path("t")
    assert (remote.blobs[f.key], f.metadata["seed"]) == (b"bytes", 7)
    await trio.sleep(MKNOD_GRACE + 1)  # the deferred upload has nothing left to do
    assert (remote.calls["upload"], remote.calls["patch_metadata"], remote.calls["delete"]) == (
        1,
        0,
        0,
    )


async def test_names_the_remote_refuses_fail_at_once(tmp_path: Path) -> None:
    """Refused at create, mkdir or rename (EINVAL), before any byte is written: at close
    a shell's `echo > file` would never see the error and the bytes would be gone."""
    remote = MemRemote(dataclasses.replace(CAPS, name_forbidden="/\\"))
    remote.put("", "kept", b"1")
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        await fs.listdir()
        before = sum(remote.calls.values())
        for name in ("a\x01b", "new\nline", "del\x7f", "back\\slash"):
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await fs.write_file(name, b"x")
            assert fuse_errno(exc) == errno.EINVAL
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await fs.mkdir(name)
            assert fuse_errno(exc) == errno.EINVAL
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await fs.rename("kept", name)
            assert fuse_errno(exc) == errno.EINVAL
        assert sum(remote.calls.values()) == before
        assert await fs.listdir() == ["kept"]
        await fs.write_file("spaces, 'quotes' and é", b"y")
    assert remote.by_path("spaces, 'quotes' and é")


async def test_statfs_reports_plan_usage(fs: FS, remote: MemRemote) -> None:
    remote.limit_bytes = 1024 * 1024
    remote.put("", "f", b"x" * 4096)
    s = await fs.ops.statfs(CTX)
    assert s.f_blocks * s.f_bsize == 1024 * 1024
    assert s.f_bavail * s.f_bsize == 1024 * 1024 - 4096
    assert s.f_ffree == 999


async def test_statfs_follows_this_mounts_changes_at_once(
    fs: FS, remote: MemRemote, autojump_clock: object
) -> None:
    async def used() -> int:
        s = await fs.ops.statfs(CTX)
        return (s.f_blocks - s.f_bfree) * s.f_bsize

    assert await used() == 0
    await fs.write_file("f", b"x" * 8192)
    assert await used() == 8192
    remote.put("", "elsewhere", b"y" * 4096)  # another client's: within USAGE_TTL
    assert await used() == 8192
    await trio.sleep(USAGE_TTL)
    assert await used() == 8192 + 4096
    calls = remote.calls["usage"]
    assert await used() == 8192 + 4096
    assert remote.calls["usage"] == calls  # asked once per USAGE_TTL
    await fs.unlink("f")
    assert await used() == 4096
    remote.down = True  # df while the server is down: the last figures...
    await trio.sleep(USAGE_TTL)
    assert await used() == 4096
    calls = remote.calls["usage"]
    assert await used() == 4096
    assert remote.calls["usage"] == calls  # ...without waiting out the retries each time


async def test_marks_of_deletes_do_not_pile_up_on_a_mount_that_never_lists(
    remote: MemRemote, tmp_path: Path, patient_clock: object
) -> None:
    """What this mount deleted is kept from listings for GONE_KEPT seconds; a mount
    whose folders are never listed again (the change feed keeps them) keeps no more."""
    async with mounted_ops(remote, tmp_path / "cache", dir_cache_time=1e9) as fs:
        for i in range(3):
            await fs.write_file(f"f{i}", b"x")
            await fs.unlink(f"f{i}")
            await trio.sleep(GONE_KEPT + 1)
        assert len(fs.ops.tree._gone) == 1


async def test_lookup_counts_and_forget(fs: FS, remote: MemRemote) -> None:
    remote.put("", "f", b"1")
    inode = await fs.resolve("f")
    await fs.resolve("f")
    node = fs.ops.tree.nodes[inode]
    assert node.lookups == 2
    await fs.unlink("f")
    assert inode in fs.ops.tree.nodes  # still known to the kernel
    await fs.ops.forget([(inode, 1)])
    assert inode in fs.ops.tree.nodes
    await fs.ops.forget([(inode, 1)])
    assert inode not in fs.ops.tree.nodes


async def test_a_listing_asks_for_files_and_folders_at_once(
    fs: FS, remote: MemRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote.put("d/e", "f", b"1")
    in_flight, most = 0, 0

    def counted(list_fn: Any) -> Any:
        async def wrapper(*args: Any) -> Any:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await trio.testing.wait_all_tasks_blocked()  # the other one enters now, or never
            in_flight -= 1
            return await list_fn(*args)

        return wrapper

    monkeypatch.setattr(remote, "list_folder", counted(remote.list_folder))
    monkeypatch.setattr(remote, "list_folders", counted(remote.list_folders))
    assert await fs.listdir("d") == ["e"]
    assert most == 2


async def test_a_listing_older_than_an_rmdir_or_a_move_does_not_undo_it(
    fs: FS, remote: MemRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    list_folders = remote.list_folders
    root = fs.ops.tree.nodes[pyfuse3.ROOT_INODE]

    async def across(change: Callable[[], Awaitable[None]]) -> None:
        """A root listing taken before `change` and answered after it."""
        gate, asked = trio.Event(), trio.Event()

        async def stale_root(parent: str | None = None) -> Any:
            found = await list_folders(parent)
            if parent == "":
                asked.set()
                await gate.wait()
            return found

        monkeypatch.setattr(remote, "list_folders", stale_root)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(fs.ops.tree.refresh, root, force=True))
            await asked.wait()
            await change()
            gate.set()
        monkeypatch.setattr(remote, "list_folders", list_folders)

    await fs.mkdir("d")
    await across(lambda: fs.rmdir("d"))
    assert await fs.listdir() == []
    await fs.mkdir("d")  # made again: shown again
    assert await fs.listdir() == ["d"]
    await across(lambda: fs.rename("d", "e"))
    assert await fs.listdir() == ["e"]


async def test_readdir_gives_dot_entries_without_taking_lookups(fs: FS, remote: MemRemote) -> None:
    remote.put("sub", "f", b"1")
    sub = await fs.resolve("sub")
    lookups = fs.ops.tree.nodes[sub].lookups
    entries = await read_entries(fs.ops, sub)
    f = fs.ops.tree.nodes[entries[2][1]]
    assert entries == [(b".", sub), (b"..", pyfuse3.ROOT_INODE), (b"f", f.inode)]
    # The kernel takes a lookup of each entry but "." and ".." (libfuse's readdirplus).
    assert fs.ops.tree.nodes[sub].lookups == lookups
    assert f.lookups == 1


async def test_random_read_fetches_only_its_bytes_then_its_block(fs: FS, remote: MemRemote) -> None:
    bs = 64 * 1024
    data = os.urandom(bs * 20)
    remote.put("", "big", data)
    fh = await fs.open("big")
    assert await fs.ops.read(fh, bs * 7 + 5, 100) == data[bs * 7 + 5 :][:100]
    assert remote.served == 100  # the bytes asked for, not the block or the file
    assert await fs.ops.read(fh, bs * 7 + 500, 100) == data[bs * 7 + 500 :][:100]
    assert remote.served == 100 + bs  # a second miss there: the whole block
    assert await fs.ops.read(fh, bs * 7 + 1000, 100) == data[bs * 7 + 1000 :][:100]
    await fs.ops.release(fh)
    assert remote.served == 100 + bs  # then it is cached


async def test_a_first_read_fetches_its_bytes_unless_the_file_is_one_block(
    fs: FS, remote: MemRemote
) -> None:
    bs = 64 * 1024
    big, small = os.urandom(bs * 20), os.urandom(bs // 2)
    remote.put("", "big", big)
    remote.put("", "small", small)
    fh = await fs.open("big")
    assert await fs.ops.read(fh, 0, 4096) == big[:4096]
    assert remote.served == 4096  # a header read: not a whole block
    await fs.ops.release(fh)
    served = remote.served
    fh = await fs.open("small")
    assert await fs.ops.read(fh, 0, 4096) == small[:4096]
    assert remote.served == served + len(small)  # one GET for the whole file
    assert await fs.ops.read(fh, 4096, 4096) == small[4096:8192]
    assert remote.served == served + len(small)
    await fs.ops.release(fh)


async def test_sequential_reads_prefetch_and_cache(fs: FS, remote: MemRemote) -> None:
    bs = 64 * 1024
    data = os.urandom(bs * 12)
    remote.put("", "big", data)
    fh = await fs.open("big")
    out = b""
    for offset in range(0, len(data), 16 * 1024):
        out += await fs.ops.read(fh, offset, 16 * 1024)
    await fs.ops.release(fh)
    assert out == data
    # Each byte once, read-ahead included; the first read's own bytes twice (fetched
    # alone first: it might have been a header read).
    assert remote.served == len(data) + 16 * 1024
    remote.down = True  # cached data stays readable offline
    assert await fs.read_file("big", 0, len(data)) == data


async def test_keep_cache_while_unchanged(fs: FS, remote: MemRemote) -> None:
    remote.put("", "f", b"one")
    inode = await fs.resolve("f")
    first = await fs.ops.open(inode, os.O_RDONLY, CTX)
    second = await fs.ops.open(inode, os.O_RDONLY, CTX)
    assert (first.keep_cache, second.keep_cache) == (False, True)
    await fs.ops.release(first.fh)
    await fs.ops.release(second.fh)
    remote.put("", "f", b"two")  # replaced elsewhere
    fs.ops.tree.nodes[pyfuse3.ROOT_INODE].listed_at = None
    await fs.resolve("f")
    assert (inode, None) in fs.invalidated
    third = await fs.ops.open(inode, os.O_RDONLY, CTX)
    assert not third.keep_cache
    assert await fs.ops.read(third.fh, 0, 10) == b"two"
    await fs.ops.release(third.fh)


async def test_offline_listing_uses_the_cache(fs: FS, remote: MemRemote) -> None:
    remote.put("", "f", b"1")
    assert await fs.listdir() == ["f"]
    remote.down = True
    fs.ops.tree.nodes[pyfuse3.ROOT_INODE].listed_at = -1e9
    assert await fs.listdir() == ["f"]
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.unlink("f")
    assert fuse_errno(exc) == errno.EIO
    remote.down = False
    fs.ops.tree.nodes[pyfuse3.ROOT_INODE].listed_at = -1e9
    assert await fs.listdir() == ["f"]  # not deleted: listings still show it


@pytest.mark.parametrize("write_back", [None, 5.0])
async def test_written_after_unlink_goes_nowhere(
    remote: MemRemote, tmp_path: Path, write_back: float | None
) -> None:
    """A file removed while open and written to afterwards (a log kept open, a temp
    file unlinked at once) is gone: no upload, no journal row for the next mount."""
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache, write_back=write_back) as fs:
        fh = await fs.open("w", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"data")
        await fs.unlink("w")
        await fs.ops.write(fh, 4, b"more")
        await fs.close(fh)
        assert fs.ops.journal.pending() == []
        assert fs.ops.uploader.pending_nodes() == []
        assert list((cache / "staging").iterdir()) == []
    async with mounted_ops(remote, cache, write_back=write_back) as fs:
        assert await fs.listdir() == []
    assert remote.files == {}
    assert remote.calls["upload"] == 0


async def test_an_uploaded_file_removed_while_open_for_writing_takes_writes_after(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Opened without O_TRUNC, unwritten yet, removed: a write in part afterwards works on
    its bytes, as on a local disk (it failed with ENOENT: its object was gone), and the
    file still goes nowhere."""
    remote.put("", "f", b"0123456789")
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        fh = await fs.open("f", os.O_RDWR)
        await fs.unlink("f")
        assert remote.files == {}
        await fs.ops.write(fh, 2, b"ab")
        assert await fs.ops.read(fh, 0, 100) == b"01ab456789"
        await fs.close(fh)
        assert await fs.listdir() == []
    assert remote.files == {}
    assert remote.calls["upload"] == 0


async def test_offline_a_folder_is_asked_for_once_per_dir_cache_time(
    remote: MemRemote, tmp_path: Path, autojump_clock: object
) -> None:
    remote.put("", "f", b"1")
    async with mounted_ops(remote, tmp_path / "c", dir_cache_time=10.0) as fs:
        assert await fs.listdir() == ["f"]
        remote.down = True
        await trio.sleep(10)
        before = remote.calls["list_folder"]
        assert await fs.listdir() == ["f"]  # tried, failed: the cached listing
        assert await fs.exists("f")
        assert await fs.listdir() == ["f"]
        assert remote.calls["list_folder"] == before + 1  # not once per lookup
        await trio.sleep(10)
        assert await fs.listdir() == ["f"]
        assert remote.calls["list_folder"] == before + 2
        remote.down = False
        remote.put("", "g", b"2")
        await trio.sleep(10)
        assert await fs.listdir() == ["f", "g"]


async def test_a_folder_due_for_a_listing_serves_its_entries_offline(
    remote: MemRemote, tmp_path: Path, autojump_clock: object
) -> None:
    g = remote.put("", "g", b"2")
    remote.put("", "f", b"1" * 10)
    async with mounted_ops(remote, tmp_path / "c", dir_cache_time=10.0) as fs:
        assert await fs.listdir() == ["f", "g"]
        assert await fs.read_file("f") == b"1" * 10  # cached
        del remote.files[g.key]  # deleted elsewhere: the read finds out, the folder is due
        with pytest.raises(pyfuse3.FUSEError):
            await fs.read_file("g")
        remote.down = True
        assert await fs.listdir() == ["f"]  # was EIO: what it showed stays, but what went
        assert await fs.read_file("f") == b"1" * 10
        remote.down = False
        await trio.sleep(10)
        assert await fs.listdir() == ["f"]


async def test_write_back_and_resume(
    remote: MemRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache, write_back=0.0) as fs:
        await fs.listdir()
        remote.down = True  # uploads cannot happen: they stay journaled
        await fs.write_file("a", b"pending bytes")  # close returns at once
        assert await fs.read_file("a") == b"pending bytes"
        await setattr_(fs.ops, await fs.resolve("a"), mtime_ns=1_500_000_000 * 10**9)
        # journaled at once, as a crash (no unmount) would find it
        [entry] = fs.ops.journal.pending()
        assert entry.metadata["mtime"] == 1_500_000_000.0
    assert remote.files == {}
    remote.down = False
    stray = cache / "staging" / "never-closed"  # a crash before close leaves such files
    stray.write_bytes(b"half")
    async with mounted_ops(remote, cache, write_back=0.0):
        with trio.fail_after(5):
            while not remote.by_path("a"):
                await trio.sleep(0.01)
        assert not stray.exists()
    [f] = remote.by_path("a")
    assert remote.blobs[f.key] == b"pending bytes"
    assert f.metadata["mtime"] == 1_500_000_000.0  # a touch of the pending file, journaled
    assert list((cache / "staging").iterdir()) == []


async def test_write_back_uploads_in_background(
    remote: MemRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    async with mounted_ops(remote, tmp_path / "c", write_back=5.0) as fs:
        await fs.write_file("a", b"x")
        assert remote.calls["upload"] == 0
        await trio.sleep(6)
        assert [f.name for f in remote.files.values()] == ["a"]


async def test_write_back_uploads_each_file_when_due(
    remote: MemRemote, tmp_path: Path, patient_clock: object
) -> None:
    # Each file's times are taken around its own write, not assumed from the test's
    # sleeps: its worker-thread hops may still let the clock jump.
    written: dict[str, tuple[float, float]] = {}

    async def write(name: str) -> None:
        start = trio.current_time()
        await fs.write_file(name, b"x")
        written[name] = (start, trio.current_time())

    async with mounted_ops(remote, tmp_path / "c", write_back=5.0) as fs:
        for i in range(200):
            await write(f"early{i}")
        await trio.sleep(3)
        await write("late")  # due after the early ones: the uploader must wait for it
        with trio.fail_after(60):
            while len(remote.uploaded_at) < len(written):
                await trio.sleep(0.5)
    for name, (start, end) in written.items():
        assert start + 5.0 <= remote.uploaded_at[name] <= end + 5.0 + 1.0, name


async def test_a_write_while_an_upload_is_being_settled_is_kept(
    remote: MemRemote, tmp_path: Path
) -> None:
    """The upload done, its journal row is being removed (a worker thread) when the file
    is written again and closed: the new bytes stay, journaled, and go up too. (The
    state machine with a slow remote found this: they were discarded.)"""
    import threading

    async with mounted_ops(remote, tmp_path / "c", write_back=0.0) as fs:
        removing, release = threading.Event(), threading.Event()
        remove = fs.ops.journal.remove

        def slow_remove(entry_id: int) -> None:
            removing.set()
            release.wait(10)
            remove(entry_id)

        fs.ops.journal.remove = slow_remove  # type: ignore[method-assign,assignment]
        await fs.write_file("a", b"v1")
        with trio.fail_after(10):
            while not removing.is_set():
                await trio.sleep(0.001)  # v1 is up; its row is on its way out
        fh = await fs.open("a", os.O_RDWR)
        await fs.ops.write(fh, 0, b"v2")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.close, fh)
            await trio.sleep(0.01)
            release.set()
        assert await fs.read_file("a") == b"v2"
        assert fs.ops.journal.pending() or remote.blobs[remote.by_path("a")[0].key] == b"v2"
        with trio.fail_after(10):
            while remote.blobs[remote.by_path("a")[0].key] != b"v2":
                await trio.sleep(0.01)
        fs.ops.journal.remove = remove  # type: ignore[method-assign]


async def test_an_upload_that_landed_settles_even_if_cancelled(fs: FS, remote: MemRemote) -> None:
    """Cancelled (an unmount) while the object it replaces is being deleted: the delete
    still happens, and the journal row goes (else the next mount uploads it again)."""
    remote.put("", "a", b"v1")
    deleting, gate = gated(remote, "delete")
    fh = await fs.open("a", os.O_WRONLY | os.O_TRUNC)
    await fs.ops.write(fh, 0, b"v2")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.close, fh)
        await deleting.wait()
        nursery.cancel_scope.cancel()
        gate.set()
    assert [remote.blobs[f.key] for f in remote.by_path("a")] == [b"v2"]
    assert fs.ops.journal.pending() == []


async def test_a_rewrite_journaled_during_an_upload_replaces_what_that_upload_stored(
    remote: MemRemote, tmp_path: Path
) -> None:
    """v2 is written while v1 (replacing v0) is on its way; v1 lands, v2 cannot go: the
    journal row must name v1 as the object v2 replaces, so that the next mount, after a
    crash, deletes it (not only v0, gone already)."""
    remote.put("", "a", b"v0")
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache) as fs:
        entered, gate = trio.Event(), trio.Event()
        upload = remote.upload

        async def first_waits_then_down(*args: Any, **kw: Any) -> RemoteFile:
            if entered.is_set():
                raise Unavailable("down", status=503)
            entered.set()
            await gate.wait()
            return await upload(*args, **kw)

        remote.upload = first_waits_then_down  # type: ignore[method-assign]
        fh = await fs.open("a", os.O_WRONLY | os.O_TRUNC)
        await fs.ops.write(fh, 0, b"v1")

        async def close_fails() -> None:
            with pytest.raises(pyfuse3.FUSEError):
                await fs.ops.flush(fh)  # v1 lands; v2, due at once after it, cannot go

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_fails)
            await entered.wait()
            await fs.ops.write(fh, 0, b"v2")  # a second writer's close journals it now
            await fs.ops.uploader.record(fs.ops.tree.nodes[await fs.resolve("a")])
            gate.set()
        # as a crash now would leave it: the row replaces what the first upload stored
        [stored] = remote.by_path("a")
        assert [e.replaces for e in fs.ops.journal.pending()] == [stored.key]
        remote.down = True
        with pytest.raises(pyfuse3.FUSEError):
            await fs.close(fh)
    remote.down = False
    remote.upload = upload  # type: ignore[method-assign]
    async with mounted_ops(remote, cache):
        with trio.fail_after(5):
            while [remote.blobs[f.key] for f in remote.by_path("a")] != [b"v2"]:
                await trio.sleep(0.01)


async def test_write_back_waits_for_a_writer_to_close(
    remote: MemRemote, tmp_path: Path, patient_clock: object
) -> None:
    """Due while the file is open again for writing: uploading then would send a state
    between two writes (and then all of it again). It goes once, at the close."""
    async with mounted_ops(remote, tmp_path / "c", write_back=1.0) as fs:
        await fs.write_file("a", b"v1")
        fh = await fs.open("a", os.O_WRONLY)
        await fs.ops.write(fh, 0, b"v2-half")
        await trio.sleep(3)
        assert remote.calls["upload"] == 0
        await fs.ops.write(fh, 7, b"-rest")
        await fs.close(fh)
        with trio.fail_after(10):
            while not remote.files:
                await trio.sleep(0.1)
        [f] = remote.by_path("a")
        assert (remote.blobs[f.key], remote.calls["upload"]) == (b"v2-half-rest", 1)


async def test_an_upload_due_between_flush_and_release_goes_at_release(
    remote: MemRemote, tmp_path: Path, patient_clock: object
) -> None:
    """--write-back 0: the kernel's release comes after the flush that scheduled the
    upload; it must not be skipped for good because the writer was still open."""
    async with mounted_ops(remote, tmp_path / "c", write_back=0.0) as fs:
        fh = await fs.open("b", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"bytes")
        await fs.ops.flush(fh)
        await trio.sleep(1)
        assert remote.calls["upload"] == 0
        await fs.ops.release(fh)
        with trio.fail_after(10):
            while not remote.files:
                await trio.sleep(0.1)
        [f] = remote.by_path("b")
        assert remote.blobs[f.key] == b"bytes"


async def test_write_back_retries_and_catches_a_rewrite_made_while_uploading(
    remote: MemRemote, tmp_path: Path, autojump_clock: object
) -> None:
    async with mounted_ops(remote, tmp_path / "c", write_back=1.0) as fs:
        await fs.listdir()
        remote.down = True
        await fs.write_file("a", b"v1")
        await trio.sleep(1.5)  # due: the upload fails and is retried later
        assert remote.calls["upload"] == 1
        assert not remote.files
        remote.down = False
        entered, gate = gated(remote, "upload")
        with trio.fail_after(60):
            await entered.wait()  # the retry is in flight
        await fs.write_file("a", b"v2")  # scheduled again while it uploads
        gate.set()
        await trio.sleep(5)
        [f] = remote.by_path("a")
        assert remote.blobs[f.key] == b"v2"


async def test_change_feed_invalidates(fs: FS, remote: MemRemote, autojump_clock: object) -> None:
    from stowfs.fs.watcher import follow_changes

    gone = remote.put("", "gone", b"1")
    kept = remote.put("", "kept", b"1")
    assert await fs.listdir() == ["gone", "kept"]
    kept_inode = await fs.resolve("kept")
    fh = await fs.open("kept")
    await fs.ops.release(fh)  # the kernel caches its pages now
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_changes, fs.ops.tree, 1.0)
        await trio.sleep(0.5)  # the feed's cursor is taken
        await remote.delete(gone.key)
        remote.put("", "kept", b"2")  # replaced elsewhere
        await remote.delete(kept.key)
        remote.put("", "new", b"3")
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    # dir_cache_time is 1000 s here: only the feed can have shown these
    assert await fs.listdir() == ["kept", "new"]
    assert (pyfuse3.ROOT_INODE, "gone") in fs.invalidated
    assert (kept_inode, None) in fs.invalidated
    assert await fs.read_file("kept") == b"2"


async def test_the_change_feed_is_applied_without_listing(fs: FS, remote: MemRemote) -> None:
    """Every change a mount makes comes back in the feed: none changes anything. One
    made elsewhere is applied as a listing would show it, without asking for one (a
    folder outputs land in may hold thousands), the same as a listing shows it after."""
    remote.put("sub", "theirs", b"1")
    assert await fs.listdir("sub") == ["theirs"]
    start = len(remote.log)
    await fs.write_file("sub/a", b"1")
    await fs.write_file("sub/a", b"2")  # replaced: a new key, the old one deleted
    await fs.setxattr("sub/a", "user.prompt", b"a cat")
    await fs.rename("sub/a", "sub/b")
    await fs.write_file("sub/c", b"3")
    upload_of_c = len(remote.log)
    await fs.unlink("sub/c")
    await fs.mkdir("sub/d")
    await fs.rmdir("sub/d")
    await fs.mkdir("sub/e")
    await fs.rename("sub/e", "f")
    await fs.write_file("f/g", b"4")
    ours = remote.log[start:]
    assert {c.kind for c in ours} == {"file", "folder"}
    assert {c.op for c in ours} == {"upsert", "delete"}
    tree = fs.ops.tree
    assert tree.absorb(ours, trio.current_time()) == set()
    # a poll that saw the upload of c but not yet its unlink, judged after the unlink
    assert tree.absorb(remote.log[start:upload_of_c], trio.current_time()) == set()
    listings = remote.calls["list_folder"]

    async def elsewhere(change: Callable[[], Awaitable[object]]) -> set[str]:
        before = len(remote.log)
        await change()
        return tree.absorb(remote.log[before:], trio.current_time())

    async def put(folder: str, name: str) -> None:
        remote.put(folder, name, b"5")

    [b] = remote.by_path("sub/b")
    assert await elsewhere(partial(put, "sub", "more")) == {"sub"}
    assert await elsewhere(partial(put, "sub", "b")) == {"sub"}  # a second "b": both shown
    assert await elsewhere(partial(remote.patch_metadata, b.key, {"seed": 7})) == {"sub"}
    assert await elsewhere(partial(remote.delete, remote.by_path("f/g")[0].key)) == {"f"}
    assert await elsewhere(partial(remote.mkdir, "f/h")) == {"f"}
    assert await elsewhere(partial(remote.mkdir, "f/x/y")) == {"f"}  # shows as f/x
    assert await elsewhere(partial(remote.rmdir, "f/h")) == {"f"}
    assert remote.calls["list_folder"] == listings
    [other_b] = [f for f in remote.by_path("sub/b") if f.key != b.key]
    sub = sorted(await fs.listdir("sub"))
    assert sub == sorted(["b", disambiguated("b", other_b.key), "more", "theirs"])
    assert await fs.getxattr("sub/b", "user.seed") == b"7"  # patched last: the newest
    assert sorted(await fs.listdir("f")) == ["x"]
    for folder in ("sub", "f"):  # what a listing shows now
        names = sorted(await fs.listdir(folder))
        await tree.refresh(tree.nodes[await fs.resolve(folder)], force=True)
        assert sorted(await fs.listdir(folder)) == names
    # a service whose clock ticks in seconds: the same time, another name (renamed)
    shown = tree.nodes[await fs.resolve("sub/more")].file
    assert shown is not None
    renamed = Change("upsert", "file", "sub", shown.key, dataclasses.replace(shown, name="i"))
    assert tree.absorb([renamed], trio.current_time()) == {"sub"}
    assert "i" in await fs.listdir("sub")


async def test_a_change_feed_that_lost_track_lists_the_loaded_folders_again(
    fs: FS, remote: MemRemote, autojump_clock: object
) -> None:
    """A cursor older than the history the feed keeps (410, after a long suspend): what
    changed meanwhile is found by listing, and the feed is followed from then on."""
    from stowfs.errors import Conflict
    from stowfs.fs.watcher import follow_changes

    assert await fs.listdir() == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_changes, fs.ops.tree, 1.0)
        await trio.sleep(0.5)  # the feed's cursor is taken
        remote.fail["changes"] = Conflict("cursor expired", status=410, code="CURSOR_EXPIRED")
        remote.put("", "lost", b"1")  # a change the expired history no longer holds
        remote.log.clear()
        await trio.sleep(2)
        remote.put("", "after", b"2")
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert sorted(await fs.listdir()) == ["after", "lost"]  # dir_cache_time is 1000 s


async def test_rename_waits_for_an_upload_in_flight(fs: FS, remote: MemRemote) -> None:
    remote.put("", "a", b"old")
    entered, gate = gated(remote, "upload")
    fh = await fs.open("a", os.O_WRONLY | os.O_TRUNC)
    await fs.ops.write(fh, 0, b"new")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.close, fh)  # uploads to "a"...
        await entered.wait()
        nursery.start_soon(fs.rename, "a", "b")  # ...while the rename waits for it
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert {f.path: remote.blobs[f.key] for f in remote.files.values()} == {"b": b"new"}
    assert await fs.listdir() == ["b"]


async def test_metadata_set_while_the_upload_is_in_flight_is_kept(
    fs: FS, remote: MemRemote
) -> None:
    """setfattr, setfattr -x or touch while the file's upload is on its way (a close
    still waiting, a write-back upload): the object ends up with them."""
    remote.put("", "a", b"old", {"gone": "x", "kept": "y"})
    entered, gate = gated(remote, "upload")
    fh = await fs.open("a", os.O_WRONLY | os.O_TRUNC)
    await fs.ops.write(fh, 0, b"new")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.close, fh)
        await entered.wait()
        await fs.setxattr("a", "user.prompt", b"a cat")
        await fs.removexattr("a", "user.gone")
        await setattr_(fs.ops, await fs.resolve("a"), mtime_ns=1_500_000_000 * 10**9)
        gate.set()
    [f] = remote.by_path("a")
    assert remote.blobs[f.key] == b"new"
    assert f.metadata == {"kept": "y", "prompt": "a cat", "mtime": 1_500_000_000.0}
    assert (await fs.stat("a")).st_mtime_ns == 1_500_000_000 * 10**9


async def test_a_close_cut_short_once_its_upload_is_stored_keeps_one_object(
    fs: FS, remote: MemRemote
) -> None:
    """The bytes are stored and the metadata set meanwhile is being patched on when the
    close's upload is cancelled (an unmount ends the requests in flight): the object is
    this file's all the same. It was not, and the next try sent the bytes again, beside
    it (a duplicate)."""
    stored, go_on = gated(remote, "upload", done=True)
    patching, patched = gated(remote, "patch_metadata")
    fh = await fs.open("f", os.O_WRONLY | os.O_CREAT)
    await fs.ops.write(fh, 0, b"bytes")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_once_all_wait, patching, patched)
        async with trio.open_nursery() as closing:
            closing.start_soon(fs.close, fh)
            await stored.wait()
            await fs.setxattr("f", "user.prompt", b"a cat")
            go_on.set()
            await patching.wait()
            closing.cancel_scope.cancel()
    assert await fs.ops.uploader.drain() == 0
    [f] = remote.by_path("f")
    assert (remote.blobs[f.key], f.metadata["prompt"]) == (b"bytes", "a cat")


async def test_an_unmount_lets_the_uploads_under_way_end(remote: MemRemote, tmp_path: Path) -> None:
    """The server has stored the bytes and its answer is on its way when the unmount
    comes: cut short, the upload's outcome was unknown to the mount, and its drain sent
    the bytes again, beside them (a duplicate)."""
    stored, answered = gated(remote, "upload", done=True)
    async with (
        trio.open_nursery() as outer,
        mounted_ops(remote, tmp_path / "cache", write_back=0.0) as fs,
    ):
        outer.start_soon(open_once_all_wait, stored, answered)
        await fs.write_file("f", b"bytes")  # close returns: it uploads in the background
        await stored.wait()
    [f] = remote.by_path("f")
    assert remote.blobs[f.key] == b"bytes"
    assert remote.calls["upload"] == 1


async def test_metadata_set_while_it_is_patched_after_an_upload_is_kept(
    fs: FS, remote: MemRemote
) -> None:
    entered, gate = gated(remote, "upload")
    patching, patched = gated(remote, "patch_metadata")
    fh = await fs.open("a", os.O_WRONLY | os.O_CREAT)
    await fs.ops.write(fh, 0, b"x")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.close, fh)
        await entered.wait()
        await fs.setxattr("a", "user.first", b"1")  # patched once the bytes are up...
        gate.set()
        await patching.wait()
        await fs.setxattr("a", "user.second", b"2")  # ...and this one during that patch
        patched.set()
    [f] = remote.by_path("a")
    assert {k: f.metadata[k] for k in ("first", "second")} == {"first": 1, "second": 2}


async def test_a_listing_older_than_our_own_changes_does_not_undo_them(
    fs: FS, remote: MemRemote
) -> None:
    """A listing asked for before an upload landed (or a delete happened) is older than
    them: it must not bring back the replaced version or the deleted file."""
    await fs.write_file("a", b"version 1")
    await fs.write_file("b", b"doomed")
    root = fs.ops.tree.nodes[pyfuse3.ROOT_INODE]
    asked = trio.current_time()
    stale = await remote.list_folder("")  # the change feed's refresh, still in flight
    await fs.write_file("a", b"version 2")
    await fs.unlink("b")
    fs.ops.tree.merge(root, set(), stale, asked)
    assert await fs.listdir() == ["a"]
    assert await fs.read_file("a") == b"version 2"
    fs.ops.tree.merge(root, set(), await remote.list_folder(""), trio.current_time())
    assert await fs.read_file("a") == b"version 2"


class PartsRemote(MemRemote):
    """MemRemote with multipart uploads of 16 KiB parts above 64 KiB; like a real one, a
    multipart upload keeps the metadata it was begun with."""

    def __init__(self) -> None:
        super().__init__(dataclasses.replace(CAPS, multipart=True, single_upload_max=64 * 1024))
        self.parts_sent: list[int] = []
        self.begun: dict[str, Mapping[str, Any] | None] = {}
        self.completed_md5: list[str | None] = []

    async def begin_upload(
        self, folder: str, name: str, metadata: Mapping[str, Any] | None = None
    ) -> UploadCheckpoint | None:
        self._enter("begin_upload")
        upload_id = f"u{len(self.begun)}"
        self.begun[upload_id] = metadata
        return UploadCheckpoint(upload_id, f"{folder}/{name}", 0, 16 * 1024, growing=True)

    async def upload(
        self,
        source: Path,
        folder: str,
        name: str,
        metadata: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> RemoteFile:
        checkpoint = kw.get("checkpoint")
        if checkpoint is not None:
            metadata = self.begun[checkpoint.upload_id]
            self.completed_md5.append(checkpoint.md5)
        return await super().upload(source, folder, name, metadata, on_key=kw.get("on_key"))

    async def upload_part(self, checkpoint: UploadCheckpoint, number: int, source: Path) -> None:
        self._enter("upload_part")
        checkpoint.parts[number] = f"etag{number}"
        self.parts_sent.append(number)


async def test_a_streamed_upload_whose_metadata_patch_fails_is_stored_once(
    tmp_path: Path,
) -> None:
    remote = PartsRemote()
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        fh = await fs.open("big", os.O_WRONLY | os.O_CREAT)
        for offset in range(0, 200 * 1024, 20 * 1024):
            await fs.ops.write(fh, offset, os.urandom(20 * 1024))
        with trio.fail_after(5):
            while not remote.parts_sent:
                await trio.sleep(0.01)  # parts go out while the file is open
        remote.fail["patch_metadata"] = Unavailable("down a moment", status=503)
        await fs.close(fh)  # the upload succeeds; only its mtime could not be set
    assert [f.name for f in remote.files.values()] == ["big"]
    assert remote.calls["patch_metadata"] == 1


async def test_a_streamed_upload_completes_with_the_md5_of_every_byte_written(
    tmp_path: Path,
) -> None:
    """The MD5 is computed beside the writes (not in them): at close it covers the whole
    file, the bytes written after the last part included."""
    remote = PartsRemote()
    data = os.urandom(200 * 1024 + 123)
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        fh = await fs.open("big", os.O_WRONLY | os.O_CREAT)
        for offset in range(0, len(data), 20 * 1024):
            await fs.ops.write(fh, offset, data[offset : offset + 20 * 1024])
        await fs.close(fh)
    assert remote.parts_sent  # it did stream
    assert remote.completed_md5 == [hashlib.md5(data).hexdigest()]


@pytest.mark.parametrize(
    ("what", "waits"),
    [("folder", "rmdir"), ("file", "move"), ("over", "move"), ("over", "delete")],
)
async def test_news_of_a_rename_under_way_leave_it_be(
    fs: FS, remote: MemRemote, what: str, waits: str
) -> None:
    """The change feed (or a listing) seen while a rename is half done on the remote
    shows it half done: a folder's files moved but not the folder, say. The rename
    finishes as it began, and the tree ends as the remote is."""
    await fs.mkdir("dir")
    await fs.write_file("dir/b", b"bb")
    await fs.write_file("dir/c", b"cc")
    tree = fs.ops.tree
    start = len(remote.log)
    entered, gate = gated(remote, waits, done=waits != "delete")  # delete: before it goes
    old, new = {"folder": ("dir", "moved"), "file": ("dir/b", "dir/moved")}.get(
        what,
        ("dir/b", "dir/c"),  # over: replaces c
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.rename, old, new)
        await entered.wait()
        tree.absorb(remote.log[start:], trio.current_time())
        for folder in ("", "dir"):
            await tree.refresh(tree.nodes[await fs.resolve(folder)], force=True)
        gate.set()
    expected = {
        "folder": {"moved": {"b": b"bb", "c": b"cc"}},
        "file": {"dir": {"c": b"cc", "moved": b"bb"}},
        "over": {"dir": {"c": b"bb"}},  # the bytes moved stay: the replaced ones go
    }[what]
    assert await fs.listdir() == sorted(expected)
    for folder, files in expected.items():
        assert await fs.listdir(folder) == sorted(files)
        for name, data in files.items():
            assert await fs.read_file(f"{folder}/{name}") == data
        await tree.refresh(tree.nodes[await fs.resolve(folder)], force=True)
        assert await fs.listdir(folder) == sorted(files)
    for node in tree.nodes.values():  # each node is one entry, or the kernel still has it
        if not node.attached:
            assert node.lookups > 0
        elif node.inode != ROOT:
            assert tree.nodes[node.parent].children[node.name] == node.inode


async def test_news_of_a_mkdir_under_way_make_no_second_entry(fs: FS, remote: MemRemote) -> None:
    await fs.listdir()
    tree = fs.ops.tree
    start = len(remote.log)
    entered, gate = gated(remote, "mkdir", done=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.mkdir, "new")
        await entered.wait()
        early = tree.absorb(remote.log[start:], trio.current_time())
        gate.set()
    assert early == {""}  # the news showed it early
    dirs = [n for n in tree.nodes.values() if n.name == "new"]
    assert len(dirs) == 1  # the early entry gave way
    assert dirs[0].lookups == 1  # the kernel's, from mkdir
    assert await fs.listdir() == ["new"]


async def test_news_of_a_rewrite_under_way_make_no_entry_for_the_old_bytes(
    fs: FS, remote: MemRemote
) -> None:
    """A listing seen while a rewrite's upload is landing holds the new object and the
    one it replaces: the replaced one is the file's own, about to go, not another file."""
    await fs.write_file("c", b"old")
    tree = fs.ops.tree
    entered, gate = gated(remote, "upload", done=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.write_file, "c", b"new")
        await entered.wait()
        await tree.refresh(tree.nodes[ROOT], force=True)
        meanwhile = await fs.listdir()
        gate.set()
    assert meanwhile == ["c"]
    assert await fs.listdir() == ["c"]
    assert await fs.read_file("c") == b"new"
    assert [remote.blobs[f.key] for f in remote.files.values()] == [b"new"]


async def test_an_unmount_during_the_resume_of_a_journal_sends_each_file_once(
    remote: MemRemote, tmp_path: Path
) -> None:
    """The drain at unmount and the background pass over an earlier mount's journal take
    turns: two passes at once sent a file twice, and the second found its staging file
    gone and kept it journaled (a flaky CI failure)."""
    cache = tmp_path / "cache"
    await left_pending(remote, cache, {name: name.encode() for name in ("a", "b", "c")})
    calls = remote.calls["upload"]
    entered, gate = gated(remote, "upload")
    remote.folders.add("sub")
    async with mounted_ops(remote, cache, folder="sub") as fs:  # shows none: sent in a pass
        await entered.wait()  # the background pass is sending the first
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.ops.uploader.drain)
            with trio.move_on_after(1.0):  # the bug's second send, or the drain's wait
                while not fs.ops.uploader.resuming.statistics().tasks_waiting:
                    await trio.sleep(0.01)
            gate.set()
        assert await fs.ops.uploader.drain() == 0
    assert remote.calls["upload"] == calls + 3
    assert sorted(f.name for f in remote.files.values()) == ["a", "b", "c"]
    assert Journal(cache / "journal.db").pending() == []


async def test_an_unmount_with_the_server_down_tries_one_upload_not_each(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Each try waits out the retry budget: with many uploads pending, an unmount would
    take that long for each. After the first finds the server down, the rest stay
    journaled for the next mount."""
    cache = tmp_path / "cache"
    await left_pending(remote, cache, {name: name.encode() for name in ("a", "b", "c")})
    assert remote.calls["upload"] == 1  # by the unmount's drain, the server down
    assert len(Journal(cache / "journal.db").pending()) == 3
    remote.down = True
    async with mounted_ops(remote, cache) as fs:  # an earlier mount's rows, server down
        assert await fs.ops.uploader.drain() == 3
        assert remote.calls["upload"] <= 1 + 2  # one per pass (at start, at the drain)
        remote.down = False
        assert await fs.ops.uploader.drain() == 0
    assert sorted(f.name for f in remote.files.values()) == ["a", "b", "c"]
