"""An interrupted multipart upload resumes from its last part: after a failure in the
same mount, and from the journal after a crash. Over an in-memory remote."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from stowfs.errors import Unavailable
from stowfs.fs.journal import Entry, Journal, JournalError, Progress
from stowfs.remote.base import (
    CheckpointHook,
    KeyHook,
    ProgressHook,
    RemoteFile,
    UploadCheckpoint,
)
from tests.fs.harness import CTX, FS, gated, left_pending, mounted_ops, open_once_all_wait
from tests.fs.memremote import CAPS, MemRemote

PART = 16 * 1024
DATA = os.urandom(7 * PART - 100)  # seven parts


class ResumableRemote(MemRemote):
    """Multipart uploads above 64 KiB, part by part, each reported to `on_checkpoint`;
    one given a checkpoint sends only the parts it lacks, unless the source changed
    since (as the storage remote does). After `fail_after` parts sent, every part fails
    (a dropped connection). The object gets the metadata the upload was begun with."""

    def __init__(self) -> None:
        super().__init__(dataclasses.replace(CAPS, multipart=True, single_upload_max=64 * 1024))
        self.sent: list[tuple[str, int]] = []  # (upload id, part number)
        self.begun: dict[str, dict[str, Any]] = {}  # live uploads: the metadata begun with
        self.aborted: list[str] = []
        self.fail_after: int | None = None
        self._ids = itertools.count()

    async def begin_upload(
        self, folder: str, name: str, metadata: Mapping[str, Any] | None = None
    ) -> UploadCheckpoint | None:
        self._enter("begin_upload")
        cp = UploadCheckpoint(f"u{next(self._ids)}", "", 0, PART, growing=True)
        self.begun[cp.upload_id] = dict(metadata or {})
        return cp

    async def upload_part(self, checkpoint: UploadCheckpoint, number: int, source: Path) -> None:
        self._enter("upload_part")
        self._send_part(checkpoint, number)

    def _send_part(self, cp: UploadCheckpoint, number: int) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise Unavailable("connection dropped", status=503)
        self.sent.append((cp.upload_id, number))
        cp.parts[number] = f"etag{number}"

    async def upload(
        self,
        source: Path,
        folder: str,
        name: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        checkpoint: UploadCheckpoint | None = None,
        on_checkpoint: CheckpointHook | None = None,
        progress: ProgressHook | None = None,
        on_key: KeyHook | None = None,
    ) -> RemoteFile:
        data = source.read_bytes()  # noqa: ASYNC240
        if len(data) <= 64 * 1024 and checkpoint is None:
            return await super().upload(source, folder, name, metadata, on_key=on_key)
        self._enter("upload")
        cp = checkpoint
        mtime_ns = source.stat().st_mtime_ns  # noqa: ASYNC240
        if cp is not None and cp.growing:
            cp.size, cp.mtime_ns, cp.growing = len(data), mtime_ns, False
        if cp is not None and (cp.size, cp.mtime_ns) != (len(data), mtime_ns):
            await self.abort_upload(cp)
            cp = None
        if cp is None:
            cp = UploadCheckpoint(f"u{next(self._ids)}", "", len(data), PART)
            cp.mtime_ns = mtime_ns
            self.begun[cp.upload_id] = dict(metadata or {})
            if on_checkpoint is not None:
                await on_checkpoint(cp)
        key = self.new_key(folder, name)
        if on_key is not None:
            await on_key(key)
        for n in range(1, -(-len(data) // PART) + 1):
            if n in cp.parts:
                continue
            self._send_part(cp, n)
            if on_checkpoint is not None:
                await on_checkpoint(cp)
        return self.put(folder, name, data, self.begun.pop(cp.upload_id), key)

    async def abort_upload(self, checkpoint: UploadCheckpoint) -> None:
        self.aborted.append(checkpoint.upload_id)
        self.begun.pop(checkpoint.upload_id, None)


@pytest.fixture
def remote() -> ResumableRemote:
    return ResumableRemote()


async def write_back_to_front(fs: FS, path: str) -> None:
    """Write DATA (not only appending: no upload streams while it is written)."""
    fh = await fs.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        await fs.ops.write(fh, PART, DATA[PART:])
        await fs.ops.write(fh, 0, DATA[:PART])
    finally:
        await fs.close(fh)


async def retried(remote: MemRemote, path: str) -> None:
    """Until the retry stored `path` (a count of polls bounds the wait)."""
    for _ in range(10_000):
        if remote.by_path(path):
            return
        await trio.sleep(1)
    raise AssertionError(f"{path} was never stored")


def rows(cache: Path) -> list[Entry]:
    """The rows the journal in `cache` holds now."""
    with contextlib.closing(Journal(cache / "journal.db")) as journal:
        return journal.pending()


def sending(cache: Path) -> list[str | None]:
    """The key each journaled upload names as the one its upload under way may store."""
    return [entry.sending for entry in rows(cache)]


def stored_key(remote: MemRemote) -> str:
    [key] = remote.files
    return key


def journaled(cache: Path) -> list[str]:
    """The names of the uploads the journal in `cache` still holds."""
    return [entry.name for entry in rows(cache)]


def stored(remote: MemRemote, path: str) -> RemoteFile:
    [f] = remote.by_path(path)
    return f


async def test_an_upload_a_failure_interrupted_goes_on_from_its_last_part(
    remote: ResumableRemote, tmp_path: Path, patient_clock: object
) -> None:
    remote.fail_after = 3
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        with pytest.raises(pyfuse3.FUSEError):
            await write_back_to_front(fs, "big")  # close: the upload failed, bytes kept
        [entry] = fs.ops.journal.pending()
        assert entry.progress is not None
        assert sorted(entry.progress.checkpoint.parts) == [1, 2, 3]  # journaled part by part
        remote.fail_after = None
        await retried(remote, "big")
        assert remote.blobs[stored(remote, "big").key] == DATA
    assert remote.sent == [("u0", n) for n in range(1, 8)]  # each part once, one upload
    assert remote.aborted == []


async def test_a_crash_mid_upload_resumes_from_the_journal(
    remote: ResumableRemote, tmp_path: Path
) -> None:
    """A write-back upload interrupted, then no clean unmount (the remote stays down
    through it, as after a kill -9): the next mount sends only the missing parts, and
    metadata set meanwhile still reaches the object."""
    cache = tmp_path / "cache"
    remote.fail_after = 4
    async with mounted_ops(remote, cache, write_back=0.0) as fs:
        await write_back_to_front(fs, "big")
        with trio.fail_after(5):
            while len(remote.sent) < 4 or remote.calls["upload"] < 1:
                await trio.sleep(0.01)
        remote.down = True
        await fs.setxattr("big", "user.prompt", b"a cat")
    assert remote.files == {}
    journal = Journal(cache / "journal.db")
    [entry] = journal.pending()
    journal.close()
    assert entry.progress is not None
    assert sorted(entry.progress.checkpoint.parts) == [1, 2, 3, 4]
    remote.down, remote.fail_after = False, None
    async with mounted_ops(remote, cache):
        with trio.fail_after(5):
            while not remote.by_path("big"):
                await trio.sleep(0.01)
    f = stored(remote, "big")
    assert remote.blobs[f.key] == DATA
    assert f.metadata["prompt"] == "a cat"
    assert remote.sent == [("u0", n) for n in range(1, 8)]


async def test_parts_streamed_while_the_file_was_written_survive_a_crash(
    remote: ResumableRemote, tmp_path: Path
) -> None:
    """A big file copied in goes up part by part while it is written; closed (write-back)
    and the mount crashed before the rest went: the next mount sends only the rest."""
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache, write_back=1000.0) as fs:
        fh = await fs.open("big", os.O_WRONLY | os.O_CREAT)
        for offset in range(0, len(DATA), PART // 2):
            await fs.ops.write(fh, offset, DATA[offset : offset + PART // 2])
        with trio.fail_after(5):
            while len(remote.sent) < 6:
                await trio.sleep(0.01)  # the six whole parts went while it was written
        await fs.close(fh)
        remote.down = True  # no upload, no clean unmount: as after a kill -9
    journal = Journal(cache / "journal.db")
    [entry] = journal.pending()
    journal.close()
    assert entry.progress is not None
    assert sorted(entry.progress.checkpoint.parts) == [1, 2, 3, 4, 5, 6]
    assert (entry.progress.checkpoint.size, entry.progress.checkpoint.growing) == (len(DATA), False)
    remote.down = False
    async with mounted_ops(remote, cache):
        with trio.fail_after(5):
            while not remote.by_path("big"):
                await trio.sleep(0.01)
    assert remote.blobs[stored(remote, "big").key] == DATA
    assert sorted(remote.sent) == [("u0", n) for n in range(1, 8)]  # parallel: any order


async def test_an_upload_begun_for_another_name_starts_over(
    remote: ResumableRemote, tmp_path: Path, patient_clock: object
) -> None:
    """Completing it would store the object under the old name: its parts are released
    and the bytes go up anew to the new one."""
    remote.fail_after = 2
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        with pytest.raises(pyfuse3.FUSEError):
            await write_back_to_front(fs, "big")
        remote.fail_after = None
        await fs.rename("big", "moved")  # a pending file: renamed here only
        await retried(remote, "moved")
        assert remote.blobs[stored(remote, "moved").key] == DATA
        assert remote.by_path("big") == []
    assert remote.aborted == ["u0"]
    assert [n for upload, n in remote.sent if upload != "u0"] == list(range(1, 8))


def test_a_journal_of_an_earlier_version_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE uploads (id INTEGER PRIMARY KEY, staging TEXT NOT NULL, folder TEXT"
            " NOT NULL, name TEXT NOT NULL, replaces TEXT, metadata TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO uploads VALUES (1, '/s/x', 'in', 'a', NULL, '{}')")
    journal = Journal(path)
    [entry] = journal.pending()
    assert (entry.name, entry.progress) == ("a", None)
    checkpoint = UploadCheckpoint("u1", "k", 10, 5, {1: "e1"}, 7)
    journal.save_progress(entry.id, Progress("in", "a", {"m": 1}, checkpoint))
    [entry] = journal.pending()
    assert entry.progress == Progress("in", "a", {"m": 1}, checkpoint)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE uploads SET resume = '{\"folder\": 1}'")  # not ours to read
    [entry] = journal.pending()
    assert (entry.name, entry.progress) == ("a", None)  # the upload starts over
    assert entry.public is None  # the service's default visibility
    assert entry.size is None  # not known: not checked at resume
    journal.record(entry.id, entry.staging, "in", "a", None, {}, public=True, size=5)
    [entry] = journal.pending()
    assert (entry.public, entry.size) == (True, 5)
    journal.close()


class AnswerLost(MemRemote):
    """Each upload lands, then the service goes away before it answers: the mount cannot
    know that it landed (as when the mount is killed at that moment)."""

    landed = 0

    async def upload(self, *args: Any, **kw: Any) -> RemoteFile:
        await super().upload(*args, **kw)
        self.landed += 1
        self.down = True
        raise Unavailable("connection dropped", status=503)

    async def stored_unanswered(self) -> None:
        with trio.fail_after(5):
            while not self.landed:
                await trio.sleep(0.01)


async def written_then_cut_off(remote: MemRemote, cache: Path, data: bytes) -> None:
    """Write `f` (write-back), and a mount that ends with the service down: its row stays."""
    async with mounted_ops(remote, cache, write_back=0.0) as fs:
        await fs.write_file("f", data)
        await fs.setxattr("f", "user.prompt", b"a cat")
        with trio.fail_after(5):
            while not remote.down:
                await trio.sleep(0.01)
    journal = Journal(cache / "journal.db")
    assert len(journal.pending()) == 1
    journal.close()


async def test_an_upload_that_landed_before_a_crash_is_not_sent_again(tmp_path: Path) -> None:
    """The next mount finds the object and keeps it (with the metadata set meanwhile)
    instead of uploading a second one: the file would show twice."""
    remote = AnswerLost()
    old = remote.put("", "f", b"old bytes")
    cache = tmp_path / "cache"
    await written_then_cut_off(remote, cache, b"new bytes")
    assert remote.landed == 1
    assert len(remote.by_path("f")) == 2  # landed; the old one not deleted yet
    remote.down = False
    async with mounted_ops(remote, cache) as fs:
        with trio.fail_after(5):
            while old.key in remote.files:
                await trio.sleep(0.01)
        assert await fs.read_file("f") == b"new bytes"
    [f] = remote.by_path("f")
    assert remote.blobs[f.key] == b"new bytes"
    assert f.metadata["prompt"] == "a cat"
    assert remote.landed == 1  # never sent again
    assert journaled(cache) == []


async def test_an_older_object_of_the_same_bytes_is_not_taken_for_the_upload(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Another `f` with these very bytes, made long before they were written, is a file of
    its own: the journaled upload still goes, and that one stays as it was."""
    older = remote.put("", "f", b"same bytes", {"prompt": "older"})
    older = remote.files[older.key] = dataclasses.replace(older, created_at=older.created_at - 3600)
    newer = remote.put("", "f", b"other bytes")
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache, write_back=1000.0) as fs:
        await fs.write_file("f", b"same bytes")  # replaces `newer`, the one shown as f
        remote.down = True  # no upload, no clean unmount: as after a kill -9
    remote.down = False
    async with mounted_ops(remote, cache):
        with trio.fail_after(5):
            while newer.key in remote.files:
                await trio.sleep(0.01)
    assert remote.files[older.key] == older
    [new] = [f for f in remote.by_path("f") if f.key != older.key]
    assert remote.blobs[new.key] == b"same bytes"


