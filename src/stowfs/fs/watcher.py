"""Remote changes made elsewhere: follow the server's change feed and re-list the
loaded folders it names with changes the tree does not show yet (the merge invalidates
the kernel's entries and pages); our own changes come back in the feed too.
Without a feed, listings simply expire after --dir-cache-time."""

from __future__ import annotations

import logging

import trio

from ..errors import StowfsError
from ..remote.base import Change
from .tree import Tree

log = logging.getLogger(__name__)


async def follow_changes(tree: Tree, interval: float) -> None:
    remote = tree.remote
    cursor: str | None = None
    while True:
        try:
            if cursor is None:
                cursor = (await remote.changes(None)).cursor
            else:
                changes: list[Change] = []
                while True:
                    batch = await remote.changes(cursor)
                    cursor = batch.cursor
                    changes.extend(batch.changes)
                    if not batch.has_more:
                        break
                for folder in sorted(tree.unseen(changes)):
                    node = tree.find_dir(folder)
                    if node is not None and node.listed_at is not None:
                        await tree.refresh(node, force=True)
        except StowfsError as exc:
            log.info("change feed: %s", exc)
        await trio.sleep(interval)
