"""Presigned POST policies and signed download URLs: tampering, expiry, replay, limits."""

from __future__ import annotations

import base64
import json
import time
from contextlib import closing
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from stowfs.server.routes_download import SMALL_BODY
from stowfs.server.signing import Signer
from tests.livesrv import LiveServer
from tests.server.flows import upload_post
from tests.server.test_presign import server_db
from tests.server.test_storage import error_code


async def grant(api: httpx.AsyncClient, filename: str = "f.bin", **extra: Any) -> dict[str, Any]:
    r = await api.post("/files/upload-url", json={"filename": filename, **extra})
    assert r.status_code == 200
    result: dict[str, Any] = r.json()
    return result


async def post_form(
    url: str, fields: dict[str, str], data: bytes = b"data", file_last: bool = True
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as anon:
        if file_last:
            return await anon.post(url, data=fields, files={"file": ("f", data)})
        # Build the form by hand so `file` comes first.
        boundary = "xXxBOUNDARYxXx"
        parts = [
            f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
            + data
            + b"\r\n"
        ]
        for k, v in fields.items():
            parts.append(
                f"--{boundary}\r\n".encode()
                + f'Content-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return await anon.post(
            url, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )


def signer(live_server: LiveServer) -> Signer:
    return Signer((live_server.data_dir / "secret").read_bytes())


async def test_file_must_be_last(api: httpx.AsyncClient) -> None:
    g = await grant(api)
    r = await post_form(g["upload_url"], g["upload_fields"], file_last=False)
    assert r.status_code == 400
    assert error_code(r) == "FILE_NOT_LAST"
    assert (await api.get("/files/storage/files")).json()["total_count"] == 0


async def test_missing_or_changed_fields(api: httpx.AsyncClient) -> None:
    g = await grant(api, "img.png")
    for name in ("policy", "x-stowfs-signature", "key", "Content-Type"):
        fields = {k: v for k, v in g["upload_fields"].items() if k != name}
        r = await post_form(g["upload_url"], fields)
        assert r.status_code == 403, name
    fields = {**g["upload_fields"], "Content-Type": "text/html"}
    r = await post_form(g["upload_url"], fields)
    assert r.status_code == 403
    assert error_code(r) == "POLICY_MISMATCH"
    other = await grant(api, "other.png")
    fields = {**g["upload_fields"], "key": other["object_key"]}
    r = await post_form(g["upload_url"], fields)
    assert r.status_code == 403
    r = await post_form(g["upload_url"], g["upload_fields"])
    assert r.status_code == 201


async def test_tampered_policy(api: httpx.AsyncClient) -> None:
    g = await grant(api)
    policy = json.loads(base64.b64decode(g["upload_fields"]["policy"]))
    policy["conditions"][-1] = ["content-length-range", 0, 10**12]
    forged = base64.b64encode(json.dumps(policy).encode()).decode()
    r = await post_form(g["upload_url"], {**g["upload_fields"], "policy": forged})
    assert r.status_code == 403
    assert error_code(r) == "SIGNATURE_MISMATCH"
    sig = g["upload_fields"]["x-stowfs-signature"]
    bad = ("0" if sig[0] != "0" else "1") + sig[1:]
    r = await post_form(g["upload_url"], {**g["upload_fields"], "x-stowfs-signature": bad})
    assert r.status_code == 403


async def test_expired_policy(api: httpx.AsyncClient, live_server: LiveServer) -> None:
    g = await grant(api)
    policy = json.loads(base64.b64decode(g["upload_fields"]["policy"]))
    policy["expiration"] = "2020-01-01T00:00:00Z"
    encoded, sig = signer(live_server).encode_policy(policy)
    fields = {**g["upload_fields"], "policy": encoded, "x-stowfs-signature": sig}
    r = await post_form(g["upload_url"], fields)
    assert r.status_code == 403
    assert error_code(r) == "EXPIRED"


async def test_replayed_policy(api: httpx.AsyncClient) -> None:
    g = await grant(api)
    assert (await post_form(g["upload_url"], g["upload_fields"], b"first")).status_code == 201
    r = await post_form(g["upload_url"], g["upload_fields"], b"second")
    assert r.status_code == 412
    assert error_code(r) == "ALREADY_EXISTS"
    async with httpx.AsyncClient() as anon:
        got = await anon.get(
            (await api.get(f"/files/storage/file/{g['object_key']}")).json()["file_url"]
        )
    assert got.content == b"first"


async def test_upload_whose_grant_is_gone(api: httpx.AsyncClient, live_server: LiveServer) -> None:
    """A valid policy whose pending upload was swept (expired) or aborted: 404, and the
    bytes received leave nothing behind."""
    g = await grant(api)
    with closing(server_db(live_server)) as db, db:
        db.execute("DELETE FROM files WHERE object_key = ?", (g["object_key"],))
    temp = live_server.data_dir / "blobs" / "tmp"
    before = set(temp.iterdir())
    r = await post_form(g["upload_url"], g["upload_fields"])
    assert r.status_code == 404
    assert error_code(r) == "NOT_FOUND"
    assert set(temp.iterdir()) == before
    assert (await api.get(f"/files/storage/file/{g['object_key']}")).status_code == 404


async def test_oversize_body(api: httpx.AsyncClient) -> None:
    g = await grant(api)
    r = await post_form(g["upload_url"], g["upload_fields"], b"\0" * (50 * 1024 * 1024 + 1))
    assert r.status_code == 413
    assert error_code(r) == "TOO_LARGE"
    assert (await api.get("/files/storage")).json()["file_count"] == 0


async def test_download_signature_checks(api: httpx.AsyncClient, live_server: LiveServer) -> None:
    rec = await upload_post(api, "d.txt", b"0123456789")
    url = rec["file_url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(url)).content == b"0123456789"
        sig = query["X-Stowfs-Signature"]
        tampered = {**query, "X-Stowfs-Signature": ("a" if sig[0] != "a" else "b") + sig[1:]}
        r = await anon.get(base, params=tampered)
        assert r.status_code == 403
        assert error_code(r) == "SIGNATURE_MISMATCH"
        longer = {**query, "X-Stowfs-Expires": str(int(query["X-Stowfs-Expires"]) + 3600)}
        assert (await anon.get(base, params=longer)).status_code == 403
        assert (await anon.get(base)).status_code == 403
        # A correctly signed URL that has expired.
        past = int(time.time()) - 10
        s = signer(live_server).sign("GET", rec["object_key"], rec["file_id"], past)
        r = await anon.get(base, params={"X-Stowfs-Expires": past, "X-Stowfs-Signature": s})
        assert r.status_code == 403
        assert error_code(r) == "URL_EXPIRED"
        # The URL of one object does not open another.
        other = await upload_post(api, "e.txt", b"other")
        other_base = urlsplit(other["file_url"])
        r = await anon.get(
            f"{other_base.scheme}://{other_base.netloc}{other_base.path}", params=query
        )
        assert r.status_code == 403


@pytest.mark.parametrize("size", [10_240, SMALL_BODY + 10_240])  # read whole, or streamed
async def test_download_headers_range_and_conditional(api: httpx.AsyncClient, size: int) -> None:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    rec = await upload_post(api, "r.bin", data)
    async with httpx.AsyncClient() as anon:
        full = await anon.get(rec["file_url"])
        assert full.content == data
        etag = full.headers["etag"]
        assert etag == f'"{rec["checksum"]}"'
        assert full.headers["last-modified"]
        assert full.headers["content-type"] == "application/octet-stream"
        assert full.headers["accept-ranges"] == "bytes"
        r = await anon.get(rec["file_url"], headers={"Range": "bytes=100-199"})
        assert r.status_code == 206
        assert r.content == data[100:200]
        assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
        r = await anon.get(rec["file_url"], headers={"Range": "bytes=-10"})
        assert r.content == data[-10:]
        r = await anon.get(rec["file_url"], headers={"Range": f"bytes={len(data)}-"})
        assert r.status_code == 416
        assert error_code(r) == "RANGE_NOT_SATISFIABLE"
        r = await anon.get(rec["file_url"], headers={"If-None-Match": etag})
        assert r.status_code == 304
        r = await anon.head(rec["file_url"])
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == len(data)


async def test_download_honours_connection_close(api: httpx.AsyncClient) -> None:
    """A `Connection: close` download ends with the body (hypercorn + Starlette could hang)."""
    rec = await upload_post(api, "c.txt", b"close me")
    url = httpx.URL(rec["file_url"])
    stream = await trio.open_tcp_stream(url.host, url.port or 80)
    request = (
        f"GET {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}\r\nConnection: close\r\n\r\n"
    )
    received = b""
    async with stream:
        await stream.send_all(request.encode())
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"close me")