async def test_a_read_only_mount_keeps_journaled_uploads_for_a_writable_one(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Read-only means nothing is written to the service: an earlier mount's pending
    upload is neither sent nor dropped, and goes with the next writable mount."""
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache, write_back=1000.0) as fs:
        await fs.write_file("f", b"pending")
        remote.down = True  # no upload, no clean unmount: as after a kill -9
    remote.down = False
    async with mounted_ops(remote, cache, read_only=True) as fs:
        assert await fs.listdir() == []
    assert remote.files == {}
    journal = Journal(cache / "journal.db")
    [entry] = journal.pending()
    journal.close()
    assert entry.staging.read_bytes() == b"pending"
    async with mounted_ops(remote, cache):
        with trio.fail_after(5):
            while not remote.by_path("f"):
                await trio.sleep(0.01)
    assert remote.blobs[stored(remote, "f").key] == b"pending"


async def test_an_earlier_mount_s_upload_shows_while_it_resumes_and_a_write_edits_it(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Until it lands, the file shows the bytes journaled (not the remote's older ones),
    and a write to it meanwhile edits them: sent on its own, the resumed upload landed
    beside the newer one as a duplicate."""
    remote.put("", "f", b"old")
    cache = tmp_path / "cache"
    await left_pending(remote, cache, {"f": b"journaled", "new": b"made"})
    entered, gate = gated(remote, "upload")
    async with mounted_ops(remote, cache) as fs:
        await entered.wait()  # the first resumed upload is under way
        assert sorted(await fs.listdir()) == ["f", "new"]
        assert await fs.read_file("f") == b"journaled"
        assert await fs.read_file("new") == b"made"
        assert (await fs.stat("f")).st_size == len(b"journaled")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.write_file, "f", b"newest")
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert await fs.ops.uploader.drain() == 0
        assert await fs.read_file("f") == b"newest"
    assert sorted((f.name, remote.blobs[f.key]) for f in remote.files.values()) == [
        ("f", b"newest"),
        ("new", b"made"),
    ]
    assert journaled(cache) == []


