"""What a mount is asked to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class MountOptions:
    cache_dir: Path
    folder: str = ""
    read_only: bool = False
    write_back: float | None = None  # seconds after close; None: upload on close
    cache_max_size: int = 1024 * MiB
    dir_cache_time: float = 30.0
    allow_other: bool = False
    uid: int = 0
    gid: int = 0
    umask: int = 0o022
    block_size: int = 1 * MiB
    read_ahead: int = 64  # blocks, the largest read-ahead window
    # Other namespaces than user.*: "enodata" (no such attribute, design.md) or
    # "enotsup" (not supported, as a local filesystem without ACLs or labels answers).
    other_xattrs: str = "enodata"
