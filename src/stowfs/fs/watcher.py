"""Remote changes made elsewhere: follow the server's change feed and apply what it
says to the loaded folders (the merge invalidates the kernel's entries and pages); our
own changes come back in it too and change nothing. Without a feed, listings simply
expire after --dir-cache-time, which stays the backstop with one."""

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
                asked = trio.current_time()
                changes: list[Change] = []
                while True:
                    batch = await remote.changes(cursor)
                    cursor = batch.cursor
                    changes.extend(batch.changes)
                    if not batch.has_more:
                        break
                tree.absorb(changes, asked)
        except StowfsError as exc:
            log.info("change feed: %s", exc)
        await trio.sleep(interval)
