"""The FUSE request handlers (pyfuse3.Operations) over a Remote.

Every handler is wrapped by `errnos.handler`, so remote errors leave as the errno
mapped in errnos.py. Handlers never block the trio thread: data and sqlite I/O go
through worker threads (staging, blockcache, journal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyfuse3
import trio

from ..errors import Conflict, InvalidRequest, NotFound, StowfsError, Unavailable
from ..metadata import type_name
from ..remote.base import FieldInfo, Remote, RemoteFile, Usage
from . import xattrs
from .blockcache import BlockCache
from .errnos import fuse_error, handler
from .journal import Journal
from .names import NAME_MAX, visible_names
from .options import MountOptions
from .prefetch import Prefetcher
from .reader import Reader, ReadState
from .staging import Staged
from .tree import ROOT, Invalidate, Node, Tree, join
from .uploader import Uploader

log = logging.getLogger(__name__)

FUSEError = pyfuse3.FUSEError
_USER = xattrs.USER.encode()
USAGE_TTL = 5.0
ROOM = 64 * 1024 * 1024  # cached blocks given up at once when staging fills the disk
MKNOD_GRACE = 1.0  # seconds a file made by mknod waits for its bytes (see mknod)
UNDO_TIME = 30.0  # seconds to put back a folder rename broken off halfway
DROP_SWEEP = 60.0  # seconds between looks for drop folder entries whose URL expired


@dataclass
class FileHandle:
    node: Node
    writable: bool
    seq: ReadState = field(default_factory=ReadState)


@dataclass
class DirHandle:
    node: Node
    entries: list[tuple[str, pyfuse3.InodeT]]  # "." and ".." first


DOTS = 2


def _name(raw: bytes) -> str:
    if len(raw) > NAME_MAX:
        raise FUSEError(errno.ENAMETOOLONG)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FUSEError(errno.EINVAL) from None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _public(node: Node) -> bool:
    """The file's visibility: the one its pending upload will give it, if any."""
    staged = node.staged
    if staged is not None and staged.public is not None and (staged.pending or not node.file):
        return staged.public
    return node.file is not None and node.file.is_public


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        remote: Remote,
        options: MountOptions,
        invalidate: Invalidate | None = None,
    ) -> None:
        super().__init__()
        self.remote = remote
        self.caps = remote.capabilities
        self.options = options
        self._other_xattrs = errno.ENOTSUP if options.other_xattrs == "enotsup" else pyfuse3.ENOATTR
        self.cache = BlockCache(
            options.cache_dir / "blocks", options.cache_max_size, options.block_size
        )
        self.tree = Tree(
            remote,
            options.folder,
            options.dir_cache_time,
            invalidate or (lambda inode, name: None),
            time.time(),
            self.cache.discard,
        )
        self.staging_dir = options.cache_dir / "staging"
        self.journal = Journal(options.cache_dir / "journal.db")
        self.uploader = Uploader(
            remote,
            self.tree,
            self.journal,
            options.write_back,
            self._spawn,
            self.staging_dir,
            options.read_only,
        )
        self.reader: Reader | None = None
        self.prefetch: Prefetcher | None = None
        self.handles: dict[int, FileHandle | DirHandle] = {}
        self._next_fh = 1
        self._usage: tuple[float, int, Usage] | None = None  # asked at, tree.edits then
        self._nursery: trio.Nursery | None = None
        self._fields: dict[str, FieldInfo] = {}  # the service's metadata schema, if it has one

    # -- life cycle --------------------------------------------------------------------
    async def start(self, nursery: trio.Nursery) -> None:
        """Open the caches and start the background tasks in the process's nursery."""
        self._nursery = nursery
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        await self.cache.open()
        self.reader = Reader(
            self.remote, self.cache, self._spawn, max_window=self.options.read_ahead
        )
        self.prefetch = Prefetcher(self.tree, self.reader, self._spawn)
        if self.caps.search:
            self._fields = await self._schema()
        if not self.caps.list:
            root = self.tree.nodes[ROOT]
            drops = await trio.to_thread.run_sync(self.journal.drops)
            now, live = time.time(), []
            for file in drops:
                if self._expired(file, now):
                    await self._forget_drop(file)
                else:
                    live.append(file)
            for name, file in visible_names(live).items():
                self.tree.new(root, name, False, file=file)
            root.listed_at = float("inf")  # the mount's own record is the listing
            if self.caps.gone_with_url:
                nursery.start_soon(self._expire_drops)
        await nursery.start(self.uploader.run)  # after the record: it resumes into it

    async def _schema(self) -> dict[str, FieldInfo]:
        """The service's metadata fields; none known, none checked (its answer to the
        upload then says)."""
        try:
            return {f.name: f for f in await self.remote.schema()}
        except StowfsError as exc:
            log.info("no metadata schema (%s): values are checked by the upload", exc)
            return {}

    def _expired(self, file: RemoteFile, now: float) -> bool:
        return self.caps.gone_with_url and file.url_expires is not None and file.url_expires <= now

    async def _forget_drop(self, file: RemoteFile) -> None:
        log.info("%s: its URL expired, and the service with it: it leaves the folder", file.name)
        await self.uploader.journaled(file.name, self.journal.remove_drop, file.key)

    async def _expire_drops(self) -> None:
        """A drop folder of a service that serves a file only as long as its URL (images,
        72 hours) shows it as long: the entry and its record go, checked every minute."""
        root = self.tree.nodes[ROOT]
        while True:
            await trio.sleep(DROP_SWEEP)
            now = time.time()
            for node in [self.tree.nodes[inode] for inode in root.children.values()]:
                file = node.file
                if node.attached and file and node.staged is None and self._expired(file, now):
                    self.tree.detach(node, notify=True)
                    await self._forget_drop(file)

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    async def shutdown(self) -> int:
        """After the kernel let go: upload what is pending; returns how many stay."""
        left = await self.uploader.drain()
        await trio.to_thread.run_sync(self.journal.close)
        return left

    # -- helpers -----------------------------------------------------------------------
    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        opts = self.options
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        # As long as the listing is trusted: remote changes seen earlier (the change
        # feed, a refresh) invalidate the kernel's entries and attributes.
        a.entry_timeout = opts.dir_cache_time
        a.attr_timeout = opts.dir_cache_time
        if node.is_dir:
            a.st_mode = stat.S_IFDIR | (0o777 & ~opts.umask)
            a.st_nlink = 2
        else:
            a.st_mode = stat.S_IFREG | (0o666 & ~opts.umask)
            a.st_nlink = 1
        if opts.read_only:
            a.st_mode &= ~0o222
        a.st_uid, a.st_gid = opts.uid, opts.gid
        a.st_size = node.size
        # cp and most tools size their buffers by it: 1 MiB requests, the block size.
        a.st_blksize = 1024 * 1024
        a.st_blocks = (node.size + 511) // 512
        mtime_ns = int(node.mtime * 1e9)
        ctime = node.file.updated_at if node.file else node.mtime
        a.st_atime_ns = mtime_ns
        a.st_mtime_ns = mtime_ns
        a.st_ctime_ns = int(ctime * 1e9)
        return a

    def _writable(self) -> None:
        if self.options.read_only:
            raise FUSEError(errno.EROFS)

    async def _dir(self, inode: pyfuse3.InodeT) -> Node:
        node = self.tree.get(inode)
        if not node.is_dir:
            raise FUSEError(errno.ENOTDIR)
        await self.tree.refresh(node)
        return node

    async def _entry(self, parent: pyfuse3.InodeT, raw: bytes) -> tuple[Node, str, Node | None]:
        node = await self._dir(parent)
        name = _name(raw)
        return node, name, self.tree.child(node, name)

    async def _new_entry(self, parent: pyfuse3.InodeT, raw: bytes) -> tuple[Node, str, Node | None]:
        """As _entry, for a name about to be given to a file or folder: one the remote
        would refuse fails now (EINVAL), not at close, where a shell's `>` never looks."""
        node, name, existing = await self._entry(parent, raw)
        if existing is None and self.caps.refuses_name(name):
            raise FUSEError(errno.EINVAL)
        return node, name, existing

    def _fh(self, handle: FileHandle | DirHandle) -> pyfuse3.FileHandleT:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return pyfuse3.FileHandleT(fh)

    def _file_handle(self, fh: pyfuse3.FileHandleT) -> FileHandle:
        handle = self.handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise FUSEError(errno.EBADF)
        return handle

    def _check_size(self, size: int) -> None:
        limit = self.caps.max_file_size
        if limit is not None and size > limit:
            raise FUSEError(errno.EFBIG)

    async def _stage(self, node: Node, keep: int | None = None) -> Staged:
        """The node's staging file, holding the old bytes [0, keep) (all by default)."""
        if node.staged is not None:
            return node.staged
        old = node.file
        staged = await trio.to_thread.run_sync(
            Staged.create, self.staging_dir, dict(old.metadata) if old else {}, node.mtime
        )
        staged.uploaded = staged.generation  # nothing new yet
        if old is not None:
            staged.public = old.is_public  # a rewrite keeps the file's visibility
        try:
            if old is not None:
                assert self.reader is not None
                want = old.size if keep is None else min(keep, old.size)
                step = self.options.block_size
                seq = ReadState()
                for offset in range(0, want, step):
                    chunk = await self.reader.read(old, offset, min(step, want - offset), seq)
                    await self._write_staged(staged, offset, chunk)
        except BaseException:
            staged.discard()
            raise
        if node.staged is not None:  # another request staged it meanwhile
            staged.discard()
            return node.staged
        node.staged = staged
        return staged

    async def _truncate(self, node: Node, size: int) -> None:
        self._check_size(size)
        node.opens += 1  # open meanwhile: an upload landing now keeps the staging file
        try:
            staged = await self._stage(node, keep=size)
            await self.uploader.changing(staged)
            await staged.truncate(size)
            staged.touch(time.time())
        finally:
            node.opens -= 1

    # -- lookups and attributes ----------------------------------------------------------
    @handler
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            node = self.tree.get(parent_inode)
        elif name == b"..":
            node = self.tree.get(self.tree.get(parent_inode).parent)
        else:
            _, _, child = await self._entry(parent_inode, name)
            if child is None:
                raise FUSEError(errno.ENOENT)
            node = child
        node.lookups += 1
        return self._attr(node)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, count in inode_list:
            self.tree.forget(inode, count)

    @handler
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attr(self.tree.get(inode))

    @handler
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.tree.get(inode)
        if node.is_dir:
            # Folders have no metadata: their mtime lasts as long as the mount (so a
            # second `rsync -a` finds them unchanged); modes are not kept.
            if fields.update_mtime:
                node.created = attr.st_mtime_ns / 1e9
            return self._attr(node)
        if fields.update_size:
            self._writable()
            await self._truncate(node, attr.st_size)
            handle = self.handles.get(fh) if fh is not None else None
            if not (isinstance(handle, FileHandle) and handle.writable):
                await self.uploader.commit(node)  # no close of a writer will follow
        if fields.update_mtime:
            self._writable()
            await self._set_mtime(node, attr.st_mtime_ns / 1e9)
        return self._attr(node)  # mode, owner: accepted, not stored

    async def _set_mtime(self, node: Node, mtime: float) -> None:
        staged = node.staged
        if staged is not None and staged.dirty:
            staged.mtime = mtime  # goes up with the pending upload
            await self.uploader.record(node)
            return
        if staged is not None:
            async with staged.lock:  # an upload in flight settles first
                pass
        if node.file is None or not self.caps.metadata:
            return  # a drop folder keeps no times: accepted, like chmod
        self.tree.own(node, await self.remote.patch_metadata(node.file.key, {"mtime": mtime}))
        node.kernel_version = node.version
        if node.staged is not None:
            node.staged.mtime = mtime

    # -- directories -------------------------------------------------------------------
    @handler
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        node = await self._dir(inode)
        parent = node.parent if node.inode != ROOT else node.inode
        dots = [(".", node.inode), ("..", parent)]
        return self._fh(DirHandle(node, dots + sorted(node.children.items())))

    @handler
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: Any) -> None:
        handle = self.handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise FUSEError(errno.EBADF)
        for index in range(start_id, len(handle.entries)):
            name, inode = handle.entries[index]
            node = self.tree.nodes.get(inode)
            if node is None or not node.attached:
                continue
            if not pyfuse3.readdir_reply(token, name.encode(), self._attr(node), index + 1):
                return
            if index >= DOTS:  # the kernel takes no lookup of "." and ".."
                node.lookups += 1

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.handles.pop(fh, None)

    @handler
    async def mkdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        if not self.caps.mkdir or not self.caps.list:
            raise FUSEError(errno.EPERM)
        parent, text, existing = await self._new_entry(parent_inode, name)
        if existing is not None:
            raise FUSEError(errno.EEXIST)
        await self.remote.mkdir(join(self.tree.folder_of(parent), text))
        node = self.tree.new(parent, text, True, created=time.time())
        node.listed_at = node.owned_at = trio.current_time()
        node.lookups += 1
        return self._attr(node)

    @handler
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        _, _, node = await self._entry(parent_inode, name)
        if node is None:
            raise FUSEError(errno.ENOENT)
        if not node.is_dir:
            raise FUSEError(errno.ENOTDIR)
        await self.tree.refresh(node, force=True)
        if node.children:
            raise FUSEError(errno.ENOTEMPTY)
        try:
            await self.remote.rmdir(self.tree.folder_of(node))
        except NotFound:
            pass
        except StowfsError as exc:
            raise fuse_error(exc, folder=True) from exc
        self.tree.detach(node)

    # -- files ---------------------------------------------------------------------------
    @handler
    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self.tree.get(inode)
        if node.is_dir:
            raise FUSEError(errno.EISDIR)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable:
            self._writable()
            if flags & os.O_TRUNC:
                await self._truncate(node, 0)
            node.writers += 1
        elif self.prefetch is not None:
            self.prefetch.opened(node)
        node.opens += 1
        keep = node.kernel_version is not None and node.kernel_version == node.version
        node.kernel_version = node.version
        return pyfuse3.FileInfo(fh=self._fh(FileHandle(node, writable)), keep_cache=keep)

    @handler
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        parent, text, existing = await self._new_entry(parent_inode, name)
        if parent.inode != ROOT and not self.caps.list:
            raise FUSEError(errno.EPERM)
        if existing is not None:
            if existing.is_dir:
                raise FUSEError(errno.EISDIR)
            if flags & os.O_EXCL:
                raise FUSEError(errno.EEXIST)
            info = await self.open(existing.inode, flags, ctx)
            existing.lookups += 1
            return info, self._attr(existing)
        now = time.time()
        staged = await trio.to_thread.run_sync(Staged.create, self.staging_dir, {}, now)
        node = self.tree.new(parent, text, False, staged=staged, created=now)
        node.lookups += 1
        node.opens += 1
        node.writers += 1
        # Journaled at close (commit): a file still being written is not resumed
        # half-written after a crash.
        info = pyfuse3.FileInfo(fh=self._fh(FileHandle(node, True)))
        return info, self._attr(node)

    @handler
    # pyfuse3 replies with any buffer (PyObject_GetBuffer): views of cached blocks go out
    # without a copy, though its stub says bytes.
    async def read(  # type: ignore[override]
        self, fh: pyfuse3.FileHandleT, off: int, size: int
    ) -> bytes | memoryview:
        handle = self._file_handle(fh)
        node = handle.node
        if node.staged is not None:
            return await node.staged.read(off, size)
        if node.file is None:
            return b""
        assert self.reader is not None
        file = node.file
        try:
            return await self.reader.read(file, off, size, handle.seq)
        except NotFound as exc:  # deleted or replaced elsewhere
            if node.file is file and node.attached:
                # The kernel would open this inode again by its cached entry, and read
                # ESTALE again: the name is looked up anew, in a new listing.
                parent = self.tree.nodes[node.parent]
                self.tree.detach(node, notify=True)
                self.tree.expire(parent)
            raise fuse_error(exc, opened=True) from exc

    @handler
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self._file_handle(fh)
        if not handle.writable:
            raise FUSEError(errno.EBADF)
        self._check_size(off + len(buf))
        staged = await self._stage(handle.node)
        await self.uploader.changing(staged)
        n = await self._write_staged(staged, off, buf)
        staged.touch(time.time())
        self.uploader.wrote(handle.node)
        return n

    async def _write_staged(self, staged: Staged, offset: int, data: bytes | memoryview) -> int:
        """Write to a staging file; on a full disk, cached blocks make room first."""
        try:
            return await staged.write(offset, data)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not await self.cache.free(len(data) + ROOM):
                raise
        return await staged.write(offset, data)

    @handler
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._file_handle(fh)
        if handle.writable:
            await self.uploader.commit(handle.node)

    @handler
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await self.flush(fh)
        staged = self._file_handle(fh).node.staged
        if staged is not None and staged.pending:  # write-back: uploaded later, from here
            await self.uploader.sync(staged)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self.handles.pop(fh, None)
        if not isinstance(handle, FileHandle):
            return
        handle.seq.stop()
        node = handle.node
        node.opens -= 1
        if handle.writable:
            node.writers -= 1
            self.uploader.closed(node)
        if node.opens == 0 and node.staged is not None and not node.staged.kept:
            node.staged.discard()  # its bytes are on the remote now
            node.staged = None
        self.tree.reap(node)

    @handler
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        _, _, node = await self._entry(parent_inode, name)
        if node is None:
            raise FUSEError(errno.ENOENT)
        if node.is_dir:
            raise FUSEError(errno.EISDIR)
        await self._remove_file(node)

    async def _remove_file(self, node: Node) -> None:
        if node.writers and node.file is not None:
            # A writer may still write in part: the bytes it would write between go
            # with the object (as on a local disk, the open file lives on, unlinked).
            await self._stage(node)
        if node.staged is not None:
            await self.uploader.drop_attempt(node.staged)
        gone: set[str] = set()
        # An upload landing while a delete goes makes another object of the file: it goes
        # too. Once detached (no wait between), an upload landing deletes its own.
        while node.file is not None and node.file.key not in gone:
            key = node.file.key
            gone.add(key)
            await self.uploader.delete(key)
        self.tree.detach(node)
        await self.uploader.cancel(node)

    @handler
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: bytes,
        parent_inode_new: pyfuse3.InodeT,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._writable()
        if flags & ~pyfuse3.RENAME_NOREPLACE:  # an exchange, a whiteout: no such objects
            raise FUSEError(errno.EINVAL)
        _, _, node = await self._entry(parent_inode_old, name_old)
        new_parent, new_name, target = await self._new_entry(parent_inode_new, name_new)
        if node is None:
            raise FUSEError(errno.ENOENT)
        if target is node:
            return
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            if target.is_dir and not node.is_dir:
                raise FUSEError(errno.EISDIR)
            if node.is_dir and not target.is_dir:
                raise FUSEError(errno.ENOTDIR)
        if node.is_dir:
            if not self.caps.list:
                raise FUSEError(errno.EPERM)
            if target is not None:
                await self.rmdir(parent_inode_new, name_new, ctx)
            async with contextlib.AsyncExitStack() as stack:
                for child in self.tree.walk(node):
                    await self._settle(child, stack)
                with self.tree.holding(node):
                    await self._move_folder(node, new_parent, new_name, target is not None)
            return
        async with contextlib.AsyncExitStack() as stack:
            await self._settle(node, stack)
            stack.enter_context(self.tree.holding(node))
            if target is not None:  # news shown meanwhile could give it the moved object
                stack.enter_context(self.tree.holding(target))
            old_parent, old_name = self.tree.nodes[node.parent], node.name
            await self._move_file(node, new_parent, new_name)
            if target is not None:
                try:
                    await self._remove_file(target)
                except Exception:
                    # Whole or not at all, as rename(2): the moved file goes back (here
                    # and on the service), the target stays where it is.
                    await self._move_file(node, old_parent, old_name)
                    self.tree.move(target, new_parent, new_name)
                    raise

    @staticmethod
    async def _settle(node: Node, stack: contextlib.AsyncExitStack) -> None:
        """Hold off the node's uploads: one in flight would land under the old name."""
        if node.staged is not None:
            await stack.enter_async_context(node.staged.lock)

    async def _move_file(self, node: Node, new_parent: Node, new_name: str) -> None:
        if node.file is not None and self.caps.move:
            folder = self.tree.folder_of(new_parent)
            self.tree.own(node, await self.remote.move(node.file, folder, new_name))
        elif node.file is not None:  # a drop folder: renamed in our own record only
            self.tree.own(node, dataclasses.replace(node.file, name=new_name))
            await self.uploader.journaled(new_name, self.journal.add_drop, node.file)
        self.tree.move(node, new_parent, new_name)
        await self.uploader.record(node)  # a staged file is renamed locally

    async def _move_folder(
        self, node: Node, new_parent: Node, new_name: str, replaced: bool
    ) -> None:
        """Folders have no server move: mkdir the new tree, move each file, rmdir the old
        (where the service can remove folders). `replaced`: an empty folder had the new
        name (removed before): an undone rename leaves the new one there."""
        old_root = self.tree.folder_of(node)
        new_root = join(self.tree.folder_of(new_parent), new_name)
        below = await self.remote.list_folders(None)
        folders = [old_root, *sorted(f.path for f in below if f.path.startswith(old_root + "/"))]
        longest = len(new_root) + max(len(f) for f in folders) - len(old_root)
        if self.caps.folder_path_max is not None and longest > self.caps.folder_path_max:
            raise FUSEError(errno.ENAMETOOLONG)  # before anything moves, not halfway
        moved: dict[str, tuple[RemoteFile, RemoteFile]] = {}  # old key -> (old, new)
        made: list[str] = []
        try:
            for folder in folders:
                target = new_root + folder[len(old_root) :]
                await self.remote.mkdir(target)
                if target != new_root or not replaced:
                    made.append(target)
                for file in await self.remote.list_folder(folder):
                    moved[file.key] = file, await self.remote.move(file, target, file.name)
        except BaseException:
            # Broken off halfway: put back what moved, so the folder stays whole (left
            # half-made, the new folder would take the old one into it at mv's next try).
            # Then list both sides again: each file shows where the service has it.
            await self._move_back(list(moved.values()), made)
            for stale in (self.tree.nodes[node.parent], new_parent, *self.tree.walk(node)):
                self.tree.expire(stale)
            raise
        if self.caps.rmdir:
            for folder in reversed(folders):
                try:
                    await self.remote.rmdir(folder)
                except NotFound:
                    pass
                except Conflict:  # a file landed in it meanwhile (elsewhere): it stays there
                    log.warning(
                        "renamed %s: %s got new files meanwhile, it stays", old_root, folder
                    )
        else:  # the files moved: the rename is done, as far as the service allows
            log.warning(
                "renamed %s: the service cannot remove folders, it keeps it empty", old_root
            )
        self.tree.move(node, new_parent, new_name)
        for child in self.tree.walk(node):
            if child.file is not None and child.file.key in moved:
                self.tree.own(child, moved[child.file.key][1])
                child.kernel_version = child.version
            await self.uploader.record(child)

    async def _move_back(self, moved: list[tuple[RemoteFile, RemoteFile]], made: list[str]) -> None:
        """Undo a folder rename broken off halfway, as far as the service lets us: the
        files back where they were, then the new folders removed. Given up once the
        service is unreachable (its retries spent) or after UNDO_TIME."""
        left = len(moved)
        with trio.move_on_after(UNDO_TIME, shield=True):  # (also when an unmount cancels)
            for old, new in reversed(moved):
                try:
                    await self.remote.move(new, old.folder, old.name)
                except Unavailable:
                    break
                except StowfsError as exc:
                    log.debug("could not move %s back: %s", new.key, exc)
                    continue
                left -= 1
            if self.caps.rmdir and not left:
                for folder in reversed(made):
                    with contextlib.suppress(StowfsError):
                        await self.remote.rmdir(folder)
        if left:
            log.warning("a folder rename broke off: %d of its files stay moved", left)

    # -- refused -----------------------------------------------------------------------
    async def symlink(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EPERM)

    async def link(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EPERM)

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """A regular file is an empty file, as `touch` makes; devices, FIFOs and sockets
        are refused. `tar --xattrs` makes files this way, sets their xattrs, then opens
        them for their bytes: the upload waits MKNOD_GRACE seconds (journaled, as with
        --write-back) so that the close that follows sends one object, not an empty
        one, a metadata patch and a replacement."""
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise FUSEError(errno.EPERM)
        info, attr = await self.create(parent_inode, name, mode, os.O_WRONLY | os.O_EXCL, ctx)
        try:
            await self.uploader.commit(self._file_handle(info.fh).node, defer=MKNOD_GRACE)
        finally:
            await self.release(info.fh)
        return attr

    # -- statfs ------------------------------------------------------------------------
    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        usage = await self._current_usage()
        bsize = 4096
        limit = (
            usage.limit_bytes if usage.limit_bytes is not None else max(usage.total_bytes, 1 << 50)
        )
        files = usage.limit_files if usage.limit_files is not None else 1 << 32
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = bsize
        s.f_blocks = limit // bsize
        s.f_bfree = s.f_bavail = max(limit - usage.total_bytes, 0) // bsize
        s.f_files = files
        s.f_ffree = s.f_favail = max(files - usage.file_count, 0)
        s.f_namemax = NAME_MAX
        return s

    async def _current_usage(self) -> Usage:
        """The remote's usage, asked for again after USAGE_TTL or a change of this mount's
        (so that `df` right after a `cp` or `rm` shows it)."""
        now, edits = trio.current_time(), self.tree.edits
        cached = self._usage
        if cached is not None and now - cached[0] < USAGE_TTL and cached[1] == edits:
            return cached[2]
        if not self.caps.usage:
            return Usage(0, 0, None, None)
        try:
            usage = await self.remote.usage()
        except Unavailable:
            if cached is None:
                raise
            usage = cached[2]  # offline: the last figures, and not asked for again at once
        self._usage = (now, edits, usage)
        return usage

    # -- extended attributes -------------------------------------------------------------
    @handler
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[bytes]:
        node = self.tree.get(inode)
        if node.is_dir:
            return []
        names = [f"{xattrs.USER}{key}" for key in node.metadata]
        file = node.file
        if file is not None:
            names += [
                xattrs.FACTS + fact
                for fact in xattrs.FACT_NAMES
                if fact in ("url", "url_expires", "public") or getattr(file, fact) is not None
            ]
        return [n.encode() for n in names]

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> bytes:
        # `ls -l` asks for security.selinux and the ACL of every entry: the least work
        # per call. GNU ls stops asking a device that answered "not supported".
        if not name.startswith(_USER):
            raise FUSEError(self._other_xattrs)
        return await self._user_xattr(inode, name.decode("utf-8", "replace"))

    @handler
    async def _user_xattr(self, inode: pyfuse3.InodeT, text: str) -> bytes:
        node = self.tree.get(inode)
        if inode == ROOT and text == xattrs.PID:
            return str(os.getpid()).encode()  # for `stowfs unmount`
        if node.is_dir:
            raise FUSEError(pyfuse3.ENOATTR)  # answered from memory
        if text.startswith(xattrs.FACTS):
            return await self._fact(node, text[len(xattrs.FACTS) :])
        metadata = node.metadata
        key = text[len(xattrs.USER) :]
        if key not in metadata:
            raise FUSEError(pyfuse3.ENOATTR)
        return xattrs.encode(metadata[key])

    async def _upload_pending(self, node: Node) -> None:
        """Facts and the public flag are the object's: pending bytes go up first (a URL
        asked for right after a write-back close is that of the bytes just written), but
        not half-written ones: while a writer holds the file open, the last object's."""
        if node.staged is None or not node.staged.pending:
            return
        writers = (h for h in self.handles.values() if isinstance(h, FileHandle) and h.writable)
        if all(h.node is not node for h in writers):
            await self.uploader.upload(node)

    async def _fact(self, node: Node, fact: str) -> bytes:
        if fact not in xattrs.FACT_NAMES:
            raise FUSEError(pyfuse3.ENOATTR)
        await self._upload_pending(node)
        if fact == "public":
            return xattrs.encode(_public(node))  # also of a new file, still written
        file = node.file
        if file is None:
            raise FUSEError(pyfuse3.ENOATTR)
        value: Any
        if fact in ("url", "url_expires"):
            url, expires = await self._fresh_url(node)
            value = url if fact == "url" else _iso(expires)
        elif fact in ("created_at", "updated_at"):
            value = _iso(getattr(file, fact))
        else:
            value = getattr(file, fact)
        if value is None:
            raise FUSEError(pyfuse3.ENOATTR)
        return xattrs.encode(value)

    async def _fresh_url(self, node: Node) -> tuple[str, float]:
        file = node.file
        assert file is not None
        if not self.caps.renewable_urls:  # e.g. images: the URL the upload returned
            if file.url is None or file.url_expires is None:
                raise FUSEError(pyfuse3.ENOATTR)
            return file.url, file.url_expires
        return await self.remote.fresh_url(file)

    @handler
    async def setxattr(
        self, inode: pyfuse3.InodeT, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self.tree.get(inode)
        text = name.decode("utf-8", "replace")
        if node.is_dir or not text.startswith(xattrs.USER):
            raise FUSEError(errno.ENOTSUP)
        self._writable()
        try:
            decoded = xattrs.decode(value)
        except UnicodeDecodeError:
            raise FUSEError(errno.EINVAL) from None
        if text == xattrs.PUBLIC:
            await self._set_public(node, decoded)
        elif text == xattrs.MTIME:
            if not isinstance(decoded, int | float) or isinstance(decoded, bool):
                raise FUSEError(errno.EINVAL)  # stat could not show it
            if float(decoded) != node.mtime:
                await self._set_mtime(node, float(decoded))
                self.tree.invalidate(node.inode, None)  # the kernel's attributes
        elif not text.startswith(xattrs.FACTS):
            await self._patch(node, text[len(xattrs.USER) :], decoded)
        # else: a fact, read-only: accepted without effect (see removexattr)

    @handler
    async def removexattr(
        self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self.tree.get(inode)
        text = name.decode("utf-8", "replace")
        if not text.startswith(xattrs.USER):
            raise FUSEError(self._other_xattrs)
        if node.is_dir:
            raise FUSEError(pyfuse3.ENOATTR)
        self._writable()
        if text.startswith(xattrs.FACTS):
            # Facts are the service's, yet tools that copy xattrs write back (or remove)
            # every one they find: cp --preserve=xattr, rsync -X, tar --xattrs,
            # setfattr --restore. Accepted without effect, as chmod is.
            return
        key = text[len(xattrs.USER) :]
        if key not in node.metadata:
            raise FUSEError(pyfuse3.ENOATTR)
        await self._patch(node, key, None)

    async def _patch(self, node: Node, key: str, value: Any) -> None:
        merged = dict(node.metadata)
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
        if merged == node.metadata:
            return  # a value written back as read: nothing to send
        if xattrs.metadata_size(merged) > self.caps.metadata_max_bytes:
            raise FUSEError(errno.E2BIG)  # before any network call
        staged = node.staged
        if staged is not None and (staged.dirty or node.file is None):
            field = self._fields.get(key)
            if field is not None and not field.accepts(value):
                # As a PATCH would be: sent with the bytes, it would refuse their upload.
                kind = type_name(field.type, field.array)
                what = f"takes values of type {kind}" if field.writable else "is the service's"
                raise InvalidRequest(f"{node.name}: the metadata field {key!r} {what}")
            staged.metadata = merged  # goes up with the pending upload
            await self.uploader.record(node)
            return
        if node.file is None:
            raise FUSEError(errno.ENOENT)
        if not self.caps.metadata:
            raise FUSEError(errno.ENOTSUP)
        self.tree.own(node, await self.remote.patch_metadata(node.file.key, {key: value}))
        node.kernel_version = node.version
        if staged is not None:
            staged.metadata = dict(node.file.metadata)

    async def _set_public(self, node: Node, value: Any) -> None:
        if value not in (True, False, 0, 1):
            raise FUSEError(errno.EINVAL)
        if bool(value) == _public(node):
            return
        if not self.caps.metadata:
            raise FUSEError(errno.ENOTSUP)
        staged = node.staged
        if staged is not None:
            staged.public = bool(value)  # the next upload's, also one under way
            await self._upload_pending(node)  # which sets it, unless a writer holds the file
            if staged.dirty or node.file is None:
                await self.uploader.record(node)  # set once the bytes are up
                return
        if node.file is None:
            raise FUSEError(errno.ENOENT)
        if node.file.is_public == bool(value):
            return
        self.tree.own(node, await self.remote.set_public(node.file.key, bool(value)))
        node.kernel_version = node.version
