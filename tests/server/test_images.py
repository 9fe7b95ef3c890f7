"""Dialect `images` (seed 001): form upload judged by content, URL valid 72 hours."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from stowfs.server.config import IMAGE_URL_LIFETIME, MB
from tests.server.test_storage import error_code

BOUNDARY = "imgBOUNDARYimg"


def image_bytes(fmt: str, size: tuple[int, int] = (24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, fmt)
    return out.getvalue()


async def send(
    api: httpx.AsyncClient, filename: str, data: bytes, field: str = "file"
) -> httpx.Response:
    return await api.post("/uploads/images", files={field: (filename, data)})


@pytest.mark.parametrize(
    ("fmt", "ext", "mime"),
    [
        ("PNG", "png", "image/png"),
        ("JPEG", "jpg", "image/jpeg"),
        ("WEBP", "webp", "image/webp"),
        ("GIF", "gif", "image/gif"),
    ],
)
async def test_upload_image(api: httpx.AsyncClient, fmt: str, ext: str, mime: str) -> None:
    data = image_bytes(fmt)
    before = int(time.time())
    r = await send(api, f"ref.{ext}", data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"url", "filename", "content_type", "bytes", "created_at"}
    assert body["filename"] == f"ref.{ext}"
    assert body["content_type"] == mime
    assert body["bytes"] == len(data)
    assert isinstance(body["created_at"], int)
    assert before - 1 <= body["created_at"] <= time.time() + 1
    expires = int(parse_qs(urlsplit(body["url"]).query)["X-Stowfs-Expires"][0])
    assert abs(expires - (body["created_at"] + IMAGE_URL_LIFETIME)) <= 5
    async with httpx.AsyncClient(timeout=30) as anon:  # the URL needs no key
        download = await anon.get(body["url"])
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-type"] == mime
    # Stored as an object of the team, in folder "uploads", with the image size.
    (record,) = (await api.get("/files/storage/files", params={"folder": "uploads"})).json()[
        "files"
    ]
    assert record["filename"] == f"ref.{ext}"
    assert record["metadata"]["width"] == 24
    assert record["metadata"]["height"] == 16


async def test_type_judged_by_content(api: httpx.AsyncClient) -> None:
    r = await send(api, "really-a-png.jpg", image_bytes("PNG"))
    assert r.status_code == 200
    assert r.json()["content_type"] == "image/png"
    r = await send(api, "C:\\photos\\dir/x.png", image_bytes("GIF"))
    assert r.status_code == 200
    assert r.json()["filename"] == "x.png"


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("x.png", b"this is only text, not a picture\n"),
        ("x.bmp", image_bytes("BMP")),
        ("x.tiff", image_bytes("TIFF")),
        ("x.png", b""),
        ("x.png", image_bytes("PNG")[:40]),  # truncated header
    ],
)
async def test_unsupported_media_type(api: httpx.AsyncClient, filename: str, data: bytes) -> None:
    r = await send(api, filename, data)
    assert r.status_code == 415
    assert error_code(r) == "UNSUPPORTED_MEDIA_TYPE"
    assert (await api.get("/files/storage/files")).json()["total_count"] == 0


async def test_too_large_declared(api: httpx.AsyncClient) -> None:
    r = await send(api, "huge.png", b"\0" * (21 * MB))
    assert r.status_code == 413
    assert error_code(r) == "TOO_LARGE"


async def test_too_large_streamed(api: httpx.AsyncClient) -> None:
    """No Content-Length (chunked): the server stops reading at the limit."""

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="h.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        for _ in range(21):
            yield b"\0" * MB
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    r = await api.post(
        "/uploads/images",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert r.status_code == 413
    assert error_code(r) == "TOO_LARGE"


async def test_bad_forms(api: httpx.AsyncClient) -> None:
    r = await send(api, "a.png", image_bytes("PNG"), field="image")
    assert r.status_code == 400
    assert error_code(r) == "MISSING_FILE"
    for headers in ({"Content-Type": "text/plain"}, {}, {"Content-Type": "multipart/form-data"}):
        r = await api.post("/uploads/images", content=b"garbage", headers=headers)
        assert r.status_code == 400, headers
        error_code(r)
    r = await api.post(
        "/uploads/images",
        files={"file": ("a.png", image_bytes("PNG"))},
        headers={"X-API-Key": "stk_wrong"},
    )
    assert r.status_code == 401
