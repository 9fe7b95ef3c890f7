from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from stowfs.remote import HttpRemote, RetryPolicy, Tuning, open_remote
from tests.livesrv import LiveServer
from tests.remote.faultproxy import FaultProxy

# Quick retries: the tests inject faults, they do not wait for real outages.
FAST = RetryPolicy(base_delay=0.02, max_delay=0.5, max_elapsed=20.0, max_attempts=8)
MiB = 1024 * 1024
# Multipart with the server's smallest parts, so a few MiB make several parts.
SMALL_PARTS = Tuning(single_upload_max=1 * MiB, part_size=5 * MiB, part_parallel=2)

Open = Callable[..., Awaitable[HttpRemote]]


@pytest.fixture(scope="session")
def shared_key(live_server: LiveServer) -> str:
    """One team for the tests that work in a folder of their own (saves key creation)."""
    return live_server.new_key()


@pytest.fixture
def folder() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def open_client(live_server: LiveServer, shared_key: str) -> AsyncIterator[Open]:
    """open_client(dialect="storage", url=None, key=None, **knobs) -> an HttpRemote."""
    opened: list[HttpRemote] = []

    async def make(
        dialect: str = "storage", url: str | None = None, key: str | None = None, **kw: object
    ) -> HttpRemote:
        kw.setdefault("policy", FAST)
        client = await open_remote(
            url or live_server.base_url,
            key or shared_key,
            dialect,
            **kw,  # type: ignore[arg-type]
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.aclose()


@pytest.fixture
async def client(open_client: Open) -> HttpRemote:
    return await open_client()


@pytest.fixture
async def proxy(live_server: LiveServer, nursery: trio.Nursery) -> FaultProxy:
    port = urlsplit(live_server.base_url).port
    assert port is not None
    fault_proxy = FaultProxy(port)
    await nursery.start(fault_proxy.serve)
    return fault_proxy


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[[int, str], Path]:
    def make(size: int, name: str = "data.bin") -> Path:
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        return path

    return make