async def test_a_mount_is_ready_once_an_earlier_mount_s_uploads_show(
    remote: MemRemote, tmp_path: Path
) -> None:
    """The first `ls` after a remount shows them: they were placed in the background
    after the mount was ready, so a look at once missed a new file and read a replaced
    one's older bytes (and a write then landed beside them as a duplicate)."""
    remote.put("", "f", b"old")
    cache = tmp_path / "cache"
    await left_pending(remote, cache, {"f": b"journaled", "new": b"made"})
    entered, gate = gated(remote, "upload")
    async with mounted_ops(remote, cache) as fs:
        root = fs.ops.tree.nodes[pyfuse3.ROOT_INODE]
        shown = {n.name: n.staged for n in fs.ops.tree.children(root)}  # nothing ran yet
        assert sorted(shown) == ["f", "new"]
        assert all(staged is not None for staged in shown.values())
        assert not entered.is_set()  # the mount did not wait for their uploads
        assert await fs.read_file("f") == b"journaled"
        gate.set()
        assert await fs.ops.uploader.drain() == 0
    assert sorted((f.name, remote.blobs[f.key]) for f in remote.files.values()) == [
        ("f", b"journaled"),
        ("new", b"made"),
    ]


async def test_a_file_changed_elsewhere_since_keeps_both_versions(
    remote: MemRemote, tmp_path: Path
) -> None:
    """The journaled bytes replaced a version another client has replaced meanwhile:
    neither change is lost, they show as two files of that name."""
    old = remote.put("", "f", b"old")
    cache = tmp_path / "cache"
    await left_pending(remote, cache, {"f": b"ours"})
    await remote.delete(old.key)
    remote.put("", "f", b"theirs")
    async with mounted_ops(remote, cache) as fs:
        assert await fs.ops.uploader.drain() == 0
        names = sorted(await fs.listdir())
        assert len(names) == 2
        assert sorted([await fs.read_file(n) for n in names]) == [b"ours", b"theirs"]


