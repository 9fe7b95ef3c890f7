"""The inode table and the directory cache.

Inodes are handed out once and stay with their entry for the life of the mount (a
replaced file keeps its inode; a renamed one too). Lookup counts follow the kernel's
exactly: +1 per successful lookup/create/mkdir/readdirplus entry, -n per forget; a node
that left the tree lives on until its count and its open handles reach zero.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from ..errors import NotFound, Unavailable
from ..remote.base import Change, Remote, RemoteFile, RemoteFolder
from ..tasks import open_nursery
from .names import visible_names
from .staging import Staged

log = logging.getLogger(__name__)

ROOT = pyfuse3.ROOT_INODE
GONE_KEPT = 600.0  # seconds a deleted key is kept from listings (no listing takes longer)


def join(folder: str, name: str) -> str:
    """The remote path of `name` in `folder` ("" is the storage root)."""
    return f"{folder}/{name}" if folder else name


@dataclass(eq=False)
class Node:
    inode: pyfuse3.InodeT
    parent: pyfuse3.InodeT
    name: str
    is_dir: bool
    file: RemoteFile | None = None
    staged: Staged | None = None
    lookups: int = 0
    opens: int = 0
    writers: int = 0  # of the opens, those for writing: their close commits the bytes
    attached: bool = True
    # directories
    children: dict[str, pyfuse3.InodeT] = field(default_factory=dict)
    listed_at: float | None = None  # trio time of the last listing; None: never listed
    offline_at: float = -math.inf  # trio time a listing last failed, the cached one served
    created: float = 0.0  # wall time; a folder's mtime (set by touch, rsync: in memory)
    # the object version whose bytes the kernel's page cache holds
    kernel_version: tuple[str, str | None] | None = None
    # trio time this mount last made the node's object (or created the node): a listing
    # asked for before then may predate it and must not undo it
    owned_at: float = -math.inf
    held: int = 0  # operations changing it on the remote now (see Tree.holding)

    @property
    def size(self) -> int:
        if self.staged is not None:
            return self.staged.size
        return self.file.size if self.file else 0

    @property
    def mtime(self) -> float:
        if self.staged is not None:
            return self.staged.mtime
        if self.file is not None:
            value = self.file.metadata.get("mtime")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            return self.file.updated_at
        return self.created

    @property
    def metadata(self) -> dict[str, Any]:
        if self.staged is not None:
            return self.staged.metadata
        return dict(self.file.metadata) if self.file else {}

    @property
    def version(self) -> tuple[str, str | None] | None:
        return (self.file.key, self.file.checksum) if self.file else None


Invalidate = Callable[[pyfuse3.InodeT, str | None], None]
"""(inode, None): drop the inode's cached data; (parent, name): drop a dentry."""
Dropped = Callable[[RemoteFile], None]
"""A version a node stopped showing (replaced, or the node gone): its cached blocks go.
(The one object shown by a second node, a duplicate that took a `~` name, is fetched
again.)"""


