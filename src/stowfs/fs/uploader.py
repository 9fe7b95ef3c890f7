"""The write path's second half: staged bytes -> the remote, through the journal.

Write-through (default): close (flush) uploads and returns its error. --write-back N:
close journals and returns; the upload runs N seconds later in the background, once no
program has the file open for writing (a file made by mknod waits too: Operations.mknod).
Either way the journal row exists before close returns, so a crash loses nothing: the
next mount resumes what it finds. A replaced file is swapped only after the new upload
succeeded (upload the new object, then delete the old key).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from ..checksum import md5_file
from ..errors import (
    AuthFailed,
    InvalidRequest,
    NotFound,
    RateLimited,
    StowfsError,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from ..remote.base import KeyHook, Remote, RemoteFile, UploadCheckpoint
from . import staging
from .journal import Entry, Journal, JournalError, Progress
from .staging import Spawn, Staged
from .streaming import Streamer
from .tree import Node, Tree

log = logging.getLogger(__name__)

# The remote will never take these bytes as they are: keeping them helps no one.
REFUSED = (TooLarge, UnsupportedMediaType, InvalidRequest)
MAX_BACKOFF = 300.0
# Folders of the cache dir holding bytes that will not go up, by why: never cleaned by the
# mount (they are the user's), and named in the log at each mount start.
KEPT = {"refused": "the service refused", "damaged": "a machine crash cut short"}
PARALLEL = 8  # background uploads at a time
# A delete refused for one of these may go later: it is kept, and tried again.
PASSING = (Unavailable, RateLimited, AuthFailed)
# How far the service's clock may lag ours, for telling an upload that landed from an
# older object of the same bytes.
CLOCK_SKEW = 300.0
T = TypeVar("T")


class Uploader:
    def __init__(
        self,
        remote: Remote,
        tree: Tree,
        journal: Journal,
        write_back: float | None,
        spawn: Spawn,
        staging_dir: Path,
        read_only: bool,
    ) -> None:
        self.remote = remote
        self.read_only = read_only  # an earlier mount's uploads wait for a writable one
        self.staging_dir = staging_dir
        self.tree = tree
        self.journal = journal
        self.write_back = write_back
        self.streamer = Streamer(remote, spawn)
        self.drop_folder = not remote.capabilities.list
        self._due: dict[Node, float] = {}  # nodes waiting for the background uploader
        # (due, order, node) for every schedule: the next due without a scan of all.
        # Entries that no longer match `_due` are skipped when they come up.
        self._heap: list[tuple[float, int, Node]] = []
        self._order = itertools.count()
        self._backoff: dict[Node, float] = {}
        self._waiting: set[Node] = set()  # came due while open for writing
        self._orphans: deque[Entry] = deque()  # journal rows of an earlier mount
        self._retired: set[str] = set()  # keys to delete that the service could not yet
        self.resuming = trio.Lock()  # one pass over them at a time: each would send them
        self._active: set[Node] = set()  # uploading in the background now
        self._quiet = trio.Event()  # set while nothing uploads in the background
        self._quiet.set()
        self._parallel = trio.CapacityLimiter(PARALLEL)
        self._wake = trio.Event()

    # -- called by the operations ------------------------------------------------------
    def metadata_of(self, staged: Staged) -> dict[str, object]:
        return {**staged.metadata, "mtime": staged.mtime}

    def wrote(self, node: Node) -> None:
        """After a write: big files being appended to upload while they grow."""
        staged = node.staged
        if staged is not None:
            self.streamer.wrote(
                staged, lambda: (*self.tree.location(node), self.metadata_of(staged))
            )

    async def journaled(self, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Run a journal write. One that fails (the cache disk is full) is logged, not
        raised: the change stands in memory; only a crash before its upload loses it."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except JournalError as exc:
            log.warning("%s: not journaled: %s", what, exc)
            return None

    async def record(self, node: Node) -> bool:
        """Journal a node's pending upload (or update where it goes); False if the
        journal could not be written."""
        staged = node.staged
        if staged is None or not node.attached:
            return True  # unlinked: its bytes go nowhere, also after a crash
        async with staged.journaling:  # one row per file, even for records at once
            if not staged.pending:  # (also: an upload landed and its row went meanwhile)
                return True
            folder, name = self.tree.location(node)
            entry_id = await self.journaled(
                node.name,
                self.journal.record,
                staged.journal_id,
                staged.path,
                folder,
                name,
                node.file.key if node.file else None,
                self.metadata_of(staged),
                staged.public,
                staged.size,
            )
            if entry_id is None:
                return False
            staged.journal_id = entry_id
            return True

    async def changing(self, staged: Staged) -> None:
        """Before the staged bytes change: an upload of them (under way, or failed with
        its outcome unknown) may have stored the bytes it began with, an object the next
        mount, after a crash, could not tell by its bytes from another file of that name.
        Its key goes to the journal row first (once an attempt)."""
        if staged.attempt is None or staged.attempt_journaled:
            return
        async with staged.journaling:  # (a second writer waits for the row too)
            key = staged.attempt
            if key is not None and not staged.attempt_journaled:
                if staged.journal_id is not None:
                    await self.journaled(key, self.journal.sending, staged.journal_id, key)
                if staged.attempt == key:
                    staged.attempt_journaled = True

    async def _unjournal(self, staged: Staged) -> None:
        """Remove the row once nothing is pending: a change made meanwhile keeps it. A row
        that cannot be removed stays this file's (the next change updates it); the next
        mount drops it once its staging file is gone."""
        async with staged.journaling:
            if staged.journal_id is not None and not staged.dirty:
                removed = await self.journaled(
                    "an upload done", self.journal.remove, staged.journal_id
                )
                if removed is not None:
                    staged.journal_id = None

    async def commit(self, node: Node, defer: float | None = None) -> None:
        """Called on close: upload now (errors raised) or schedule it (write-back, or
        `defer` seconds at least)."""
        staged = node.staged
        if staged is None or not staged.dirty:
            return
        if not node.attached:  # unlinked, then written to: nothing to upload
            await self._drop(node, staged)
            return
        journaled = await self.record(node)
        await self._journal_stream(staged, self.streamer.progress(staged))
        delays = [d for d in (self.write_back, defer) if d is not None]
        if delays and journaled:
            self.schedule(node, max(delays))
            return
        if self.write_back is not None:
            log.warning("%s: uploading at close: a crash would lose it unjournaled", node.name)
        try:
            await self._attempt(node)
        except REFUSED:
            raise
        except (StowfsError, OSError):
            # down, quota, key: may change; the bytes stay journaled and are retried
            self.schedule(node, self._next_backoff(node))
            raise

    async def _attempt(self, node: Node) -> None:
        """upload(); one the remote refuses for good drops the change (reject), raising."""
        try:
            await self.upload(node)
        except REFUSED:
            await self.reject(node)
            raise

    def closed(self, node: Node) -> None:
        """A writer closed: an upload that came due while the file was open goes now."""
        if not node.writers and node in self._waiting:
            self._waiting.discard(node)
            self.schedule(node, 0)

    def schedule(self, node: Node, delay: float) -> None:
        self._due[node] = due = trio.current_time() + delay
        heapq.heappush(self._heap, (due, next(self._order), node))
        self._wake.set()

    async def reject(self, node: Node) -> None:
        """The remote refused these bytes for good (too large, not an image...): the
        writer was told by close; drop the journal row, keep nothing pending."""
        staged = node.staged
        if staged is None:
            return
        kept = self._kept_path("refused", staged.path, node.name)
        try:  # a second name for the bytes: a shell's `>` never reads the close's error
            await trio.to_thread.run_sync(_link, staged.path, kept)
            where = f"its bytes are in {kept}"
        except OSError as exc:
            where = f"its bytes could not be kept ({exc})"
        await self._drop(node, staged)
        log.error(
            "upload of %s refused by the remote; the change was not kept, %s", node.name, where
        )
        if node.file is None:
            self.tree.detach(node, notify=True)
        elif node.opens == 0 and not staged.dirty:
            node.staged = None
            staged.discard()

    def _kept_path(self, folder: str, staging: Path, name: str) -> Path:
        """Where bytes that will not go up are kept (`folder` says why), under a name
        that is unique (its staging file's) and says what they were."""
        short = name.encode()[: 250 - len(staging.name)].decode("utf-8", "ignore")
        return self.staging_dir.parent / folder / f"{staging.name}-{short}"

    async def cancel(self, node: Node) -> None:
        """The node was unlinked: its pending bytes go nowhere. An upload of them under
        way may still store them: their row stays, marked, until that object is deleted
        (by the next mount, after a crash)."""
        self._due.pop(node, None)
        staged = node.staged
        if staged is None:
            return
        # (the lock is held from the upload's start to its record, the object stored)
        keep_row = staged.lock.locked() and staged.journal_id is not None
        if keep_row:  # the row names the object to delete: the key that upload names
            staged.unlinked = True
            await self.changing(staged)
            await self.journaled(node.name, self.journal.unlinked, staged.journal_id)
        await self._drop(node, staged, keep_row=keep_row)

    async def _drop(self, node: Node, staged: Staged, *, keep_row: bool = False) -> None:
        """Nothing of these bytes is pending any more: no schedule, no stream, no parts
        of an interrupted upload, no journal row (unless `keep_row`)."""
        staged.uploaded = staged.generation
        self._due.pop(node, None)
        self._waiting.discard(node)
        self.streamer.abandon(staged)
        if staged.progress is not None:
            await self.remote.abort_upload(staged.progress.checkpoint)
            staged.progress = None
        if not keep_row:
            await self._unjournal(staged)

    async def upload(self, node: Node) -> None:
        staged = node.staged
        assert staged is not None
        async with staged.lock:
            while staged.dirty and node.attached:
                generation = staged.generation
                folder, name = self.tree.location(node)
                # Not cut short by an unmount (its drain waits for it): the server may
                # have stored the bytes unbeknown, and the drain would send them again
                # beside them; once stored, the tree, the replaced object and the journal
                # must agree (the old object would stay as a duplicate).
                with trio.CancelScope(shield=True):
                    staged.uploading = True
                    try:
                        new = await self._send(staged, folder, name)
                    finally:
                        staged.uploading = False
                    staged.attempt = None  # landed: it is the file's object now
                    staged.uploaded = generation
                    await self._swap(node, new)
                    if not node.attached:  # unlinked while it went up: it must not survive
                        await self.retire(new.key)
                    if staged.dirty:  # rewritten meanwhile: the row replaces this one now
                        await self.record(node)
                    else:
                        await self._unjournal(staged)
        if not node.attached:
            await self._unjournal(staged)  # the row kept by an unlink while it went up
        if not staged.dirty:
            self._due.pop(node, None)
            self._backoff.pop(node, None)
            if node.opens == 0 and node.staged is staged:
                node.staged = None
                staged.discard()
            self.tree.reap(node)

    async def _send(self, staged: Staged, folder: str, name: str) -> RemoteFile:
        """Upload the staged bytes, completing the stream begun while they were written
        or an upload a failure interrupted."""
        metadata = self.metadata_of(staged)
        generation = staged.generation
        wanted, public = (lambda: self.metadata_of(staged)), (lambda: staged.public)
        earlier = await self._earlier_attempt(staged, folder, name)
        if earlier is not None:
            staged.progress = None  # (its parts, if any, made that object)
            return await self._bring_to(earlier, dict(earlier.metadata), wanted, public)

        async def named(key: str) -> None:
            staged.attempt, staged.attempt_journaled = key, False
            if staged.generation != generation or staged.unlinked:  # before the key came
                await self.changing(staged)

        stream = await self.streamer.finish(staged, folder, name)
        if stream is not None and stream.checkpoint is not None:
            staged.progress = Progress(folder, name, stream.metadata, stream.checkpoint)
        begun = staged.progress

        def remember(progress: Progress) -> None:
            staged.progress = progress

        new = await self._upload(
            staged.path,
            folder,
            name,
            metadata,
            begun,
            staged.journal_id,
            remember,
            wanted,
            public,
            named,
        )
        staged.progress = None
        return new

    async def drop_attempt(self, staged: Staged) -> None:
        """Delete the object a failed attempt may have stored (the file is removed);
        raises where the service cannot be asked, as the delete of an uploaded file does.
        One under way is left to that upload, which deletes its own once it lands."""
        key = staged.attempt
        if key is not None and not staged.lock.locked():
            await self.delete(key)
            if staged.attempt == key:
                staged.attempt = None

    async def _earlier_attempt(self, staged: Staged, folder: str, name: str) -> RemoteFile | None:
        """The object an earlier attempt stored unbeknown (its answer lost as the service
        went down), if it is the upload of these bytes to this place; None: there is none
        (any more)."""
        key = staged.attempt
        found = None
        if key is not None and self.remote.capabilities.list:  # (a drop folder cannot look)
            found = await self._claim(key, folder, name, staged.path, staged.size)
        if found is None:
            staged.attempt = None
        else:
            log.info("%s: an earlier attempt had landed, its answer lost", name)
        return found

    async def _claim(
        self, key: str, folder: str, name: str, source: Path, size: int
    ) -> RemoteFile | None:
        """The object an upload attempt named (`key`), if it stored it: the upload of
        `source` to folder/name while it holds those bytes there; otherwise it is deleted
        (older bytes, or an older place: kept, it would show as a second file)."""
        try:
            file = await self.remote.stat(key)
        except NotFound:
            return None
        if (file.folder, file.name, file.size) == (folder, name, size) and (
            file.checksum == await md5_file(source)
        ):
            return file
        await self._delete_listed(file.folder, key)
        log.info("%s: an object an earlier upload of it stored is deleted", file.path)
        return None

    async def _upload(
        self,
        source: Path,
        folder: str,
        name: str,
        metadata: dict[str, Any],
        begun: Progress | None,
        entry_id: int | None,
        remember: Callable[[Progress], None],
        wanted: Callable[[], dict[str, Any]],
        public: Callable[[], bool | None],
        on_key: KeyHook | None = None,
    ) -> RemoteFile:
        """Upload `source`, resuming the upload under way (`begun`) if it goes to this
        very place (the remote starts over if the bytes changed since); its progress is
        remembered and journaled part by part. Then its metadata is brought to
        `wanted()`, its visibility to `public()`."""
        checkpoint = None
        if begun is not None and (begun.folder, begun.name) == (folder, name):
            checkpoint = begun.checkpoint
        elif begun is not None:
            await self.remote.abort_upload(begun.checkpoint)  # begun for another place

        async def on_checkpoint(cp: UploadCheckpoint) -> None:
            begun_with = begun.begun_with if begun is not None and cp is checkpoint else metadata
            progress = Progress(folder, name, begun_with, cp)
            remember(progress)
            if entry_id is not None:
                await self.journaled(name, self.journal.save_progress, entry_id, progress)

        new = await self.remote.upload(
            source,
            folder,
            name,
            metadata,
            checkpoint=checkpoint,
            on_checkpoint=on_checkpoint,
            on_key=on_key,
        )
        sent = {**(begun.begun_with if begun is not None else {}), **metadata}
        return await self._bring_to(new, sent, wanted, public)

    async def _bring_to(
        self,
        new: RemoteFile,
        sent: dict[str, Any],
        wanted: Callable[[], dict[str, Any]],
        public: Callable[[], bool | None],
    ) -> RemoteFile:
        """A stored object's metadata brought to `wanted()`, then its visibility to
        `public()`."""
        new = await self._patch_since(new, sent, wanted)
        return await self._make_public(new, public)

    async def _make_public(self, new: RemoteFile, public: Callable[[], bool | None]) -> RemoteFile:
        wanted = public()
        if wanted is None or new.is_public == wanted or not self.remote.capabilities.metadata:
            return new
        try:
            return await self.remote.set_public(new.key, wanted)
        except StowfsError as exc:  # the bytes are stored: failing now would upload twice
            log.warning("%s is uploaded, but its visibility could not be set: %s", new.name, exc)
            return new

    async def _journal_stream(self, staged: Staged, progress: Progress | None) -> None:
        """At close, journal the parts a stream sent while the file was written: a crash
        before its upload goes on (the upload journals its own progress) resumes from
        them. Journaled as complete, with the staged file's size and mtime of now: the
        remote checks them before it trusts the parts."""
        if progress is None or staged.journal_id is None:
            return
        stat = await trio.to_thread.run_sync(os.stat, staged.path)
        cp = dataclasses.replace(
            progress.checkpoint,
            parts=dict(progress.checkpoint.parts),  # parts still landing change the live one
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            growing=False,
        )
        journaled = dataclasses.replace(progress, checkpoint=cp)
        await self.journaled(
            progress.name, self.journal.save_progress, staged.journal_id, journaled
        )

    async def _patch_since(
        self, new: RemoteFile, sent: dict[str, Any], wanted: Callable[[], dict[str, Any]]
    ) -> RemoteFile:
        """Bring the new object's metadata to `wanted()`: an upload begun earlier (a
        stream, a resumed one) has the metadata of its moment, and a setfattr or touch
        may come while the bytes are on their way. `sent`: keys it may have been given."""
        if not self.remote.capabilities.metadata:
            return new
        goal = wanted()
        while True:
            patch = {k: v for k, v in goal.items() if new.metadata.get(k) != v}
            patch.update((k, None) for k in sent if k not in goal and k in new.metadata)
            if not patch:
                return new
            try:
                new = await self.remote.patch_metadata(new.key, patch)
            except StowfsError as exc:  # the bytes are stored: failing now would upload twice
                log.warning("%s is uploaded, but its metadata could not be set: %s", new.name, exc)
                return new
            if wanted() == goal:
                return new  # no change came during that request (the usual case)
            sent, goal = goal, wanted()

    async def _swap(self, node: Node, new: RemoteFile) -> None:
        old = node.file
        kept = node.kernel_version is not None and node.kernel_version == node.version
        self.tree.own(node, new)
        if kept or node.kernel_version is None:
            node.kernel_version = node.version  # the kernel holds exactly these bytes
        if self.drop_folder:
            await self.journaled(new.name, self.journal.add_drop, new, old and old.key)
        if old is not None and old.key != new.key:
            await self.retire(old.key)

    async def retire(self, key: str) -> None:
        """Delete an object this mount replaced or removed, once its successor (if any)
        is stored. One the service cannot delete now is journaled and deleted later (by
        the next mount, if need be): the upload stands, and no duplicate stays."""
        try:
            await self.delete(key)
        except PASSING as exc:
            log.warning("%s is replaced or removed; deleting it failed (%s): later", key, exc)
            self.tree.deleted(key)  # gone, for this mount, from now on
            self._retired.add(key)
            await self.journaled(key, self.journal.add_delete, key)
            self._wake.set()
        except StowfsError as exc:  # (a legal hold): it stays, as the service wants
            log.warning("%s is replaced or removed, but the service keeps it: %s", key, exc)

    async def _delete_retired(self) -> bool:
        """Delete what `retire` could not; True when none is left. The first failure
        ends the pass (the service is still away)."""
        for key in list(self._retired):
            try:
                await self.delete(key)
            except PASSING as exc:
                log.warning("%s: deleting it failed again (%s)", key, exc)
                self.tree.deleted(key)
                return False
            except StowfsError as exc:
                log.warning("%s cannot be deleted: %s", key, exc)
            self._retired.discard(key)
            await self.journaled(key, self.journal.remove_delete, key)
        return True

    async def delete(self, key: str) -> None:
        """Delete an object (removed, or replaced); a write-only remote keeps it, our
        record drops it. Listings asked meanwhile do not show it, nor after, unless the
        delete failed."""
        self.tree.deleted(key)
        if self.remote.capabilities.delete:
            try:
                with contextlib.suppress(NotFound):
                    await self.remote.delete(key)
            except BaseException:
                self.tree.kept(key)
                raise
        if self.drop_folder:
            await self.journaled(key, self.journal.remove_drop, key)

    def _next_backoff(self, node: Node) -> float:
        delay = min(self._backoff.get(node, 0.5) * 2, MAX_BACKOFF)
        self._backoff[node] = delay
        return delay

    # -- the background task ---------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background uploads (write-back, retries, an earlier mount's journal), several
        at a time."""
        self._orphans = deque(await trio.to_thread.run_sync(self.journal.pending))
        keep = {entry.staging.name for entry in self._orphans}
        if self._orphans and self.read_only:
            log.warning(
                "%d journaled upload(s) of an earlier mount are kept for a writable mount:"
                " this one is read-only",
                len(self._orphans),
            )
            self._orphans.clear()
        elif self._orphans:
            log.warning("resuming %d journaled upload(s) of an earlier mount", len(self._orphans))
        if not self.read_only:
            self._retired = set(await trio.to_thread.run_sync(self.journal.deletes))
            for key in self._retired:  # gone for this mount too, before its first listing
                self.tree.deleted(key)
        stray = await trio.to_thread.run_sync(staging.sweep, self.staging_dir, keep)
        if stray:
            log.info("removed %d staging file(s) of writes never closed", stray)
        for folder, why in KEPT.items():
            where = self.staging_dir.parent / folder
            count = await trio.to_thread.run_sync(_count_files, where)
            if count:
                log.warning(
                    "%d file(s) %s are kept in %s: remove them when done", count, why, where
                )
        if self._orphans:
            # Before the mount is ready: its first `ls` shows what they hold, and a write
            # edits their bytes (after, it would land beside them). Sends wait for later.
            await self._resume_orphans(send=False)
        task_status.started()
        leftovers_due = 0.0
        delay = 0.0
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                if (self._orphans or self._retired) and now >= leftovers_due:
                    ok = await self._leftovers()
                    delay = 0.0 if ok else min(max(delay * 2, 1.0), MAX_BACKOFF)
                    leftovers_due = now + delay
                while self._heap and self._heap[0][0] <= now:
                    due, _, node = heapq.heappop(self._heap)
                    if self._due.get(node) != due or node in self._active:
                        continue  # stale, or uploading now: it comes back when that ends
                    del self._due[node]
                    self._active.add(node)
                    if self._quiet.is_set():
                        self._quiet = trio.Event()
                    nursery.start_soon(self._background, node)
                wait = (self._heap[0][0] if self._heap else math.inf) - trio.current_time()
                if self._orphans or self._retired:
                    wait = min(wait, leftovers_due - trio.current_time())
                self._wake = trio.Event()
                with trio.move_on_after(max(wait, 0)):
                    await self._wake.wait()

    async def _background(self, node: Node) -> None:
        try:
            async with self._parallel:
                if node.staged is not None and node.staged.dirty:
                    if node.writers:
                        # Uploading now would send a state between two writes, then
                        # send it all again: it goes when the last writer closes.
                        self._waiting.add(node)
                    else:
                        await self._attempt(node)
        except REFUSED:
            pass  # dropped: retrying would never do
        except (StowfsError, OSError) as exc:
            delay = self._next_backoff(node)
            log.warning(
                "upload of %s failed: %s; kept journaled, retry in %.0fs", node.name, exc, delay
            )
            self._due[node] = trio.current_time() + delay
        finally:
            self._active.discard(node)
            if not self._active:
                self._quiet.set()
            if node in self._due:  # a retry, or scheduled again while it was uploading
                heapq.heappush(self._heap, (self._due[node], next(self._order), node))
            self._wake.set()

    async def _leftovers(self) -> bool:
        """A pass over what waits from before (an earlier mount's uploads, deletes that
        failed); True when nothing is left."""
        sent = await self._resume_orphans()
        return await self._delete_retired() and sent

    async def _resume_orphans(self, *, send: bool = True) -> bool:
        """Upload rows left by an earlier mount; True when all went. Without `send`,
        only those shown as pending files (or found landed) go. The rows not done yet
        stay in `_orphans` at every step: an unmount may end the pass between two."""
        async with self.resuming:
            listings: dict[str, list[RemoteFile]] = {}  # folder -> its files, once a pass
            for _ in range(len(self._orphans)):
                # As an upload under way (`upload`): an unmount lets it end.
                with trio.CancelScope(shield=True):
                    outcome = await self._try_resume(self._orphans[0], listings, send)
                if outcome == "down":
                    break  # the rest would each wait out the retries
                if outcome == "done":
                    self._orphans.popleft()
                else:
                    self._orphans.rotate(-1)  # to the back, for a later pass
            return not self._orphans

    async def _try_resume(
        self, entry: Entry, listings: dict[str, list[RemoteFile]], send: bool
    ) -> Literal["done", "left", "down"]:
        """Resume one row: done (sent, found landed, shown as pending, or dropped for
        good), left for a later pass, or left with the remote unreachable."""
        try:
            return "done" if await self._resume(entry, listings, send) else "left"
        except REFUSED as exc:
            kept = self._kept_path("refused", entry.staging, entry.name)
            why = f"refused by the remote ({exc}); the change was not kept, its bytes are in"
            await self._forget(entry, f"{why} {kept}", kept)
            return "done"
        except (StowfsError, OSError) as exc:  # OSError: its staging file unreadable
            log.warning("journaled upload of %s/%s failed: %s", entry.folder, entry.name, exc)
            return "down" if isinstance(exc, Unavailable) else "left"

    async def _forget(self, entry: Entry, why: str, keep: Path | None = None) -> None:
        """An earlier mount's upload that will never be: its parts and row go, its bytes
        too (or to `keep`)."""
        log.error("journaled upload of %s/%s %s", entry.folder, entry.name, why)
        if entry.progress is not None:
            await self.remote.abort_upload(entry.progress.checkpoint)
        if keep is None:
            await self._finish(entry)
        else:
            await trio.to_thread.run_sync(_move, entry.staging, keep)
            await self.journaled(entry.name, self.journal.remove, entry.id)

    async def _finish(self, entry: Entry) -> None:
        """The row goes, then its staging file: a crash between leaves a stray file (swept
        by the next mount), not a row without its bytes (taken for bytes lost)."""
        if await self.journaled(entry.name, self.journal.remove, entry.id) is not None:
            await trio.to_thread.run_sync(partial(entry.staging.unlink, missing_ok=True))

    async def sync(self, staged: Staged) -> None:
        """fsync(2) of a file kept for a later upload: its bytes, its name in the staging
        folder and its journal row reach the disk, so that even a crash of the machine
        leaves it to resume."""

        def run() -> None:
            os.fsync(staged.fd)
            folder = os.open(staged.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
            self.journal.sync()

        await trio.to_thread.run_sync(run)

    async def _resume(
        self, entry: Entry, listings: dict[str, list[RemoteFile]], send: bool
    ) -> bool:
        """Resume one row; False: it must be sent, and `send` is not set."""
        if entry.unlinked:
            await self._finish_unlink(entry)
            return True
        try:
            stat = await trio.to_thread.run_sync(os.stat, entry.staging)
        except FileNotFoundError:
            await self._forget(
                entry,
                "has no staging file any more: nothing to send (an upload that landed"
                " before its row could be removed leaves this, as does a cache emptied by hand)",
            )
            return True
        size = stat.st_size
        if entry.size is not None and size < entry.size:
            # A crash of the machine lost written bytes before they reached the disk (or
            # a truncate was never closed): sending the rest would replace the remote's
            # whole version with a damaged one.
            kept = self._kept_path("damaged", entry.staging, entry.name)
            await self._forget(
                entry,
                f"was not sent: its staging file has {size} of the {entry.size} bytes it had"
                f" when journaled; the remote keeps its version, the bytes are kept in {kept}",
                kept,
            )
            return True
        await self._superseded(entry, stat)
        folder, new = await self._landed(entry, stat, listings)
        if new is not None:
            log.info("upload of %s/%s had landed before the mount ended", entry.folder, entry.name)
            new = await self._bring_to(new, {}, lambda: entry.metadata, lambda: entry.public)
        elif folder is not None and await self._adopt(entry, folder, stat):
            log.info("upload of %s/%s resumes: shown as pending", entry.folder, entry.name)
            return True
        elif not send:
            return False
        else:
            # Parts land in entry.progress's checkpoint itself: a second try resumes too.
            new = await self._upload(
                entry.staging,
                entry.folder,
                entry.name,
                entry.metadata,
                entry.progress,
                entry.id,
                lambda progress: None,
                lambda: entry.metadata,
                lambda: entry.public,
            )
        if self.drop_folder:
            await self.journaled(new.name, self.journal.add_drop, new, entry.replaces)
        if entry.replaces and entry.replaces != new.key:
            await self.delete(entry.replaces)
        await self._finish(entry)
        log.info("resumed upload of %s/%s", entry.folder, entry.name)
        parent = self.tree.find_dir(entry.folder)
        if parent is not None:
            self.tree.expire(parent)  # show the resumed file
        return True

    async def _finish_unlink(self, entry: Entry) -> None:
        """A row of a file removed while its upload was under way, left by a crash: the
        object that upload named is deleted, if it stored it (else the file came back).
        That key only: a file of that name made since, of the same bytes, is not it."""
        if entry.sending is not None:
            await self._delete_listed(entry.folder, entry.sending)
            log.info("%s/%s, removed while it went up, is deleted", entry.folder, entry.name)
        await self._finish(entry)

    async def _delete_listed(self, folder: str, key: str) -> None:
        """Delete an object of `folder`, which a listing may hold already."""
        await self.delete(key)
        shown = self.tree.find_dir(folder)
        if shown is not None:
            self.tree.expire(shown)  # listed with it (by another row of this pass)

    async def _superseded(self, entry: Entry, stat: os.stat_result) -> None:
        """Delete the object that an upload under way at the crash may have stored of an
        older state of the row's file (changed while it went), or at an older place:
        kept, it would show as a second file. One of the row's very bytes and place is
        left to `_landed`."""
        key = entry.sending
        if key is not None and key != entry.replaces and self.remote.capabilities.list:
            await self._claim(key, entry.folder, entry.name, entry.staging, stat.st_size)

    async def _files_in(
        self, folder: str, shown: Node | None, listings: dict[str, list[RemoteFile]]
    ) -> list[RemoteFile]:
        """The files of a remote folder: those its directory shows (`shown`), else those
        of a listing (the folder is not below the mount's root)."""
        if shown is not None:  # (a drop folder's: its record, what landed)
            return [c.file for c in self.tree.children(shown) if c.file is not None]
        if not self.remote.capabilities.list:
            return []  # a drop folder cannot look further
        if folder not in listings:
            listings[folder] = await self.remote.list_folder(folder)
        return listings[folder]

    async def _adopt(self, entry: Entry, folder: Node, stat: os.stat_result) -> bool:
        """Make an earlier mount's upload this one's: the file shows its bytes, pending,
        and a write to it edits them (sent on its own, it would land beside the newer
        write as a duplicate). False: its name holds another file by now."""
        metadata = dict(entry.metadata)
        mtime = float(metadata.pop("mtime", stat.st_mtime))
        staged = await trio.to_thread.run_sync(Staged, entry.staging, metadata, mtime)
        node = self.tree.child(folder, entry.name)
        if node is None:
            node = self.tree.new(folder, entry.name, False)
            self.tree.invalidate(folder.inode, entry.name)
        elif (
            node.is_dir
            or node.staged is not None
            or node.version is None
            or (node.version[0] != entry.replaces)
        ):
            await trio.to_thread.run_sync(os.close, staged.fd)
            return False
        else:
            self.tree.invalidate(node.inode, None)  # its size and bytes are these now
        staged.size = stat.st_size
        staged.digest = None  # not hashed as written: it uploads without a stream
        staged.journal_id = entry.id
        staged.progress = entry.progress
        staged.public = entry.public
        node.staged = staged
        self.schedule(node, 0)
        return True

    async def _landed(
        self, entry: Entry, stat: os.stat_result, listings: dict[str, list[RemoteFile]]
    ) -> tuple[Node | None, RemoteFile | None]:
        """The directory of the row's folder (listed, if below the mount's root), and
        the object an earlier mount's upload made, if it landed and that mount ended
        before its row went (a crash, a kill -9): uploading it again would show the file
        twice. Known by name, size and MD5, and made after its bytes were written."""
        shown = await self.tree.load_dir(entry.folder)
        alike = [
            f
            for f in await self._files_in(entry.folder, shown, listings)
            if f.name == entry.name
            and f.key != entry.replaces
            and f.size == stat.st_size
            and f.created_at >= stat.st_mtime - CLOCK_SKEW
        ]
        if not alike:
            return shown, None
        md5 = await md5_file(entry.staging)
        return shown, next((f for f in alike if f.checksum == md5), None)

    # -- shutdown ----------------------------------------------------------------------
    def pending_nodes(self) -> list[Node]:
        return [
            n
            for n in self.tree.nodes.values()
            if n.attached and n.staged is not None and n.staged.dirty
        ]

    async def drain(self) -> int:
        """Upload everything pending now; returns how many stay journaled."""
        await self._quiet.wait()  # the uploads under way end first (their swaps too)
        for node in self.pending_nodes():
            await self.record(node)
        await self._resume_orphans()
        left = len(self._orphans)
        pending = self.pending_nodes()
        for n, node in enumerate(pending):
            try:
                await self._attempt(node)
            except REFUSED:
                pass  # dropped, and said so
            except StowfsError as exc:
                log.warning("upload of %s failed at unmount: %s", node.name, exc)
                left += 1
                if isinstance(exc, Unavailable):  # the rest stay journaled, not tried in vain
                    left += len(pending) - n - 1
                    break
        else:
            await self._delete_retired()  # (the service answers: the bytes went first)
        if self._retired:
            log.warning("%d object(s) to delete are left journaled", len(self._retired))
        return left


def _count_files(folder: Path) -> int:
    try:
        return sum(1 for _ in folder.iterdir())
    except FileNotFoundError:
        return 0


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:  # refused again after more writes: that name has them too
        if not os.path.samefile(source, target):
            raise
