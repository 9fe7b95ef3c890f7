from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio.testing

from tests.fs.harness import FS, mounted_ops
from tests.fs.memremote import MemRemote
from tests.fs.mountfix import Mount, new_mount
from tests.livesrv import LiveServer


@pytest.fixture
def remote() -> MemRemote:
    return MemRemote()


@pytest.fixture
async def fs(remote: MemRemote, tmp_path: Path) -> AsyncIterator[FS]:
    async with mounted_ops(remote, tmp_path / "cache") as fs:
        yield fs


@pytest.fixture
def mount(live_server: LiveServer, tmp_path: Path) -> Iterator[Mount]:
    """A real mount (`stowfs mount -f`) of a new team's storage on tmp_path/mnt."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.start()
    try:
        yield m
    finally:
        m.unmount()


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has waited 0.1 s of real time: not while
    a worker thread runs, as the autojump clock does (under load, by seconds)."""
    return trio.testing.MockClock(autojump_threshold=0.1)
