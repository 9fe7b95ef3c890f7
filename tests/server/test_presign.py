"""Dialect `presign` (seed 002): presign, then one PUT with the signed headers."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import trio
from PIL import Image

from stowfs.server.config import MB, PLANS
from stowfs.server.signing import Signer
from tests.livesrv import LiveServer
from tests.server.flows import upload_post
from tests.server.test_storage import error_code


async def presign(api: httpx.AsyncClient, name: str, size: int, **extra: Any) -> dict[str, Any]:
    r = await api.post(
        "/files/presign",
        json={"file_name": name, "file_size": size, "content_type": "application/octet-stream"}
        | extra,
    )
    assert r.status_code == 200, r.text
    grant: dict[str, Any] = r.json()
    return grant


async def put(url: str, content: Any, headers: dict[str, str]) -> httpx.Response:
    """A PUT without the API key: the signed URL is the only credential."""
    async with httpx.AsyncClient(timeout=60) as anon:
        return await anon.put(url, content=content, headers=headers)


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """A body httpx sends without Content-Length."""
    yield data


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def signer(live_server: LiveServer) -> Signer:
    return Signer((live_server.data_dir / "secret").read_bytes())


def server_db(live_server: LiveServer) -> sqlite3.Connection:
    return sqlite3.connect(live_server.data_dir / "meta.db", timeout=30)


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll state outside this process (files, the server's DB), with a deadline."""
    with trio.fail_after(timeout):
        while not condition():  # no event to wait on across processes
            await trio.sleep(0.01)


async def listed_keys(api: httpx.AsyncClient) -> list[str]:
    r = await api.get("/files/storage/files")
    assert r.status_code == 200
    return [f["object_key"] for f in r.json()["files"]]


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def test_presign_put_flow(api: httpx.AsyncClient) -> None:
    data = png(40, 30)
    grant = await presign(
        api, "photo.png", len(data), content_type="image/png", folder="in/refs",
        metadata={"project": "p1", "tags": ["a", "b"]},
    )  # fmt: skip
    assert grant["file_key"] == grant["object_key"]
    assert grant["object_key"].endswith("/in/refs/" + grant["object_key"].rsplit("/", 1)[1])
    assert grant["upload_headers"] == {"Content-Length": str(len(data)), "If-None-Match": "*"}
    # Pending uploads are not listed.
    assert await listed_keys(api) == []

    r = await put(grant["upload_url"], data, grant["upload_headers"])
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'

    r = await api.get("/files/storage/files", params={"folder": "in/refs"})
    (record,) = r.json()["files"]
    assert record["object_key"] == grant["file_key"]
    assert record["size"] == len(data)
    assert record["checksum"] == hashlib.md5(data).hexdigest()
    assert record["content_type"] == "image/png"
    assert record["metadata"] | {"width": 40, "height": 30} == record["metadata"]
    assert record["metadata"]["project"] == "p1"
    download = await api.get(record["file_url"])
    assert download.status_code == 200
    assert download.content == data


async def test_empty_file(api: httpx.AsyncClient) -> None:
    grant = await presign(api, "empty.txt", 0)
    r = await put(grant["upload_url"], b"", grant["upload_headers"])
    assert r.status_code == 200, r.text
    r = await api.get(f"/files/storage/file/{grant['file_key']}")
    assert r.json()["size"] == 0


async def test_missing_signed_header(api: httpx.AsyncClient) -> None:
    # Big enough that the server answers before reading it all (it must not hang).
    data = b"x" * (4 * MB)
    grant = await presign(api, "f.bin", len(data))
    r = await put(grant["upload_url"], data, {})  # no If-None-Match
    assert r.status_code == 403
    assert error_code(r) == "SIGNED_HEADER_MISSING"
    # Chunked: no Content-Length at all.
    r = await put(grant["upload_url"], chunked(data), {"If-None-Match": "*"})
    assert r.status_code == 403
    assert error_code(r) == "SIGNED_HEADER_MISSING"
    assert await listed_keys(api) == []
    r = await put(grant["upload_url"], data, grant["upload_headers"])
    assert r.status_code == 200


