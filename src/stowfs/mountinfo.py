"""The kernel's table of mounts (/proc/self/mountinfo), read without touching a mount: a
stat of a FUSE mountpoint is a request to its process, which may be ourselves, dead or
hung."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    device: str  # major:minor
    fs_type: str  # e.g. fuse.stowfs


def mount_on(mountpoint: Path) -> MountEntry | None:
    """The last mount made on `mountpoint`, if any."""
    found = None
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            fields, _, rest = line.partition(b" - ")
            parts = fields.split()
            # Spaces, tabs, newlines and backslashes in paths are written as octal escapes.
            where = _OCTAL.sub(lambda m: bytes([int(m[1], 8)]), parts[4])
            if where == os.fsencode(mountpoint):
                found = MountEntry(os.fsdecode(parts[2]), os.fsdecode(rest.split()[0]))
    return found
