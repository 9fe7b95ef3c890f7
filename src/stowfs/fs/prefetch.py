"""Sibling prefetch: files of one folder opened one after another, in name order (a
glob, rsync, tar, os.walk) or inode order (cp -r), get the small files that come next
(one block at most) fetched ahead, several at once. On a fresh mount each is otherwise
one GET awaited in turn: `cp -r` out of the mount waited on every one.

Nothing is fetched until two opens in a row followed the order; the distance ahead
then doubles with each open that follows it, and any other open starts over. Bigger
files are left alone: their own read-ahead starts at once, and a reader of their
headers only (`file`, a thumbnailer) fetches only what it reads.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from .blockcache import version_id
from .reader import Reader
from .staging import Spawn
from .tree import Node, Tree

log = logging.getLogger(__name__)

MAX_AHEAD = 16  # files
FOLDERS = 8  # whose orders are kept (the most recently read)
PARALLEL = 6  # prefetch GETs at a time (the reader's own take up to 8: some stay free)
ORDERS = ("name", "inode")


@dataclass
class _Orders:
    """A folder's files in each order (sorted lists: a file's place is a bisection)."""

    key: float | None  # the listing they were taken from (its trio time)
    names: list[str]  # sorted
    by_name: list[pyfuse3.InodeT]  # the inodes of `names`
    by_inode: list[pyfuse3.InodeT]  # sorted

    def files(self, order: str) -> list[pyfuse3.InodeT]:
        return self.by_name if order == "name" else self.by_inode

    def place(self, order: str, node: Node) -> int:
        keys: list[Any] = self.names if order == "name" else self.by_inode
        key = node.name if order == "name" else node.inode
        i = bisect.bisect_left(keys, key)
        return i if i < len(keys) and keys[i] == key else -1


@dataclass
class _Run:
    """The last file opened in a folder: where it stands in each order, and for how
    many opens in a row each order was followed."""

    place: dict[str, int]
    streak: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ORDERS, 0))
    ahead_to: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ORDERS, 0))


class Prefetcher:
    def __init__(self, tree: Tree, reader: Reader, spawn: Spawn) -> None:
        self.tree = tree
        self.reader = reader
        self.spawn = spawn
        self._orders: dict[pyfuse3.InodeT, _Orders] = {}
        self._runs: dict[pyfuse3.InodeT, _Run] = {}
        self._limiter = trio.CapacityLimiter(PARALLEL)

    def opened(self, node: Node) -> None:
        """A remote file was opened for reading."""
        folder = self.tree.nodes.get(node.parent)
        if folder is None:
            return
        orders = self._orders_of(folder, node)
        place = {order: orders.place(order, node) for order in ORDERS}
        run = self._runs.get(folder.inode)
        self._runs[folder.inode] = new = _Run(place)
        if run is None:
            return
        for order in ORDERS:
            if run.place[order] < 0 or place[order] != run.place[order] + 1:
                continue
            new.streak[order] = streak = run.streak[order] + 1
            new.ahead_to[order] = start = max(run.ahead_to[order], place[order] + 1)
            if streak >= 2:
                end = min(place[order] + 1 + 2**streak, place[order] + 1 + MAX_AHEAD)
                new.ahead_to[order] = max(start, end)
                for inode in orders.files(order)[start:end]:
                    self._fetch(inode)

    def _orders_of(self, folder: Node, node: Node) -> _Orders:
        """Sorted again after each listing, or for a file the last sort did not have:
        not on every open in a folder that files are being written to meanwhile."""
        orders = self._orders.get(folder.inode)
        if orders is None or orders.key != folder.listed_at or orders.place("name", node) < 0:
            files = sorted(
                (name, inode)
                for name, inode in folder.children.items()
                if (child := self.tree.nodes.get(inode)) is not None and not child.is_dir
            )
            by_name = [inode for _, inode in files]
            names = [name for name, _ in files]
            orders = _Orders(folder.listed_at, names, by_name, sorted(by_name))
        self._orders.pop(folder.inode, None)
        self._orders[folder.inode] = orders  # the most recent last
        while len(self._orders) > FOLDERS:
            oldest = next(iter(self._orders))
            del self._orders[oldest]
            self._runs.pop(oldest, None)
        return orders

    def _fetch(self, inode: pyfuse3.InodeT) -> None:
        node = self.tree.nodes.get(inode)
        if node is None or node.file is None or node.staged is not None:
            return
        file = node.file
        if not 0 < file.size <= self.reader.block_size:
            return
        if self.reader.cache.has(version_id(file), 0):
            return

        async def fetch() -> None:
            async with self._limiter:
                try:
                    await self.reader.block(file, 0)
                except Exception as exc:  # best effort: the reader's own fetch reports
                    log.debug("prefetch of %s failed: %s", file.key, exc)

        self.spawn(fetch)