async def test_an_upload_of_a_folder_another_mount_shows_is_sent_as_before(
    remote: MemRemote, tmp_path: Path
) -> None:
    """A mount of another storage folder has no file to show the upload as: it sends
    it all the same."""
    remote.folders.add("sub")
    cache = tmp_path / "cache"
    await left_pending(remote, cache, {"f": b"pending"})
    async with mounted_ops(remote, cache, folder="sub") as fs:
        assert await fs.ops.uploader.drain() == 0
        assert await fs.listdir() == []
    assert remote.blobs[stored(remote, "f").key] == b"pending"


async def test_an_unmount_during_a_pass_over_an_earlier_mount_s_rows_sends_each_once(
    remote: MemRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The upload under way ends (its answer was on its way); those done are not
    tried again by the drain, which said each had lost its staging file."""
    remote.folders.add("sub")
    cache = tmp_path / "cache"
    await left_pending(remote, cache, {"a": b"1", "b": b"2", "c": b"3"})
    calls = remote.calls["upload"]
    first = remote.upload
    stored, answered = trio.Event(), trio.Event()

    async def second_waits(*args: Any, **kw: Any) -> RemoteFile:
        new = await first(*args, **kw)
        if remote.calls["upload"] - calls == 2:  # the first went: it is under way
            stored.set()
            await answered.wait()
        return new

    remote.upload = second_waits  # type: ignore[method-assign]
    async with (
        trio.open_nursery() as outer,
        mounted_ops(remote, cache, folder="sub"),  # shows none of them: sent in a pass
    ):
        outer.start_soon(open_once_all_wait, stored, answered)
        await stored.wait()
    assert sorted(remote.blobs[f.key] for f in remote.files.values()) == [b"1", b"2", b"3"]
    assert remote.calls["upload"] - calls == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_file_removed_while_its_upload_goes_up_keeps_its_row_till_the_object_goes(
    remote: MemRemote, tmp_path: Path
) -> None:
    """The upload may store the object after the unlink: were the mount to die before it
    deletes that object, the row tells the next mount. It went at the unlink, and a crash
    then brought the file back."""
    cache = tmp_path / "cache"
    stored, answered = gated(remote, "upload", done=True)
    async with mounted_ops(remote, cache, write_back=0.0) as fs:
        await fs.write_file("f", b"bytes")
        await stored.wait()  # the server has it; the answer is on its way
        await fs.ops.unlink(pyfuse3.ROOT_INODE, b"f", CTX)
        try:
            assert journaled(cache) == ["f"]
            assert sending(cache) == [stored_key(remote)]  # what to delete after a crash
        finally:
            answered.set()  # (else the unmount would wait for the upload under way)
        assert await fs.ops.uploader.drain() == 0
        assert journaled(cache) == []
        assert await fs.listdir() == []
    assert remote.files == {}


async def test_a_file_removed_as_its_upload_lands_keeps_its_row_too(
    remote: MemRemote, tmp_path: Path
) -> None:
    """The unlink deletes the object shown when it began, the upload lands meanwhile and
    is still being recorded when the unlink is done: the new object is still to be
    deleted, and the row must say so until it is."""
    remote.put("", "f", b"old")
    cache = tmp_path / "cache"
    stored, answered = gated(remote, "upload", done=True)
    delete = remote.delete
    gates = [trio.Event(), trio.Event()]  # the unlink's delete, then the upload's record's
    turns = itertools.count()

    async def in_turn(key: str) -> None:
        await gates[min(next(turns), 1)].wait()
        await delete(key)

    remote.delete = in_turn  # type: ignore[method-assign]
    async with mounted_ops(remote, cache, write_back=0.0) as fs:
        await fs.write_file("f", b"new")
        await stored.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.ops.unlink, pyfuse3.ROOT_INODE, b"f", CTX)
            await trio.testing.wait_all_tasks_blocked()
            answered.set()  # it lands: its record deletes the old object, waiting
            await trio.testing.wait_all_tasks_blocked()
            gates[0].set()  # the unlink goes on, and ends
            await trio.testing.wait_all_tasks_blocked()
            try:
                assert journaled(cache) == ["f"]
            finally:
                gates[1].set()
        assert await fs.ops.uploader.drain() == 0
    assert remote.files == {}
    assert journaled(cache) == []


@pytest.mark.parametrize("named", [True, False], ids=["key-named", "no-key-yet"])
async def test_an_object_stored_for_a_file_removed_meanwhile_goes_after_a_crash(
    remote: MemRemote, tmp_path: Path, named: bool
) -> None:
    """What the mount leaves when it dies between the two: the row, marked, naming the
    key of the object on the server. The next mount deletes it (the file came back),
    and that one only: a new file of the name and bytes was taken for it, and deleted
    (found by the tree model with the server stopped at times)."""
    staging = tmp_path / "cache" / "staging" / "f-bytes"
    staging.parent.mkdir(parents=True)
    staging.write_bytes(b"bytes")
    stored = remote.put("", "f", b"bytes") if named else None  # by that upload
    again = remote.put("", "f", b"bytes")  # a new f, written since
    other = remote.put("", "g", b"bytes")  # another file of the same bytes
    journal = Journal(tmp_path / "cache" / "journal.db")
    entry = journal.record(None, staging, "", "f", None, {}, size=5)
    if stored is not None:
        journal.sending(entry, stored.key)
    journal.unlinked(entry)
    journal.close()
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        assert await fs.listdir() == ["f", "g"]
    assert set(remote.files) == {again.key, other.key}
    assert journaled(tmp_path / "cache") == []
    assert not staging.exists()


async def test_a_journaled_upload_without_its_staging_file_is_dropped_and_said(
    remote: MemRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing to send: the row goes (it is not retried forever) and the log says why a
    row can be left so (its upload landed before the row could be removed; a cache
    emptied by hand), not that an upload was lost."""
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache, write_back=1000.0) as fs:
        await fs.write_file("f", b"pending")
        remote.down = True  # no upload, no clean unmount: as after a kill -9
    remote.down = False
    journal = Journal(cache / "journal.db")
    [entry] = journal.pending()
    entry.staging.unlink()
    async with mounted_ops(remote, cache):
        with trio.fail_after(5):
            while journal.pending():
                await trio.sleep(0.01)
    journal.close()
    assert remote.files == {}
    [message] = [r.getMessage() for r in caplog.records if "no staging file" in r.getMessage()]
    assert "landed before its row could be removed" in message