async def test_signed_headers_must_match(api: httpx.AsyncClient) -> None:
    data = b"y" * 100
    grant = await presign(api, "f.bin", len(data))
    r = await put(grant["upload_url"], data + b"!", {"If-None-Match": "*"})
    assert r.status_code == 403
    assert error_code(r) == "SIGNED_HEADER_MISMATCH"
    r = await put(grant["upload_url"], data, {"If-None-Match": '"abc"'})
    assert r.status_code == 403
    assert error_code(r) == "SIGNED_HEADER_MISMATCH"
    assert await listed_keys(api) == []


async def test_put_twice_is_refused(api: httpx.AsyncClient) -> None:
    data = b"first version"
    grant = await presign(api, "once.txt", len(data))
    r = await put(grant["upload_url"], data, grant["upload_headers"])
    assert r.status_code == 200
    r = await put(grant["upload_url"], b"other version", grant["upload_headers"])
    assert r.status_code == 412
    assert error_code(r) == "ALREADY_EXISTS"
    record = (await api.get(f"/files/storage/file/{grant['file_key']}")).json()
    assert (await api.get(record["file_url"])).content == data


async def test_tampered_url(api: httpx.AsyncClient) -> None:
    data = b"z" * 10
    grant = await presign(api, "t.bin", len(data))
    url = grant["upload_url"]
    sig = parse_qs(urlsplit(url).query)["X-Stowfs-Signature"][0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    expires = parse_qs(urlsplit(url).query)["X-Stowfs-Expires"][0]
    for bad in (
        with_query(url, **{"X-Stowfs-Signature": flipped}),
        with_query(url, **{"X-Stowfs-Expires": str(int(expires) + 1)}),
        with_query(url, **{"X-Stowfs-Signature": ""}),
    ):
        r = await put(bad, data, grant["upload_headers"])
        assert r.status_code == 403
        assert error_code(r) == "SIGNATURE_MISMATCH"
    # Another pending upload's key under this signature.
    other = await presign(api, "u.bin", len(data))
    r = await put(
        url.replace(urlsplit(url).path, urlsplit(other["upload_url"]).path),
        data,
        grant["upload_headers"],
    )
    assert r.status_code == 403
    assert await listed_keys(api) == []


async def test_expired_url(api: httpx.AsyncClient, live_server: LiveServer) -> None:
    data = b"late" * 10
    grant = await presign(api, "late.bin", len(data))
    with closing(server_db(live_server)) as db:
        (file_id,) = db.execute(
            "SELECT file_id FROM files WHERE object_key = ?", (grant["file_key"],)
        ).fetchone()

    def crafted(expires: int) -> str:
        sig = signer(live_server).sign("PUT", grant["file_key"], file_id, len(data), expires)
        return with_query(
            grant["upload_url"],
            **{"X-Stowfs-Expires": str(expires), "X-Stowfs-Signature": sig},
        )

    r = await put(crafted(int(time.time()) - 5), data, grant["upload_headers"])
    assert r.status_code == 403
    assert error_code(r) == "URL_EXPIRED"
    # The same construction with a future expiry is accepted: only the expiry failed.
    r = await put(crafted(int(time.time()) + 60), data, grant["upload_headers"])
    assert r.status_code == 200


async def test_over_single_put_limit(api: httpx.AsyncClient) -> None:
    r = await api.post("/files/presign", json={"file_name": "big.bin", "file_size": 500 * MB + 1})
    assert r.status_code == 413
    assert error_code(r) == "TOO_LARGE"
    r = await api.post("/files/presign", json={"file_name": "big.bin", "file_size": 500 * MB})
    assert r.status_code == 200


async def test_bad_requests(api: httpx.AsyncClient) -> None:
    for body in (
        {"file_name": "a.bin", "file_size": -1},
        {"file_name": "a.bin"},
        {"file_name": "a/b.bin", "file_size": 1},
        {"file_name": "a.bin", "file_size": 1, "content_type": "text/html\r\nX-Evil: 1"},
        {"file_name": "a.bin", "file_size": 1, "content_type": "nonsense"},
        {"file_name": "a.bin", "file_size": 1, "metadata": {"width": "wide"}},
    ):
        r = await api.post("/files/presign", json=body)
        assert r.status_code == 400, body
        error_code(r)
    r = await put(
        with_query((await presign(api, "a.bin", 1))["upload_url"], **{"X-Stowfs-Expires": "x"}),
        b"a",
        {"If-None-Match": "*"},
    )
    assert r.status_code == 403
    assert error_code(r) == "URL_EXPIRED"


@pytest.mark.slow
async def test_quota(live_server: LiveServer) -> None:
    """A free team (1,000 files): at the limit, presign answers 507, and so does the
    PUT of a URL granted before the limit was reached."""
    plan = PLANS["free"]
    async with (
        httpx.AsyncClient(
            base_url=live_server.base_url,
            headers={"X-API-Key": live_server.new_key(plan="free")},
            timeout=60,
        ) as api,
        httpx.AsyncClient(timeout=60) as anon,
    ):
        limiter = trio.CapacityLimiter(8)

        async def upload(i: int) -> None:
            async with limiter:
                grant = await presign(api, f"f{i}", 1)
                r = await anon.put(
                    grant["upload_url"], content=b"x", headers=grant["upload_headers"]
                )
                assert r.status_code == 200

        async with trio.open_nursery() as nursery:
            for i in range(plan.max_files - 1):
                nursery.start_soon(upload, i)
        last, late = await presign(api, "last", 1), await presign(api, "late", 1)
        r = await put(last["upload_url"], b"x", last["upload_headers"])
        assert r.status_code == 200
        r = await put(late["upload_url"], b"x", late["upload_headers"])
        assert r.status_code == 507
        assert error_code(r) == "QUOTA_EXCEEDED"
        r = await api.post("/files/presign", json={"file_name": "more", "file_size": 1})
        assert r.status_code == 507
        assert r.json()["error"]["limit_files"] == plan.max_files
        assert (await api.get("/files/storage")).json()["file_count"] == plan.max_files


async def test_short_body_publishes_nothing(
    api: httpx.AsyncClient, live_server: LiveServer
) -> None:
    data = os.urandom(256 * 1024)
    grant = await presign(api, "short.bin", len(data))
    url = urlsplit(grant["upload_url"])
    assert url.hostname is not None
    assert url.port is not None
    temp = live_server.data_dir / "blobs" / "tmp"
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    head = (
        f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Length: {len(data)}\r\nIf-None-Match: *\r\n\r\n"
    )
    await stream.send_all(head.encode() + data[:1000])
    await wait_until(lambda: any(temp.iterdir()))  # the server is receiving
    await stream.aclose()
    await wait_until(lambda: not any(temp.iterdir()))  # ... and dropped the partial bytes
    assert await listed_keys(api) == []
    r = await put(grant["upload_url"], data, grant["upload_headers"])
    assert r.status_code == 200
    record = (await api.get(f"/files/storage/file/{grant['file_key']}")).json()
    assert record["checksum"] == hashlib.md5(data).hexdigest()


async def test_a_move_gives_a_guessed_type_the_new_names_and_keeps_a_declared_one(
    api: httpx.AsyncClient,
) -> None:
    async def move(key: str, filename: str) -> dict[str, Any]:
        r = await api.post(
            "/files/storage/file/move", json={"object_key": key, "filename": filename}
        )
        assert r.status_code == 200, r.text
        moved: dict[str, Any] = r.json()
        return moved

    temp = await upload_post(api, ".photo.png.Xq3b", png(2, 2))  # rsync's temp name
    assert temp["content_type"] == "application/octet-stream"
    moved = await move(temp["object_key"], "photo.png")
    assert moved["content_type"] == "image/png"
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(moved["file_url"])).headers["content-type"] == "image/png"
    searched = await api.post(
        "/files/storage/search", json={"filters": {"content_type": "image/png"}}
    )
    assert [f["object_key"] for f in searched.json()["files"]] == [moved["object_key"]]

    data = b"declared"
    grant = await presign(api, "blob.bin", len(data), content_type="image/webp")
    assert (await put(grant["upload_url"], data, grant["upload_headers"])).status_code == 200
    assert (await move(grant["file_key"], "blob.txt"))["content_type"] == "image/webp"
