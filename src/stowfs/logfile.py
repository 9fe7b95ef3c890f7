"""The log file of a process in the background: rotated by size, and its standard
output and error follow it, so what Python or a library prints outside logging (a
traceback at a crash) lands in the current file, not in one rotated away."""

from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
LOG_BYTES = 1 << 20
LOG_BACKUPS = 2  # mount.log.1 and mount.log.2: a long-lived mount keeps at most 3 MiB


class FollowedLog(RotatingFileHandler):
    """A rotating log file that the descriptors `fds` point at, after each rotation."""

    def __init__(self, path: Path, fds: tuple[int, ...] = (1, 2)) -> None:
        super().__init__(path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
        self.fds = fds
        self._follow()

    def doRollover(self) -> None:
        super().doRollover()
        self._follow()

    def _follow(self) -> None:
        if self.stream is None:
            self.stream = self._open()
        self.stream.flush()
        for fd in self.fds:
            os.dup2(self.stream.fileno(), fd)


def log_to(path: Path) -> None:
    """Send the root logger's records to `path` instead of its other handlers (stderr,
    which `path` then becomes too)."""
    root = logging.getLogger()
    handler = FollowedLog(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