async def test_a_staging_file_shorter_than_journaled_is_set_aside_not_sent(
    remote: MemRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash of the machine can leave a journaled staging file without the bytes that
    had not reached the disk: sending it would replace the remote's good version with a
    damaged one. It is kept aside, the remote keeps its version, and the log says where."""
    old = remote.put("", "f", b"old bytes")
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache, write_back=1000.0) as fs:
        await fs.write_file("f", b"new bytes, longer")
        remote.down = True  # no upload, no clean unmount: as after a crash
    remote.down = False
    journal = Journal(cache / "journal.db")
    [entry] = journal.pending()
    assert entry.size == len(b"new bytes, longer")
    os.truncate(entry.staging, 4)  # what the disk had of it
    async with mounted_ops(remote, cache) as fs:
        with trio.fail_after(5):
            while journal.pending():
                await trio.sleep(0.01)
        assert await fs.read_file("f") == b"old bytes"
    journal.close()
    assert list(remote.files) == [old.key]
    kept = cache / "damaged" / f"{entry.staging.name}-f"
    assert kept.read_bytes() == b"new "
    assert not entry.staging.exists()
    [message] = [r.getMessage() for r in caplog.records if "was not sent" in r.getMessage()]
    assert "4 of the 17 bytes" in message
    assert str(kept) in message


async def test_fsync_of_a_file_kept_for_write_back_reaches_the_disk(
    remote: MemRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    journal_syncs: list[None] = []
    monkeypatch.setattr(Journal, "sync", lambda self: journal_syncs.append(None))
    async with mounted_ops(remote, tmp_path / "cache", write_back=1000.0) as fs:
        fh = await fs.open("f", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"durable")
        await fs.ops.fsync(fh, False)
        staged = fs.ops.tree.nodes[await fs.resolve("f")].staged
        assert staged is not None
        assert staged.fd in synced  # its bytes
        assert len(synced) == 2  # and its staging folder (its name)
        assert journal_syncs == [None]  # and its row
        assert remote.files == {}  # still to be uploaded
        await fs.close(fh)
    async with mounted_ops(remote, tmp_path / "cache2") as fs:  # sync mode: uploaded
        synced.clear()
        fh = await fs.open("g", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"up")
        await fs.ops.fsync(fh, False)
        assert remote.blobs[stored(remote, "g").key] == b"up"
        assert synced == []  # nothing kept here to sync
        await fs.close(fh)


async def test_a_change_while_an_upload_goes_journals_the_object_it_may_store(
    remote: MemRemote, tmp_path: Path
) -> None:
    """The upload may still store the bytes it began with, which are no longer the row's:
    after a crash, the next mount could not tell that object from another file of the
    name by its bytes. The row names it before the bytes change."""
    cache = tmp_path / "cache"
    stored, answered = gated(remote, "upload", done=True)
    async with mounted_ops(remote, cache, write_back=0.0) as fs:
        await fs.write_file("f", b"one")
        await stored.wait()  # the service has it; the answer is on its way
        [first] = remote.by_path("f")
        try:
            assert sending(cache) == [None]  # (unchanged bytes: told apart by them)
            await fs.write_file("f", b"two")
            assert sending(cache) == [first.key]
        finally:
            answered.set()
        assert await fs.ops.uploader.drain() == 0
    [f] = remote.by_path("f")
    assert remote.blobs[f.key] == b"two"
    assert journaled(cache) == []


async def test_a_change_before_the_service_names_the_object_journals_it_once_named(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Changed while the upload still waits for its key: the row gets the key as soon as
    the service names it, before it can store anything."""
    cache = tmp_path / "cache"
    entered, gate = gated(remote, "upload")  # waits before asking the service
    seen: list[tuple[str | None, list[str | None]]] = []  # at each store: its key, the rows'
    put = remote.put

    def watched(
        folder: str,
        name: str,
        data: bytes,
        metadata: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> RemoteFile:
        seen.append((key, sending(cache)))
        return put(folder, name, data, metadata, key)

    remote.put = watched  # type: ignore[method-assign]
    async with mounted_ops(remote, cache, write_back=0.0) as fs:
        await fs.write_file("f", b"one")
        await entered.wait()
        await fs.write_file("f", b"two")
        gate.set()
        assert await fs.ops.uploader.drain() == 0
    first_key, rows = seen[0]
    assert first_key is not None
    assert rows == [first_key]
    [f] = remote.by_path("f")
    assert remote.blobs[f.key] == b"two"


@pytest.mark.parametrize("unlinked", [False, True], ids=["changed", "changed-then-removed"])
async def test_an_older_version_an_upload_stored_before_a_crash_goes(
    remote: MemRemote, tmp_path: Path, unlinked: bool
) -> None:
    """What a crash leaves after a file changed while its upload went: the row names the
    object that upload stored, of older bytes. The next mount deletes it; it showed as a
    second file of the name (or brought back a file removed since)."""
    shown = None if unlinked else remote.put("", "f", b"v0")  # the file the mount showed
    older = remote.put("", "f", b"v1, longer")  # stored by the upload under way
    staging = tmp_path / "cache" / "staging" / "f-v2"
    staging.parent.mkdir(parents=True)
    staging.write_bytes(b"v2")
    journal = Journal(tmp_path / "cache" / "journal.db")
    entry = journal.record(None, staging, "", "f", shown.key if shown else None, {}, size=2)
    journal.sending(entry, older.key)
    if unlinked:
        journal.unlinked(entry)
    journal.close()
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        assert older.key not in remote.files
        if unlinked:
            assert await fs.listdir() == []
        else:
            assert await fs.listdir() == ["f"]
            assert await fs.read_file("f") == b"v2"
        assert await fs.ops.uploader.drain() == 0
    assert [remote.blobs[f.key] for f in remote.by_path("f")] == ([] if unlinked else [b"v2"])
    assert journaled(tmp_path / "cache") == []


async def test_an_older_version_deleted_after_another_row_listed_its_folder_is_not_shown(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Another row of the pass listed the folder first, with the older object in it: the
    file showed that one (and read ESTALE once it was deleted), not its row's bytes."""
    older = remote.put("", "a", b"v1, longer")
    cache = tmp_path / "cache"
    (cache / "staging").mkdir(parents=True)
    journal = Journal(cache / "journal.db")
    for name, data in (("b", b"bee"), ("a", b"v2")):  # b's row first
        (cache / "staging" / name).write_bytes(data)
        entry = journal.record(None, cache / "staging" / name, "", name, None, {}, size=len(data))
    journal.sending(entry, older.key)
    journal.close()
    async with mounted_ops(remote, cache) as fs:
        assert await fs.listdir() == ["a", "b"]
        assert await fs.read_file("a") == b"v2"
        assert await fs.ops.uploader.drain() == 0
    stored = sorted((f.name, remote.blobs[f.key]) for f in remote.files.values())
    assert stored == [("a", b"v2"), ("b", b"bee")]


async def test_a_removed_file_s_staging_file_stays_while_its_row_does(
    remote: MemRemote, tmp_path: Path
) -> None:
    """Removed while its upload went, forgotten by the kernel as that upload lands: the
    staging file went at once, while the row stayed until the object was deleted, so a
    crash between left a row without its bytes (the next mount could not find the object
    by them, and the removed file came back)."""
    old = remote.put("", "f", b"old")
    cache = tmp_path / "cache"
    stored, answered = gated(remote, "upload", done=True)
    async with mounted_ops(remote, cache, write_back=0.0) as fs:
        await fs.write_file("f", b"new")
        inode = (await fs.stat("f")).st_ino
        await stored.wait()
        await fs.ops.unlink(pyfuse3.ROOT_INODE, b"f", CTX)
        entered, gate = gated(remote, "delete")  # the landed upload's delete of `old`
        answered.set()
        await entered.wait()
        try:
            node = fs.ops.tree.nodes[inode]
            await fs.ops.forget([(inode, node.lookups)])
            [entry] = rows(cache)
            assert entry.unlinked
            assert entry.staging.exists()
        finally:
            gate.set()
        assert await fs.ops.uploader.drain() == 0
    assert remote.files == {}
    assert journaled(cache) == []
    assert list((cache / "staging").iterdir()) == []
    assert old.key not in remote.files


async def test_a_row_that_cannot_be_removed_keeps_its_staging_file(
    remote: MemRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row goes first, then its bytes: the staging file went first, and a row left
    (a full disk, or a crash between) was taken by the next mount for bytes lost."""
    staging = tmp_path / "cache" / "staging" / "f-bytes"
    staging.parent.mkdir(parents=True)
    staging.write_bytes(b"bytes")
    journal = Journal(tmp_path / "cache" / "journal.db")
    journal.unlinked(journal.record(None, staging, "", "f", None, {}, size=5))
    journal.close()

    def full(self: Journal, entry_id: int) -> int:
        raise JournalError(errno.ENOSPC, "the upload journal: database or disk is full")

    with monkeypatch.context() as patched:
        patched.setattr(Journal, "remove", full)
        async with mounted_ops(remote, tmp_path / "cache"):
            pass
    assert journaled(tmp_path / "cache") == ["f"]
    assert staging.exists()


@pytest.mark.parametrize("changed", [False, True], ids=["same-bytes", "changed-since"])
async def test_an_upload_retried_after_its_answer_was_lost_leaves_one_object(
    tmp_path: Path, changed: bool
) -> None:
    """The upload landed, then the service went away before its answer (and before the
    client could look): the retry took it for not landed and sent the bytes again, and
    the file was on the server twice. The retry now looks for the object the first
    attempt named: the upload itself if it holds the file's bytes, else deleted."""
    remote = AnswerLost()
    async with mounted_ops(remote, tmp_path / "cache", write_back=0.0) as fs:
        await fs.write_file("f", b"first")
        await remote.stored_unanswered()
        if changed:
            await fs.write_file("f", b"second")
        remote.upload = super(AnswerLost, remote).upload  # type: ignore[method-assign]
        remote.down = False
        assert await fs.ops.uploader.drain() == 0
        assert await fs.read_file("f") == (b"second" if changed else b"first")
    assert [remote.blobs[f.key] for f in remote.by_path("f")] == [
        b"second" if changed else b"first"
    ]
    assert remote.calls["upload"] == (2 if changed else 1)


async def test_a_file_removed_after_its_upload_s_answer_was_lost_does_not_come_back(
    tmp_path: Path,
) -> None:
    """The object its upload may have stored goes with it: it came back at the next
    listing. While the service is away, the removal fails, as that of an uploaded file
    does (EIO), and the file stays."""
    remote = AnswerLost()
    async with mounted_ops(remote, tmp_path / "cache", write_back=0.0) as fs:
        await fs.write_file("f", b"bytes")
        await remote.stored_unanswered()
        with pytest.raises(pyfuse3.FUSEError) as refused:
            await fs.unlink("f")
        assert refused.value.errno == errno.EIO
        assert await fs.listdir() == ["f"]
        remote.upload = super(AnswerLost, remote).upload  # type: ignore[method-assign]
        remote.down = False
        await fs.unlink("f")
        assert await fs.listdir() == []
        assert await fs.ops.uploader.drain() == 0
    assert remote.files == {}


def to_delete(cache: Path) -> list[str]:
    with contextlib.closing(Journal(cache / "journal.db")) as journal:
        return journal.deletes()


async def test_a_replaced_object_the_service_cannot_delete_yet_goes_later(
    remote: MemRemote, tmp_path: Path
) -> None:
    """The new upload is stored, then the service is away for the delete of the object
    it replaces: close succeeds (it failed, with the bytes stored), and that object is
    deleted later, by the next mount if this one ends first (it stayed as a duplicate)."""
    old = remote.put("", "f", b"old")
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache) as fs:
        assert await fs.listdir() == ["f"]
        remote.fail["delete"] = Unavailable("server down", status=503)
        delete = remote.delete

        async def away(key: str) -> None:  # the first fails (fail), the next ones too
            remote.down = True
            await delete(key)

        remote.delete = away  # type: ignore[method-assign]
        await fs.write_file("f", b"new")  # close: no error
        assert await fs.listdir() == ["f"]
        assert to_delete(cache) == [old.key]
    assert old.key in remote.files
    remote.down = False
    remote.delete = delete  # type: ignore[method-assign]
    # The next mount's pass over what is left sends another row first, a while.
    remote.put("", "g", b"theirs")  # (so that row is not shown as pending: it is sent)
    (cache / "staging" / "g").write_bytes(b"mine")
    journal = Journal(cache / "journal.db")
    journal.record(None, cache / "staging" / "g", "", "g", None, {}, size=4)
    journal.close()
    sending, gate = gated(remote, "upload")
    async with mounted_ops(remote, cache) as fs:
        await sending.wait()
        try:
            assert await fs.listdir() == ["f", "g"]  # not the old f beside it, still there
        finally:
            gate.set()
        with trio.fail_after(5):
            while old.key in remote.files:
                await trio.sleep(0.01)
        assert [n for n in await fs.listdir() if n.startswith("f")] == ["f"]
        assert await fs.read_file("f") == b"new"
    assert [remote.blobs[f.key] for f in remote.by_path("f")] == [b"new"]
    assert to_delete(cache) == []


async def test_a_replaced_object_is_deleted_once_the_service_is_back(
    remote: MemRemote, tmp_path: Path
) -> None:
    old = remote.put("", "f", b"old")
    cache = tmp_path / "cache"
    async with mounted_ops(remote, cache) as fs:
        assert await fs.listdir() == ["f"]
        remote.fail["delete"] = Unavailable("server down", status=503)  # once
        await fs.write_file("f", b"new")
        with trio.fail_after(5):
            while old.key in remote.files:
                await trio.sleep(0.01)
        assert to_delete(cache) == []
        assert await fs.listdir() == ["f"]
