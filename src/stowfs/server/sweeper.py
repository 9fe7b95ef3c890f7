"""Periodic clean-up: retention, expired image URLs, abandoned uploads, old feed rows."""

from __future__ import annotations

import time

import trio

from . import files
from .config import DAY, UPLOAD_URL_LIFETIME
from .state import ServerState

ORPHAN_PARTS_AGE = 3600  # seconds; see files.cleanup_parts


async def sweep_once(state: ServerState) -> int:
    now = time.time()
    # Before files.sweep: removing a pending row would drop its multipart row too.
    uploads = await state.db.write(lambda c: files.sweep_multipart(c, now))
    for upload_id in uploads:
        await trio.to_thread.run_sync(state.blobs.remove_parts, upload_id)
    gone = await state.write_then_remove(lambda c: files.sweep(c, now))
    await state.db.write(
        lambda c: files.prune_changes(c, now - state.config.change_retention_days * DAY)
    )
    await trio.to_thread.run_sync(files.cleanup_temp, state.blobs, now - UPLOAD_URL_LIFETIME)
    known = await state.db.read(files.multipart_ids)
    await trio.to_thread.run_sync(files.cleanup_parts, state.blobs, known, now - ORPHAN_PARTS_AGE)
    return len(gone)


async def run(state: ServerState) -> None:
    while True:
        await sweep_once(state)
        await trio.sleep(state.config.sweep_interval)
