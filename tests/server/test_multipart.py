"""Dialect `presign`, multipart: initiate, presign parts, PUT parts, complete / abort."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from stowfs.server.config import MB, ServerConfig
from stowfs.server.serve import bind, serve
from tests.livesrv import LiveServer, create_key, start_server
from tests.server.test_presign import (
    chunked,
    listed_keys,
    put,
    server_db,
    signer,
    wait_until,
    with_query,
)
from tests.server.test_storage import error_code


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def initiate(api: httpx.AsyncClient, name: str = "big.bin", **extra: Any) -> dict[str, Any]:
    r = await api.post("/uploads/multipart/initiate", json={"file_name": name} | extra)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def part_urls(api: httpx.AsyncClient, upload_id: str, **which: Any) -> dict[int, str]:
    r = await api.post("/uploads/multipart/presign-parts", json={"upload_id": upload_id} | which)
    assert r.status_code == 200, r.text
    return {p["part_number"]: p["upload_url"] for p in r.json()["parts"]}


async def put_part(url: str, data: bytes) -> str:
    r = await put(url, data, {})
    assert r.status_code == 200, r.text
    etag: str = r.headers["ETag"]
    assert etag == f'"{md5(data)}"'
    return etag


async def put_parts(urls: dict[int, str], chunks: list[bytes]) -> dict[int, str]:
    """Part n (1-based) is chunks[n - 1]; all sent at once. Returns their ETags."""
    etags: dict[int, str] = {}

    async def send(number: int) -> None:
        etags[number] = await put_part(urls[number], chunks[number - 1])

    async with trio.open_nursery() as nursery:
        for number in urls:
            nursery.start_soon(send, number)
    return etags


async def complete(
    api: httpx.AsyncClient, upload_id: str, parts: list[tuple[int, str]]
) -> httpx.Response:
    return await api.post(
        "/uploads/multipart/complete",
        json={"upload_id": upload_id, "parts": [{"part_number": n, "etag": e} for n, e in parts]},
    )


def parts_dir(live_server: LiveServer, upload_id: str) -> Path:
    return live_server.data_dir / "blobs" / "parts" / upload_id


async def test_multipart_flow(api: httpx.AsyncClient, live_server: LiveServer) -> None:
    up = await initiate(
        api, "video.bin", folder="renders", metadata={"project": "m"}, content_type="video/mp4"
    )
    assert up["file_key"] == up["object_key"]
    assert up["max_parts"] >= 4
    assert up["part_size_min"] <= up["part_size_max"]
    size = up["part_size_min"]
    chunks = [os.urandom(size) for _ in range(3)] + [os.urandom(1234)]
    urls = await part_urls(api, up["upload_id"], parts=len(chunks))
    assert sorted(urls) == [1, 2, 3, 4]

    etags = await put_parts(urls, chunks)
    assert any(parts_dir(live_server, up["upload_id"]).iterdir())
    assert await listed_keys(api) == []  # nothing visible before complete

    listed = sorted(etags.items())
    r = await complete(api, up["upload_id"], listed)
    assert r.status_code == 200, r.text
    whole = b"".join(chunks)
    result = r.json()
    assert result["file_key"] == result["object_key"] == up["object_key"]
    assert result["size"] == len(whole)
    assert result["checksum"] == md5(whole)
    s3_etag = hashlib.md5(b"".join(bytes.fromhex(md5(c)) for c in chunks)).hexdigest()
    assert result["etag"] == f'"{s3_etag}-4"'
    assert not parts_dir(live_server, up["upload_id"]).exists()

    record = (await api.get(f"/files/storage/file/{up['object_key']}")).json()
    assert record["folder"] == "renders"
    assert record["content_type"] == "video/mp4"
    assert record["metadata"]["project"] == "m"
    assert (await api.get(record["file_url"])).content == whole

    # A retried complete answers the same object; the upload takes no more parts.
    again = await complete(api, up["upload_id"], listed)
    assert again.status_code == 200
    assert again.json() == result
    assert (await api.get("/files/storage/files")).json()["total_count"] == 1
    r = await api.post(
        "/uploads/multipart/presign-parts", json={"upload_id": up["upload_id"], "parts": 1}
    )
    assert r.status_code == 404
    r = await put(urls[1], b"late", {})
    assert r.status_code == 404
    assert error_code(r) == "NO_SUCH_UPLOAD"


async def test_parts_of_odd_sizes(api: httpx.AsyncClient) -> None:
    """Parts that do not fall on the server's buffer sizes, sent in parallel."""
    size = (await initiate(api))["part_size_min"]
    up = await initiate(api, "odd.bin")
    chunks = [os.urandom(n) for n in (size + 4 * MB + 3, size + 1, 777)]
    urls = await part_urls(api, up["upload_id"], parts=len(chunks))
    etags = await put_parts(urls, chunks)
    r = await complete(api, up["upload_id"], sorted(etags.items()))
    assert r.status_code == 200, r.text
    whole = b"".join(chunks)
    assert r.json()["size"] == len(whole)
    assert r.json()["checksum"] == md5(whole)
    record = (await api.get(f"/files/storage/file/{up['object_key']}")).json()
    assert record["checksum"] == md5(whole)
    assert (await api.get(record["file_url"])).content == whole


