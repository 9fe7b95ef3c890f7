"""The background log file: rotated by size, with the raw descriptors following it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from stowfs.logfile import LOG_BACKUPS, FollowedLog


def test_the_log_rotates_and_raw_writes_follow_the_current_file(tmp_path: Path) -> None:
    path = tmp_path / "mount.log"
    raw = os.open(os.devnull, os.O_WRONLY)  # stands for stderr
    handler = FollowedLog(path, fds=(raw,))
    handler.maxBytes = 1000
    logger = logging.Logger("probe")
    logger.addHandler(handler)
    try:
        os.write(raw, b"before any record\n")
        for number in range(100):
            logger.warning("record %03d %s", number, "x" * 40)
        os.write(raw, b"a traceback after the last rotation\n")
    finally:
        handler.close()
        os.close(raw)
    backups = sorted(p.name for p in tmp_path.iterdir())
    assert backups == ["mount.log", *(f"mount.log.{n}" for n in range(1, LOG_BACKUPS + 1))]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    current = path.read_text()
    assert "record 099" in current
    assert current.endswith("a traceback after the last rotation\n")
    assert "before any record" not in "".join(p.read_text() for p in tmp_path.iterdir())
