"""Write-only dialects mount as a drop folder listed from the mount's own record."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pyfuse3
import pytest
import trio

from stowfs.fs.journal import Journal, JournalError
from stowfs.fs.operations import DROP_SWEEP
from stowfs.fs.tree import ROOT
from tests.fs.harness import FS, gated, mounted_ops
from tests.fs.memremote import CAPS, MemRemote

WRITE_ONLY = dataclasses.replace(
    CAPS,
    dialect="images",
    list=False,
    metadata=False,
    delete=False,
    mkdir=False,
    rmdir=False,
    move=False,
    server_move=False,
    changes=False,
    usage=False,
    usage_limits=False,
    renewable_urls=False,
)


async def test_drop_folder(tmp_path: Path) -> None:
    remote = MemRemote(WRITE_ONLY)
    async with mounted_ops(remote, tmp_path / "c") as fs:
        assert await fs.listdir() == []
        await fs.write_file("one.png", b"1")
        await fs.write_file("two.png", b"2")
        await fs.rename("two.png", "deux.png")  # our record only
        assert await fs.listdir() == ["deux.png", "one.png"]
        assert (await fs.getxattr("one.png", "user.stowfs.url")).startswith(b"mem://")
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.mkdir("sub")
        assert exc.value.errno == errno.EPERM
        await fs.write_file("one.png", b"one again")  # a new upload; the old one stays
        assert await fs.read_file("one.png") == b"one again"
    async with mounted_ops(remote, tmp_path / "c") as fs:  # the record outlives the mount
        assert await fs.listdir() == ["deux.png", "one.png"]
        await fs.unlink("deux.png")
        assert await fs.listdir() == ["one.png"]
    assert remote.calls["list_folder"] == remote.calls["list_folders"] == 0
    assert remote.calls["delete"] == 0
    assert len(remote.files) == 3


async def test_a_drop_folder_shows_an_earlier_mount_s_uploads_while_they_resume(
    tmp_path: Path,
) -> None:
    remote = MemRemote(WRITE_ONLY)
    cache = tmp_path / "c"
    async with mounted_ops(remote, cache, write_back=1000.0) as fs:
        await fs.write_file("one.png", b"1")
        assert await fs.ops.uploader.drain() == 0
        await fs.write_file("one.png", b"one again")
        await fs.write_file("two.png", b"2")
        remote.down = True  # no upload, no clean unmount: as after a kill -9
    remote.down = False
    tries = remote.calls["upload"]
    entered, gate = gated(remote, "upload")
    async with mounted_ops(remote, cache) as fs:
        await entered.wait()
        assert await fs.listdir() == ["one.png", "two.png"]
        assert await fs.read_file("one.png") == b"one again"
        gate.set()
        assert await fs.ops.uploader.drain() == 0
    async with mounted_ops(remote, cache) as fs:  # in the record now
        assert await fs.listdir() == ["one.png", "two.png"]
        assert await fs.read_file("one.png") == b"one again"
    assert remote.calls["upload"] == tries + 2


@pytest.mark.parametrize("gone_with_url", [True, False])
async def test_images_whose_url_expired_leave_the_drop_folder(
    tmp_path: Path, autojump_clock: object, gone_with_url: bool
) -> None:
    """The images service serves a file only as long as its URL: the drop folder shows it
    as long, and its record goes too. A service whose objects outlive their URL (presign)
    keeps them listed."""
    remote = MemRemote(dataclasses.replace(WRITE_ONLY, gone_with_url=gone_with_url))
    async with mounted_ops(remote, tmp_path / "c") as fs:
        await fs.write_file("kept.png", b"1")
        remote.url_lifetime = -1.0  # the URLs of the next uploads have passed at once
        await fs.write_file("old.png", b"2")
        assert await fs.listdir() == ["kept.png", "old.png"]  # until the next look
        await trio.sleep(DROP_SWEEP + 1)  # (a look due at the same moment might come after)
        expected = ["kept.png"] if gone_with_url else ["kept.png", "old.png"]
        assert await fs.listdir() == expected
        assert ((ROOT, "old.png") in fs.invalidated) == gone_with_url
        await fs.write_file("late.png", b"3")
    async with mounted_ops(remote, tmp_path / "c") as fs:  # a record expired while unmounted
        expected = ["kept.png"] if gone_with_url else ["kept.png", "late.png", "old.png"]
        assert await fs.listdir() == expected
        assert [f["name"] for f in await trio.to_thread.run_sync(_records, fs)] == expected


def _records(fs: FS) -> list[dict[str, object]]:
    return sorted(({"name": f.name} for f in fs.ops.journal.drops()), key=str)


async def test_a_drop_folder_lists_its_record_after_a_pass_over_an_earlier_mount_s_rows(
    tmp_path: Path,
) -> None:
    """Its record is its listing: the pass over an earlier mount's rows expired the
    folder's listing as on a service that lists, and `ls` then failed (ENOTSUP)."""
    remote = MemRemote(WRITE_ONLY)
    cache = tmp_path / "c"
    stored = remote.put("", "gone.png", b"1")  # by an upload under way at its removal
    (cache / "staging").mkdir(parents=True)
    (cache / "staging" / "s").write_bytes(b"1")
    journal = Journal(cache / "journal.db")
    entry = journal.record(None, cache / "staging" / "s", "", "gone.png", None, {}, size=1)
    journal.sending(entry, stored.key)
    journal.unlinked(entry)
    journal.close()
    async with mounted_ops(remote, cache) as fs:
        await fs.write_file("kept.png", b"2")
        assert await fs.listdir() == ["kept.png"]
    assert remote.calls["list_folder"] == remote.calls["list_folders"] == 0


async def test_a_drop_folder_s_record_swaps_a_rewritten_file_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new upload goes into the record in place of the old one, in one write: two
    (the new recorded, then the old removed) left both after a crash between, and the
    file showed twice."""
    remote = MemRemote(WRITE_ONLY)
    cache = tmp_path / "c"
    async with mounted_ops(remote, cache) as fs:
        await fs.write_file("one.png", b"1")

        def crash(self: Journal, key: str) -> None:
            raise JournalError(errno.EIO, "the mount died here")

        with monkeypatch.context() as patched:
            patched.setattr(Journal, "remove_drop", crash)
            await fs.write_file("one.png", b"one again")
    async with mounted_ops(remote, cache) as fs:
        assert await fs.listdir() == ["one.png"]
        assert await fs.read_file("one.png") == b"one again"


async def test_a_drop_folder_takes_an_earlier_mount_s_recorded_upload_for_landed(
    tmp_path: Path,
) -> None:
    """A crash after the upload went into the record, before its row went: the next
    mount finds it in the record instead of sending it again beside it."""
    remote = MemRemote(WRITE_ONLY)
    cache = tmp_path / "c"
    (cache / "staging").mkdir(parents=True)
    (cache / "staging" / "s").write_bytes(b"bytes")
    landed = remote.put("", "one.png", b"bytes")
    journal = Journal(cache / "journal.db")
    journal.add_drop(landed)
    journal.record(None, cache / "staging" / "s", "", "one.png", None, {}, size=5)
    journal.close()
    async with mounted_ops(remote, cache) as fs:
        assert await fs.listdir() == ["one.png"]
        assert await fs.ops.uploader.drain() == 0
        assert await fs.listdir() == ["one.png"]
    assert remote.calls["upload"] == 0
