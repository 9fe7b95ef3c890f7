"""A file's MD5, hashed in a worker thread: the `checksum` the services keep."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

_CHUNK = 4 * 1024 * 1024


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def md5_file(path: Path) -> str:
    return await trio.to_thread.run_sync(_md5_file, path, abandon_on_cancel=True)
