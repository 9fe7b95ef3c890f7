"""Remote changes made elsewhere: follow the server's change feed and apply what it
says to the loaded folders (the merge invalidates the kernel's entries and pages); our
own changes come back in it too and change nothing. Without a feed, listings simply
expire after --dir-cache-time, which stays the backstop with one."""

from __future__ import annotations

import logging

import trio

from ..errors import Conflict, StowfsError
from ..remote.base import Change
from .tree import Tree

log = logging.getLogger(__name__)


async def follow_changes(tree: Tree, interval: float) -> None:
    remote = tree.remote
    cursor: str | None = None
    relist = False  # the feed lost track (410): list the loaded folders again
    while True:
        try:
            if cursor is None:
                cursor = (await remote.changes(None)).cursor
            elif not relist:
                asked = trio.current_time()
                changes: list[Change] = []
                while True:
                    batch = await remote.changes(cursor)
                    cursor = batch.cursor
                    changes.extend(batch.changes)
                    if not batch.has_more:
                        break
                tree.absorb(changes, asked)
            if relist:  # after taking the new cursor: no change falls between
                for node in tree.loaded_folders():
                    await tree.refresh(node, force=True)
                relist = False
        except Conflict as exc:  # 410: the cursor is older than the history the feed keeps
            log.warning("change feed: %s; listing the loaded folders again", exc)
            cursor, relist = None, True
        except StowfsError as exc:
            log.info("change feed: %s", exc)
        await trio.sleep(interval)
