"""Run a mount: pyfuse3 in the process's one trio nursery, with the uploader, the
change feed and kernel notifications as sibling tasks; shutdown goes through it."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pyfuse3
import trio

from ..mountinfo import mount_on
from ..remote.base import Remote
from .operations import Operations
from .options import MountOptions
from .watcher import follow_changes

log = logging.getLogger(__name__)


class Notifier:
    """Kernel cache invalidations, sent from a task of their own: calling them from a
    request handler could deadlock against the kernel."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[int, str | None]](10_000)
        # Set once the kernel's INIT is answered. Before, the kernel holds nothing of this
        # mount to invalidate (and refuses notifications: pyfuse3 logs a traceback).
        self.serving = False

    def __call__(self, inode: pyfuse3.InodeT, name: str | None) -> None:
        if not self.serving:
            return
        try:
            self._send.send_nowait((inode, name))
        except trio.WouldBlock:
            log.debug("invalidation queue full; the kernel's timeouts will catch up")

    async def run(self) -> None:
        async for inode, name in self._receive:
            try:
                if name is None:
                    await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode)
                else:
                    pyfuse3.invalidate_entry_async(inode, name.encode(), ignore_enoent=True)
            except OSError as exc:  # the kernel forgot it already
                log.debug("invalidate %s %r: %s", inode, name, exc)


def fuse_options(options: MountOptions, extra: set[str]) -> set[str]:
    opts = set(pyfuse3.default_options) | {"fsname=stowfs", "subtype=stowfs"} | extra
    if options.allow_other:
        opts.add("allow_other")
    if options.read_only:
        opts.add("ro")
    return opts


KERNEL_READ_AHEAD_KB = 1024


def raise_kernel_read_ahead(mountpoint: Path) -> None:
    """Let the kernel read ahead 1 MiB instead of 128 KiB (bigger, fewer FUSE reads: warm
    reads about double). Needs root; best effort. The device number comes from
    mountinfo: a stat of the mountpoint would be a request to ourselves."""
    try:
        entry = mount_on(mountpoint)
        if entry is not None:
            with open(f"/sys/class/bdi/{entry.device}/read_ahead_kb", "w") as f:
                f.write(str(KERNEL_READ_AHEAD_KB))
    except OSError as exc:
        log.debug("kernel read-ahead left as is: %s", exc)


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


async def _announce(mountpoint: Path, ready: Callable[[], None], notifier: Notifier) -> None:
    """Ready once the kernel's INIT is answered (a stat of the mountpoint is served)
    and the read-ahead raised after it: a file opened before the raise keeps the old
    read-ahead (the kernel copies it at open), and reads at a fraction of the rate."""
    await trio.to_thread.run_sync(os.stat, mountpoint)
    notifier.serving = True
    await trio.to_thread.run_sync(raise_kernel_read_ahead, mountpoint)
    log.info("mounted on %s (pid %d)", mountpoint, os.getpid())
    ready()


async def serve_mount(
    remote: Remote,
    options: MountOptions,
    mountpoint: Path,
    extra_fuse_options: set[str],
    ready: Callable[[], None],
    also: Sequence[Callable[[], Awaitable[None]]] = (),
) -> int:
    """Mount and serve until unmounted, running the tasks `also` beside until the uploads
    pending at the unmount are done (the embedded server's keeper); returns how many
    uploads stay journaled."""
    notifier = Notifier()
    ops = Operations(remote, options, notifier)
    interval = max(0.5, min(options.dir_cache_time / 2, 5.0))
    async with trio.open_nursery() as services:
        for task in also:
            services.start_soon(task)
        async with trio.open_nursery() as nursery:
            await ops.start(nursery)
            pyfuse3.init(ops, str(mountpoint), fuse_options(options, extra_fuse_options))
            try:
                nursery.start_soon(notifier.run)
                nursery.start_soon(_stop_on_signals)
                if remote.capabilities.changes and remote.capabilities.list:
                    nursery.start_soon(follow_changes, ops.tree, interval)
                nursery.start_soon(_announce, mountpoint, ready, notifier)
                await pyfuse3.main()
            finally:
                pyfuse3.close(unmount=True)
                nursery.cancel_scope.cancel()
        pending = len(ops.uploader.pending_nodes())
        if pending:
            log.warning("unmounted with %d upload(s) pending: uploading them now", pending)
        with trio.CancelScope(shield=True):
            left = await ops.shutdown()
        services.cancel_scope.cancel()
    if left:
        log.warning("%d upload(s) left journaled; the next mount resumes them", left)
    elif pending:
        log.warning("all pending uploads finished")
    return left
