"""Write-only dialects mount as a drop folder listed from the mount's own record."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pyfuse3
import pytest

from tests.fs.harness import mounted_ops
from tests.fs.memremote import CAPS, MemRemote

WRITE_ONLY = dataclasses.replace(
    CAPS,
    dialect="images",
    list=False,
    metadata=False,
    delete=False,
    mkdir=False,
    rmdir=False,
    move=False,
    server_move=False,
    changes=False,
    usage=False,
    usage_limits=False,
    renewable_urls=False,
)


async def test_drop_folder(tmp_path: Path) -> None:
    remote = MemRemote(WRITE_ONLY)
    async with mounted_ops(remote, tmp_path / "c") as fs:
        assert await fs.listdir() == []
        await fs.write_file("one.png", b"1")
        await fs.write_file("two.png", b"2")
        await fs.rename("two.png", "deux.png")  # our record only
        assert await fs.listdir() == ["deux.png", "one.png"]
        assert (await fs.getxattr("one.png", "user.stowfs.url")).startswith(b"mem://")
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.mkdir("sub")
        assert exc.value.errno == errno.EPERM
        await fs.write_file("one.png", b"one again")  # a new upload; the old one stays
        assert await fs.read_file("one.png") == b"one again"
    async with mounted_ops(remote, tmp_path / "c") as fs:  # the record outlives the mount
        assert await fs.listdir() == ["deux.png", "one.png"]
        await fs.unlink("deux.png")
        assert await fs.listdir() == ["one.png"]
    assert remote.calls["list_folder"] == remote.calls["list_folders"] == 0
    assert remote.calls["delete"] == 0
    assert len(remote.files) == 3