@pytest.fixture
def small_parts(tmp_path: Path) -> tuple[ServerConfig, str]:
    """Settings of a server taking parts of at most 2 MiB, and a key for it."""
    config = ServerConfig(data_dir=tmp_path / "srv", part_min_bytes=MB, part_max_bytes=2 * MB)
    return config, create_key(config.data_dir, "t")


async def test_part_over_the_limit_streamed(small_parts: tuple[ServerConfig, str]) -> None:
    """No Content-Length (chunked): 413 once the body passes the limit, and the bytes
    received so far are dropped."""
    config, key = small_parts
    temp = config.data_dir / "blobs" / "tmp"
    sock = bind("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve, config, sock)
        sock.detach()  # hypercorn serves this descriptor now, and closes it
        async with httpx.AsyncClient(
            base_url=base_url, headers={"X-API-Key": key}, timeout=30
        ) as api:
            up = await initiate(api)
            urls = await part_urls(api, up["upload_id"], part_numbers=[1, 2])
            r = await put(urls[1], chunked(os.urandom(2 * MB + 1)), {})
            assert r.status_code == 413
            assert error_code(r) == "TOO_LARGE"
            assert not any(temp.iterdir())
            await put_part(urls[2], os.urandom(2 * MB))  # at the limit
            assert not any(temp.iterdir())
        nursery.cancel_scope.cancel()


async def test_concurrent_completes_make_one_object(api: httpx.AsyncClient) -> None:
    up = await initiate(api)
    urls = await part_urls(api, up["upload_id"], part_numbers=[1])
    etag = await put_part(urls[1], b"only part")
    results: list[httpx.Response] = []

    async def run() -> None:
        results.append(await complete(api, up["upload_id"], [(1, etag)]))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(run)
    assert [r.status_code for r in results] == [200] * 6
    assert len({r.text for r in results}) == 1
    assert await listed_keys(api) == [up["object_key"]]


async def test_part_replaced(api: httpx.AsyncClient) -> None:
    up = await initiate(api, "r.txt")
    urls = await part_urls(api, up["upload_id"], part_numbers=[1])
    old = await put_part(urls[1], b"old bytes")
    new = await put_part(urls[1], b"new bytes!")
    r = await complete(api, up["upload_id"], [(1, old)])
    assert r.status_code == 400
    assert error_code(r) == "INVALID_PART"
    r = await complete(api, up["upload_id"], [(1, new.strip('"'))])  # quotes optional
    assert r.status_code == 200
    record = (await api.get(f"/files/storage/file/{up['object_key']}")).json()
    assert (await api.get(record["file_url"])).content == b"new bytes!"


async def test_part_too_small(api: httpx.AsyncClient) -> None:
    up = await initiate(api)
    urls = await part_urls(api, up["upload_id"], parts=2)
    etags = [(n, await put_part(urls[n], b"k" * 1024)) for n in (1, 2)]
    r = await complete(api, up["upload_id"], etags)
    assert r.status_code == 400
    assert error_code(r) == "ENTITY_TOO_SMALL"
    assert r.json()["error"]["part_number"] == 1
    # The last part alone may be small.
    r = await complete(api, up["upload_id"], etags[1:])
    assert r.status_code == 200
    assert r.json()["size"] == 1024


async def test_invalid_part_lists(api: httpx.AsyncClient) -> None:
    up = await initiate(api)
    urls = await part_urls(api, up["upload_id"], parts=2)
    e1 = await put_part(urls[1], b"one")
    wrong = '"' + "0" * 32 + '"'
    cases = {
        "INVALID_PART": [
            [],
            [(1, wrong)],
            [(1, e1), (2, e1)],  # part 2 never sent
            [(1, "not-an-etag")],
        ],
        "INVALID_PART_ORDER": [[(2, e1), (1, e1)], [(1, e1), (1, e1)]],
    }
    for code, lists in cases.items():
        for parts in lists:
            r = await complete(api, up["upload_id"], parts)
            assert r.status_code == 400, parts
            assert error_code(r) == code, parts
    assert await listed_keys(api) == []


async def test_presign_parts_validation(api: httpx.AsyncClient) -> None:
    up = await initiate(api)
    body: dict[str, Any]
    for body in (
        {},
        {"parts": 2, "part_numbers": [1]},
        {"parts": 0},
        {"parts": up["max_parts"] + 1},
        {"part_numbers": [0]},
        {"part_numbers": [up["max_parts"] + 1]},
        {"part_numbers": []},
    ):
        r = await api.post(
            "/uploads/multipart/presign-parts", json={"upload_id": up["upload_id"]} | body
        )
        assert r.status_code == 400, body
        error_code(r)
    urls = await part_urls(api, up["upload_id"], part_numbers=[7, up["max_parts"]])
    assert sorted(urls) == [7, up["max_parts"]]


async def test_other_team_gets_404(api: httpx.AsyncClient, live_server: LiveServer) -> None:
    up = await initiate(api)
    urls = await part_urls(api, up["upload_id"], parts=1)
    etag = await put_part(urls[1], b"mine")
    async with httpx.AsyncClient(
        base_url=live_server.base_url, headers={"X-API-Key": live_server.new_key()}, timeout=30
    ) as other:
        for path, body in (
            ("presign-parts", {"upload_id": up["upload_id"], "parts": 1}),
            (
                "complete",
                {"upload_id": up["upload_id"], "parts": [{"part_number": 1, "etag": etag}]},
            ),
            ("abort", {"upload_id": up["upload_id"]}),
        ):
            r = await other.post(f"/uploads/multipart/{path}", json=body)
            assert r.status_code == 404, path
            assert error_code(r) == "NO_SUCH_UPLOAD"
    r = await complete(api, up["upload_id"], [(1, etag)])
    assert r.status_code == 200


async def test_abort(api: httpx.AsyncClient, live_server: LiveServer) -> None:
    up = await initiate(api, folder="tmp")
    urls = await part_urls(api, up["upload_id"], parts=2)
    etag = await put_part(urls[1], b"abandoned")
    assert parts_dir(live_server, up["upload_id"]).exists()
    r = await api.post("/uploads/multipart/abort", json={"upload_id": up["upload_id"]})
    assert r.status_code == 200
    assert not parts_dir(live_server, up["upload_id"]).exists()
    assert (await put(urls[2], b"more", {})).status_code == 404
    assert (await complete(api, up["upload_id"], [(1, etag)])).status_code == 404
    r = await api.post("/uploads/multipart/abort", json={"upload_id": up["upload_id"]})
    assert r.status_code == 404
    assert await listed_keys(api) == []


async def test_part_url_signature(api: httpx.AsyncClient, live_server: LiveServer) -> None:
    up = await initiate(api)
    url = (await part_urls(api, up["upload_id"], part_numbers=[3]))[3]
    sig = parse_qs(urlsplit(url).query)["X-Stowfs-Signature"][0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    for bad in (
        with_query(url, **{"X-Stowfs-Signature": flipped}),
        url.replace("/3?", "/4?"),  # another part number under this signature
    ):
        r = await put(bad, b"data", {})
        assert r.status_code == 403
        assert error_code(r) == "SIGNATURE_MISMATCH"
    past = int(time.time()) - 5
    expired = with_query(
        url,
        **{
            "X-Stowfs-Expires": str(past),
            "X-Stowfs-Signature": signer(live_server).sign("PART", up["upload_id"], 3, past),
        },
    )
    r = await put(expired, b"data", {})
    assert r.status_code == 403
    assert error_code(r) == "URL_EXPIRED"


async def test_initiate_quota_and_limits(live_server: LiveServer) -> None:
    """A free team (1 GB): a declared size over the quota is refused before any byte."""
    async with httpx.AsyncClient(
        base_url=live_server.base_url,
        headers={"X-API-Key": live_server.new_key(plan="free")},
        timeout=30,
    ) as api:
        r = await api.post(
            "/uploads/multipart/initiate", json={"file_name": "big.bin", "file_size": 2 << 30}
        )
        assert r.status_code == 507
        assert error_code(r) == "QUOTA_EXCEEDED"
        assert r.json()["error"]["limit_bytes"] == 1 << 30
        r = await api.post(
            "/uploads/multipart/initiate", json={"file_name": "big.bin", "file_size": 6 << 40}
        )
        assert r.status_code == 413
        for body in ({"file_name": ""}, {"file_name": "a", "content_type": "bad"}, {}):
            r = await api.post("/uploads/multipart/initiate", json=body)
            assert r.status_code == 400, body


@pytest.fixture(scope="module")
def sweeping_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("sweep"), "--sweep-interval", "0.2")
    try:
        yield server
    finally:
        server.stop()


async def test_sweeper_removes_abandoned_uploads(sweeping_server: LiveServer) -> None:
    srv = sweeping_server
    async with httpx.AsyncClient(
        base_url=srv.base_url, headers={"X-API-Key": srv.new_key()}, timeout=30
    ) as api:
        abandoned = await initiate(api, "gone.bin")
        kept = await initiate(api, "kept.bin")
        for up in (abandoned, kept):
            urls = await part_urls(api, up["upload_id"], parts=1)
            await put_part(urls[1], b"part")
        # Age the first upload past its deadline (7 days is too long to wait).
        with closing(server_db(srv)) as db, db:
            db.execute(
                "UPDATE multipart SET expires_at = 1 WHERE upload_id = ?",
                (abandoned["upload_id"],),
            )
            db.execute(
                "UPDATE files SET delete_after = 1 WHERE object_key = ?",
                (abandoned["object_key"],),
            )
        await wait_until(lambda: not parts_dir(srv, abandoned["upload_id"]).exists())

        def pending_rows() -> set[str]:
            with closing(server_db(srv)) as db:
                return {r[0] for r in db.execute("SELECT object_key FROM files")}

        await wait_until(lambda: abandoned["object_key"] not in pending_rows())
        assert parts_dir(srv, kept["upload_id"]).exists()
        assert kept["object_key"] in pending_rows()
        r = await api.post("/uploads/multipart/abort", json={"upload_id": abandoned["upload_id"]})
        assert r.status_code == 404