class Tree:
    def __init__(
        self,
        remote: Remote,
        root_folder: str,
        dir_cache_time: float,
        invalidate: Invalidate,
        now: float,
        dropped: Dropped = lambda file: None,
    ) -> None:
        self.remote = remote
        self.root_folder = root_folder.strip("/")
        self.dir_cache_time = dir_cache_time
        self.invalidate = invalidate
        self.dropped = dropped
        self.nodes: dict[pyfuse3.InodeT, Node] = {}
        self.started = now  # the time shown on folders (they have none of their own)
        self._next = ROOT + 1
        self._locks: dict[pyfuse3.InodeT, trio.Lock] = {}
        self._gone: dict[str, float] = {}  # keys this mount deleted or replaced: trio time
        self._left: dict[str, float] = {}  # folders this mount removed or moved: trio time
        self.edits = 0  # objects this mount made or deleted: the usage known is stale after one
        root = Node(ROOT, ROOT, "", True, created=now)
        root.lookups = 1  # the kernel never forgets the root
        self.nodes[ROOT] = root

    # -- the table ---------------------------------------------------------------------
    def get(self, inode: pyfuse3.InodeT) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None  # a stale inode

    def new(self, parent: Node, name: str, is_dir: bool, **kw: Any) -> Node:
        kw.setdefault("created", self.started)
        node = Node(pyfuse3.InodeT(self._next), parent.inode, name, is_dir, **kw)
        self._next += 1
        self.nodes[node.inode] = node
        self._place(parent, name, node)
        return node

    def _place(self, parent: Node, name: str, node: Node) -> None:
        """Enter `node` as `name`; an entry a listing or the change feed made there while
        the operation placing it was under way (it showed the result early) gives way."""
        there = self.child(parent, name)
        if there is not None and there is not node:
            self.detach(there, notify=True)
        parent.children[name] = node.inode

    def own(self, node: Node, file: RemoteFile) -> None:
        """This mount made `file` the node's object (an upload, a patch, a move)."""
        if node.file is not None and node.file.key != file.key:
            self.deleted(node.file.key)
        self._show(node, file)
        node.owned_at = trio.current_time()
        self.edits += 1

    def _show(self, node: Node, file: RemoteFile) -> None:
        old = node.file
        node.file = file
        if old is not None and (old.key, old.checksum) != node.version:
            self.dropped(old)

    def deleted(self, key: str) -> None:
        """This mount deleted (or replaced) the object `key`: a listing that still shows it
        is older than that."""
        _mark(self._gone, key)
        self.edits += 1

    def kept(self, key: str) -> None:
        """A delete of `key` announced with `deleted` failed: listings show it again."""
        self._gone.pop(key, None)

    def child(self, parent: Node, name: str) -> Node | None:
        inode = parent.children.get(name)
        return self.nodes[inode] if inode is not None else None

    def detach(self, node: Node, notify: bool = False) -> None:
        """Take a node out of its directory; it lives on while looked up or open."""
        if self._take_out(self.nodes.get(node.parent), node) and notify:
            self.invalidate(node.parent, node.name)
        node.attached = False
        if node.is_dir:
            for inode in list(node.children.values()):
                self.detach(self.nodes[inode])
        self.reap(node)

    def _take_out(self, parent: Node | None, node: Node) -> bool:
        """Drop `node` from its parent's entries, if still there; a folder's path is
        noted as left (a listing asked before now may still show it)."""
        if parent is None or parent.children.get(node.name) != node.inode:
            return False
        if node.is_dir:
            _mark(self._left, self.folder_of(node))
        del parent.children[node.name]
        return True

    def move(self, node: Node, parent: Node, name: str) -> None:
        """Rename an entry (its subtree comes along)."""
        self._take_out(self.nodes.get(node.parent), node)
        node.parent, node.name, node.attached = parent.inode, name, True
        node.owned_at = trio.current_time()  # a listing asked before the move predates it
        self._place(parent, name, node)

    @contextlib.contextmanager
    def holding(self, node: Node) -> Iterator[None]:
        """While an operation changes `node` and what is below it on the remote in several
        steps (a folder's files moved one by one), listings and the change feed leave
        them be: they would show the operation half done."""
        held = list(self.walk(node))
        for n in held:
            n.held += 1
        try:
            yield
        finally:
            for n in held:
                n.held -= 1

    def forget(self, inode: pyfuse3.InodeT, count: int) -> None:
        node = self.nodes.get(inode)
        if node is None:
            return
        node.lookups = max(0, node.lookups - count)
        self.reap(node)

    def reap(self, node: Node) -> None:
        if node.attached or node.lookups or node.opens or node.inode == ROOT:
            return
        if node.staged is not None and node.staged.kept:
            return  # the uploader still needs it; it reaps it when done
        if node.staged is not None:
            node.staged.discard()
        if node.file is not None:
            self.dropped(node.file)
        self.nodes.pop(node.inode, None)
        self._locks.pop(node.inode, None)

    # -- paths -------------------------------------------------------------------------
    def folder_of(self, node: Node) -> str:
        """The remote folder of a directory node."""
        parts: list[str] = []
        while node.inode != ROOT:
            parts.append(node.name)
            node = self.nodes[node.parent]
        if self.root_folder:
            parts.append(self.root_folder)
        return "/".join(reversed(parts))

    def location(self, node: Node) -> tuple[str, str]:
        """(folder, name) of a file node."""
        return self.folder_of(self.nodes[node.parent]), node.name

    def _parts(self, folder: str) -> list[str] | None:
        """The names from the mount's root down to a remote folder; None: not below it."""
        if self.root_folder:
            if folder != self.root_folder and not folder.startswith(self.root_folder + "/"):
                return None
            folder = folder[len(self.root_folder) + 1 :]
        return folder.split("/") if folder else []

    def find_dir(self, folder: str) -> Node | None:
        """The loaded directory node of a remote folder, if any."""
        parts = self._parts(folder)
        if parts is None:
            return None
        node = self.nodes[ROOT]
        for part in parts:
            child = self._subdir(node, part)
            if child is None:
                return None
            node = child
        return node

    async def load_dir(self, folder: str) -> Node | None:
        """The directory node of a remote folder, listed, as a lookup of its path would
        leave it; None: not below the mount's root, or not there."""
        parts = self._parts(folder)
        if parts is None:
            return None
        node = self.nodes[ROOT]
        await self.refresh(node)
        for part in parts:
            child = self._subdir(node, part)
            if child is None:
                return None
            node = child
            await self.refresh(node)
        return node

    def _subdir(self, node: Node, name: str) -> Node | None:
        child = self.child(node, name)
        return child if child is not None and child.is_dir else None

    @staticmethod
    def _ours(node: Node) -> bool:
        """Whether the node's truth is here: unfinished writes, or an operation on it."""
        return node.held > 0 or (node.staged is not None and node.staged.pending)

    def loaded_folders(self) -> list[Node]:
        return [
            n for n in self.nodes.values() if n.is_dir and n.attached and n.listed_at is not None
        ]

    def children(self, node: Node) -> list[Node]:
        return [self.nodes[i] for i in node.children.values()]

    def walk(self, node: Node) -> Iterator[Node]:
        yield node
        for inode in list(node.children.values()):
            yield from self.walk(self.nodes[inode])

    # -- the directory cache -----------------------------------------------------------
    def stale(self, node: Node) -> bool:
        """Offline, a folder is asked for again after as long as after a listing: else each
        lookup of a command would wait out the retries again."""
        if node.listed_at is None:
            return True
        return trio.current_time() - max(node.listed_at, node.offline_at) >= self.dir_cache_time

    @staticmethod
    def expire(node: Node) -> None:
        """List the folder again at its next look; until then, and offline, what it
        shows stays (a folder never listed stays so, and a drop folder, whose listing is
        the mount's own record: listed for good)."""
        if node.listed_at is not None and node.listed_at != math.inf:
            node.listed_at = node.offline_at = -math.inf

    async def refresh(self, node: Node, *, force: bool = False) -> None:
        """List the folder if the cached listing is stale. Offline, a cached listing stays."""
        if not force and not self.stale(node):
            return
        lock = self._locks.setdefault(node.inode, trio.Lock())
        started = trio.current_time()
        async with lock:
            listed = node.listed_at
            if listed is not None and not force and max(listed, node.offline_at) >= started:
                return  # someone listed it (or found the remote down) while we waited
            folder = self.folder_of(node)
            asked = trio.current_time()
            try:
                files, folders = await self._list(folder)
            except Unavailable:
                if node.listed_at is None:
                    raise
                log.warning("listing %r failed; serving the cached listing", folder)
                node.offline_at = trio.current_time()
                return
            except NotFound:
                files, folders = [], []
            self.merge(node, {f.name for f in folders}, files, asked)
            node.listed_at = trio.current_time()

    async def _list(self, folder: str) -> tuple[list[RemoteFile], list[RemoteFolder]]:
        """The folder's files and subfolders, asked for at once: one round trip."""
        files: list[RemoteFile] = []
        folders: list[RemoteFolder] = []

        async def list_files() -> None:
            files.extend(await self.remote.list_folder(folder))

        async def list_folders() -> None:
            folders.extend(await self.remote.list_folders(folder))

        async with open_nursery() as nursery:
            nursery.start_soon(list_files)
            nursery.start_soon(list_folders)
        return files, folders

    def absorb(self, changes: Iterable[Change], asked: float) -> set[str]:
        """Apply changes of the change feed (oldest first, asked for at trio time
        `asked`) to the loaded folders they touch, as a listing would show them then,
        without asking for one: outputs landing one by one in a folder of thousands
        would cost a whole listing per feed interval. A change the tree already shows,
        most often one this mount made itself, changes nothing. Returns the folders
        changed."""
        latest: dict[tuple[str, str, str | None], Change] = {}
        for change in changes:  # a later change of the same thing supersedes (a rename)
            latest[change.kind, change.folder, change.key] = change
        news: dict[str, list[Change]] = {}  # loaded folder -> its changes not shown yet
        for change in latest.values():
            if change.kind == "folder":
                shown_at = self._shown_part(change.folder, change.op)
                if shown_at is not None:
                    news.setdefault(shown_at[0], []).append(shown_at[1])
            elif change.key not in self._gone:  # not a key this mount deleted or replaced
                news.setdefault(change.folder, []).append(change)
        changed: set[str] = set()
        for folder, items in news.items():
            node = self.find_dir(folder)
            if node is None or node.listed_at is None:
                continue  # never listed: its first listing will show all
            children = self.children(node)
            files = {c.file.key: c.file for c in children if c.file is not None}
            folders = {c.name for c in children if c.is_dir}
            new = False
            for change in items:
                if change.kind == "folder":
                    name = change.folder.rpartition("/")[2]
                    (folders.add if change.op == "upsert" else folders.discard)(name)
                    new = True
                elif not _shows(files.get(change.key or ""), change.file):
                    if change.file is None:
                        files.pop(change.key or "", None)
                    else:
                        files[change.key or ""] = change.file
                    new = True
            if new:
                self.merge(node, folders, list(files.values()), asked)
                changed.add(folder)
        return changed

    def _shown_part(self, path: str, op: str) -> tuple[str, Change] | None:
        """A folder created or removed elsewhere, as the change of the loaded folder
        that shows it: (that folder, the change of its subfolder). A folder created
        deep under one not shown yet shows as that one. None: nothing to show."""
        if op != "upsert":
            if self.find_dir(path) is None:
                return None  # not shown (removed here too, or never seen)
            return path.rpartition("/")[0], Change("delete", "folder", path)
        while path and self.find_dir(path) is None:
            parent = path.rpartition("/")[0]
            if self.find_dir(parent) is not None:
                return parent, Change("upsert", "folder", path)
            path = parent
        return None

    def merge(self, node: Node, folders: set[str], files: list[RemoteFile], asked: float) -> None:
        """Apply a listing of `node` asked for at trio time `asked`. What this mount did
        since (an upload landing, a delete) is newer than the listing and stays."""
        for marks in (self._gone, self._left):
            _forget_old(marks, asked)
        # A folder this mount removed or moved after the listing was asked is gone; one
        # created again since (here or elsewhere) shows in the next listing.
        base = self.folder_of(node)
        folders = {name for name in folders if self._left.get(join(base, name), -math.inf) < asked}
        shown = visible_names([f for f in files if f.key not in self._gone], folders)
        ours = {c.file.key for c in self.children(node) if self._ours(c) and c.file is not None}
        for name, inode in list(node.children.items()):
            child = self.nodes[inode]
            if self._ours(child) or child.owned_at >= asked:
                continue  # our own unfinished or newer write is the truth
            if child.is_dir and name in folders:
                continue
            remote = shown.get(name)
            if not child.is_dir and remote is not None:
                if _readers_keep(child, remote):
                    # As after a rename over it: the new object gets its own inode, and
                    # so its own page cache, while an open reader keeps the bytes it
                    # opened (or gets ESTALE once they are gone), never a mix of both.
                    self.detach(child, notify=True)
                    continue
                shown_before = (child.version, child.size, child.mtime)
                self._show(child, remote)
                if (child.version, child.size, child.mtime) != shown_before:
                    self.invalidate(child.inode, None)  # its pages and attributes
                continue
            if child.is_dir and any(self._ours(n) for n in self.walk(child)):
                continue  # a folder we hold unfinished writes in
            self.detach(child, notify=True)
        for name in folders:
            if name not in node.children:
                self.new(node, name, True)
        for name, remote in shown.items():
            if name not in node.children and remote.key not in ours:  # (shown as its own)
                self.new(node, name, False, file=remote)


