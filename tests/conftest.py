from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.livesrv import LiveServer, start_server


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api_key(live_server: LiveServer) -> str:
    """A key of a new team (plan pro): every test starts with empty storage."""
    return live_server.new_key()


@pytest.fixture
async def api(live_server: LiveServer, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=live_server.base_url, headers={"X-API-Key": api_key}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    return tmp_path
