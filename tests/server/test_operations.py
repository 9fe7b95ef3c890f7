"""The server as a process: rate limits, the sweeper, shared data dirs, crashes, fuzzing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from stowfs.server import files
from stowfs.server.config import ServerConfig
from stowfs.server.db import MIGRATIONS, connect, init_schema
from stowfs.server.state import ServerState
from tests.livesrv import LiveServer, create_key, start_server
from tests.server.flows import upload_post


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    return tmp_path / "srv"


@pytest.fixture
def stoppers() -> Iterator[list[LiveServer]]:
    started: list[LiveServer] = []
    yield started
    for server in started:
        server.stop()


def client(server: LiveServer, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.base_url, headers={"X-API-Key": key}, timeout=30)


async def poll(check: object, deadline: float = 20.0) -> None:
    """Await `check()` until it is truthy or the deadline passes."""
    assert callable(check)
    with trio.fail_after(deadline):
        while not await check():
            await trio.sleep(0.05)


async def test_rate_limit(server_dir: Path, stoppers: list[LiveServer]) -> None:
    server = start_server(server_dir, "--rate-limit", "5/3600")
    stoppers.append(server)
    key = server.new_key()
    async with client(server, key) as api:
        statuses = []
        for _ in range(6):
            r = await api.get("/files/storage")
            statuses.append(r.status_code)
            assert r.headers["x-ratelimit-limit"] == "5"
            assert int(r.headers["x-ratelimit-reset"]) > time.time()
        assert statuses == [200] * 5 + [429]
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "RATE_LIMITED"
    # Another key has its own budget.
    async with client(server, server.new_key()) as other:
        assert (await other.get("/files/storage")).status_code == 200


async def test_sweeper_retention_and_legal_hold(
    server_dir: Path, stoppers: list[LiveServer]
) -> None:
    server = start_server(server_dir, "--sweep-interval", "0.2")
    stoppers.append(server)
    async with client(server, server.new_key()) as api:
        doomed = await upload_post(api, "tmp.txt", b"t", metadata={"retention_days": 0})
        held = await upload_post(
            api, "held.txt", b"h", metadata={"retention_days": 0, "legal_hold": True}
        )
        kept = await upload_post(api, "kept.txt", b"k")

        def objects() -> int:
            return sum(p.is_file() for p in (server_dir / "blobs" / "objects").rglob("*"))

        async def doomed_gone() -> bool:
            r = await api.get(f"/files/storage/file/{doomed['object_key']}")
            return r.status_code == 404 and objects() == 2  # its bytes go after its row

        await poll(doomed_gone)
        assert (await api.get(f"/files/storage/file/{held['object_key']}")).status_code == 200
        assert (await api.get(f"/files/storage/file/{kept['object_key']}")).status_code == 200


async def test_abandoned_pending_uploads_are_swept(server_dir: Path) -> None:
    create_key(server_dir, "t")
    state = ServerState.open(ServerConfig(data_dir=server_dir))
    try:
        from stowfs.server.auth import lookup

        key_hash = await state.db.read(
            lambda c: c.execute("SELECT key_hash FROM api_keys").fetchone()[0]
        )
        who = await state.db.read(lambda c: lookup(c, key_hash))
        assert who is not None
        await state.db.write(
            lambda c: files.insert_pending(
                c,
                who,
                folder="",
                filename="never.bin",
                metadata={},
                upload_kind="post",
                max_size=10,
                upload_ip=None,
            )
        )
        count = "SELECT COUNT(*) FROM files"
        assert await state.db.read(lambda c: c.execute(count).fetchone()[0]) == 1
        # Not yet: the upload URL is valid for 7 days.
        await state.db.write(lambda c: files.sweep(c, time.time() + 86_400))
        assert await state.db.read(lambda c: c.execute(count).fetchone()[0]) == 1
        await state.db.write(lambda c: files.sweep(c, time.time() + 8 * 86_400))
        assert await state.db.read(lambda c: c.execute(count).fetchone()[0]) == 0
    finally:
        state.db.close()


async def test_two_processes_share_a_data_dir(server_dir: Path, stoppers: list[LiveServer]) -> None:
    one = start_server(server_dir)
    two = start_server(server_dir)
    stoppers += [one, two]
    key = one.new_key()
    async with client(one, key) as a, client(two, key) as b:
        results: list[dict[str, object]] = []

        async def put(api: httpx.AsyncClient, i: int) -> None:
            results.append(await upload_post(api, f"f{i}.bin", b"x" * i, "shared"))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(put, a if i % 2 else b, i)
        assert len({r["object_key"] for r in results}) == 20
        for api in (a, b):
            usage = (await api.get("/files/storage")).json()
            assert usage["file_count"] == 20
            assert usage["total_bytes"] == sum(range(20))
        # A URL signed by one process is honoured by the other.
        rec = results[0]
        url = str(rec["file_url"]).replace(one.base_url, two.base_url)
        async with httpx.AsyncClient() as anon:
            assert (await anon.get(url)).status_code == 200


async def test_kill_mid_upload_leaves_nothing_visible(
    server_dir: Path, stoppers: list[LiveServer]
) -> None:
    server = start_server(server_dir)
    stoppers.append(server)
    key = server.new_key()
    data = os.urandom(4 * 1024 * 1024)
    async with client(server, key) as api:
        grant = (await api.post("/files/upload-url", json={"filename": "big.bin"})).json()
    boundary = "b0undary"
    head = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in grant["upload_fields"].items()
        )
        + (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"'
            "\r\n\r\n"
        ).encode()
    )
    tail = f"\r\n--{boundary}--\r\n".encode()
    url = httpx.URL(grant["upload_url"])
    request = (
        f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + len(data) + len(tail)}\r\n\r\n"
    ).encode()
    stream = await trio.open_tcp_stream(url.host, url.port or 80)
    async with stream:
        await stream.send_all(request + head + data[: len(data) // 2])
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
    restarted = start_server(server_dir)
    stoppers.append(restarted)
    async with client(restarted, key) as api:
        assert (await api.get("/files/storage/files")).json()["total_count"] == 0
        assert (await api.get("/files/storage")).json()["total_bytes"] == 0
        # The same grant still works after the crash: the upload can be redone.
        upload_url = grant["upload_url"].replace(server.base_url, restarted.base_url)
        r = await api.post(
            upload_url, data=grant["upload_fields"], files={"file": ("big.bin", data)}
        )
        assert r.status_code == 201
        assert (await api.get("/files/storage")).json()["total_bytes"] == len(data)
    objects = [p for p in (server_dir / "blobs" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1
    assert objects[0].read_bytes() == data


def test_openapi_fuzz_has_no_server_errors(live_server: LiveServer, tmp_path: Path) -> None:
    key = live_server.new_key()
    root = live_server.base_url.removesuffix("/v1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{live_server.base_url}/openapi.json",
            "--url",
            root,
            "-H",
            f"X-API-Key: {key}",
            "--checks",
            "not_a_server_error",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "30",
            "--max-time",
            "60",
            "--suppress-health-check",
            "all",
            # One worker: CPython 3.11.7's ast.parse (used by hypothesis) is not
            # thread-safe ("AST constructor recursion depth mismatch").
            "-w",
            "1",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "passed" in result.stdout


async def test_usage_counters_match_the_files(live_server: LiveServer) -> None:
    key = live_server.new_key()
    async with client(live_server, key) as api:
        recs = [await upload_post(api, f"u{i}.bin", b"x" * (10 * i), "u") for i in range(1, 6)]
        await api.delete("/files/storage/file", params={"object_key": recs[0]["object_key"]})
        await api.post(
            "/files/storage/file/move", json={"object_key": recs[1]["object_key"], "folder": "v"}
        )
        await api.delete("/files/storage/folder", params={"folder": "v", "recursive": "true"})
        await api.post("/files/upload-url", json={"filename": "pending.bin"})
        usage = (await api.get("/files/storage")).json()
    assert (usage["total_bytes"], usage["file_count"]) == (30 + 40 + 50, 3)
    conn = connect(live_server.data_dir / "meta.db")
    try:
        team = str(recs[2]["object_key"]).split("/")[0]
        recount = conn.execute(
            "SELECT SUM(size), COUNT(*) FROM files WHERE team_id = ? AND state = 'stored'",
            (team,),
        ).fetchone()
        assert tuple(recount) == (120, 3)
    finally:
        conn.close()


def test_migration_backfills_usage(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    init_schema(path)
    conn = connect(path)
    try:
        # A version-0 data dir: files, but no usage table yet.
        conn.executescript("DROP TABLE usage; PRAGMA user_version = 0;")
        conn.execute(
            "INSERT INTO files (file_id, team_id, user_id, object_key, folder, filename,"
            " extension, content_type, size, state, created_at, updated_at, upload_kind)"
            " VALUES ('f1', 't1', 'u', 't1/a', '', 'a', '', 'x', 7, 'stored', '', '', 'post')"
        )
    finally:
        conn.close()
    init_schema(path)
    conn = connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        row = conn.execute("SELECT bytes, files FROM usage WHERE team_id = 't1'").fetchone()
        assert tuple(row) == (7, 1)
    finally:
        conn.close()