def _readers_keep(node: Node, remote: RemoteFile) -> bool:
    """Whether `remote`, another object than the node's, replaces a file open only for
    reading. A writer keeps the node: its next write edits the object shown now."""
    return (
        node.opens > node.writers == 0
        and node.version is not None
        and node.version != (remote.key, remote.checksum)
    )


def _shows(shown: RemoteFile | None, changed: RemoteFile | None) -> bool:
    """Whether the file shown (None: no file has that key) already reflects a change to
    it (`changed`: the record after an upsert; None: a delete)."""
    if changed is None or shown is None:
        return changed is shown
    if shown.updated_at != changed.updated_at:
        return shown.updated_at > changed.updated_at
    return _facts(shown) == _facts(changed)


def _facts(file: RemoteFile) -> tuple[Any, ...]:
    """What a listing shows of a file (its signed URL is new in every answer)."""
    return file.name, file.size, file.checksum, dict(file.metadata), file.is_public


def _mark(marks: dict[str, float], key: str) -> None:
    """Note `key` now, and forget the marks no listing asked for from now on can show:
    a mount that deletes without listing (the change feed keeps its folders) still
    keeps only the last GONE_KEPT seconds of them."""
    now = trio.current_time()
    marks.pop(key, None)  # re-inserted: the marks stay in time order, the oldest first
    marks[key] = now
    _forget_old(marks, now)


def _forget_old(marks: dict[str, float], asked: float) -> None:
    """Drop the marks older than any listing asked for at `asked` can still show (from
    the oldest: a bulk delete must not scan every mark per file)."""
    stale = []
    for key, when in marks.items():
        if when >= asked - GONE_KEPT:
            break  # the rest is newer
        stale.append(key)
    for key in stale:
        del marks[key]
