"""The presign and images dialects against the live reference server."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from stowfs import errors
from tests.remote.conftest import SMALL_PARTS, MiB, Open
from tests.remote.faultproxy import FaultProxy

MakeFile = Callable[..., Path]


async def test_presign_single_put(open_client: Open, folder: str, make_file: MakeFile) -> None:
    presign = await open_client("presign")
    storage = await open_client()
    caps = presign.capabilities
    assert caps.dialect == "presign"
    assert not caps.list
    assert caps.multipart
    assert caps.single_upload_max == 500 * 1024 * 1024
    source = make_file(250_000)
    data = source.read_bytes()
    file = await presign.upload(source, folder, "p.bin", {"prompt": "x"})
    assert file.checksum == hashlib.md5(data).hexdigest()
    assert file.size == len(data)
    assert (file.folder, file.name) == (folder, "p.bin")
    for call in (presign.list_folder(folder), presign.stat(file.key), presign.delete(file.key)):
        with pytest.raises(errors.Unsupported):
            await call
    # The same service's storage dialect sees the object, once.
    listed = await storage.list_folder(folder)
    assert [(f.key, f.checksum, f.metadata.get("prompt")) for f in listed] == [
        (file.key, file.checksum, "x")
    ]
    await presign.verify()


async def test_presign_multipart(open_client: Open, folder: str, make_file: MakeFile) -> None:
    presign = await open_client("presign", tuning=SMALL_PARTS)
    storage = await open_client()
    source = make_file(11 * 1024 * 1024 + 5)
    marks: list[int] = []

    async def note(cp: object) -> None:
        marks.append(len(getattr(cp, "parts", {})))

    file = await presign.upload(source, folder, "mp.bin", on_checkpoint=note)
    assert marks == [0, 1, 2, 3]  # after initiate, then after each part
    stored = await storage.stat(file.key)
    assert stored.checksum == file.checksum == hashlib.md5(source.read_bytes()).hexdigest()
    assert await storage.read(stored, 0, stored.size) == source.read_bytes()


def _png(size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


async def test_images_upload(open_client: Open, tmp_path: Path) -> None:
    images = await open_client("images")
    caps = images.capabilities
    assert caps.content_types
    assert "image/webp" in caps.content_types
    assert caps.url_lifetime == 72 * 3600
    assert not caps.renewable_urls
    assert not caps.list
    source = tmp_path / "pic.png"  # named .png but judged by content
    source.write_bytes(_png())
    file = await images.upload(source, "", "pic.png")
    assert file.content_type == "image/png"
    assert file.size == source.stat().st_size
    assert file.url
    assert file.url_expires
    assert file.url_expires - file.created_at == 72 * 3600
    assert await images.read(file, 0, file.size) == source.read_bytes()
    text = tmp_path / "fake.png"
    text.write_bytes(b"not an image at all")
    with pytest.raises(errors.UnsupportedMediaType):
        await images.upload(text, "", "fake.png")
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:
        f.truncate(21 * 1024 * 1024)
    with pytest.raises(errors.TooLarge):
        await images.upload(huge, "", "huge.png")
    with pytest.raises(errors.Unsupported):
        await images.list_folders()
    await images.verify()


async def test_images_url_cannot_be_renewed(open_client: Open, tmp_path: Path) -> None:
    import dataclasses

    images = await open_client("images")
    source = tmp_path / "a.png"
    source.write_bytes(_png())
    file = await images.upload(source, "", "a.png")
    url, expires = await images.fresh_url(file, min_valid=60)
    assert url == file.url
    assert expires == file.url_expires
    stale = dataclasses.replace(file, url_expires=images.transport.wall_clock() - 1, key="other")
    with pytest.raises(errors.Forbidden, match="cannot renew"):
        await images.fresh_url(stale)


async def test_bad_key_is_reported_by_every_dialect(open_client: Open) -> None:
    for dialect in ("storage", "presign", "images"):
        client = await open_client(dialect, key="stk_wrong-0000000000000000")
        with pytest.raises(errors.AuthFailed):
            await client.verify()


@pytest.mark.parametrize("dialect", ["storage", "presign"])
async def test_upload_begun_while_the_file_grows(
    open_client: Open, proxy: FaultProxy, folder: str, tmp_path: Path, dialect: str
) -> None:
    """Parts sent while the file is written are not sent again at the end."""
    client = await open_client(dialect, url=proxy.base_url(), tuning=SMALL_PARTS)
    source = tmp_path / "growing.bin"
    data = os.urandom(12 * MiB + 123)
    cp = await client.begin_upload(folder, "g.bin", {"seed": 7})
    assert cp is not None
    assert cp.growing
    assert cp.part_size == 5 * MiB
    source.write_bytes(data[: 5 * MiB])
    await client.upload_part(cp, 1, source)
    source.write_bytes(data)  # grown: the first part's bytes as they were
    await client.upload_part(cp, 2, source)
    assert proxy.count("PUT", "/") == 2
    cp.md5 = hashlib.md5(data).hexdigest()
    file = await client.upload(source, folder, "g.bin", {"seed": 7}, checkpoint=cp)
    assert proxy.count("PUT", "/") == 3  # only the last part went at the end
    assert file.size == len(data)
    assert file.checksum == cp.md5
    assert file.metadata["seed"] == 7
    if dialect == "storage":  # presign gives no download URL
        assert await client.read(file, 0, len(data)) == data


async def test_upload_of_a_grown_file_that_shrank_starts_over(
    open_client: Open, folder: str, tmp_path: Path
) -> None:
    client = await open_client(tuning=SMALL_PARTS)
    source = tmp_path / "shrank.bin"
    source.write_bytes(os.urandom(10 * MiB))
    cp = await client.begin_upload(folder, "s.bin")
    assert cp is not None
    await client.upload_part(cp, 1, source)
    await client.upload_part(cp, 2, source)
    os.truncate(source, 7 * MiB)
    data = source.read_bytes()
    file = await client.upload(source, folder, "s.bin", checkpoint=cp)
    assert file.size == len(data)
    assert file.checksum == hashlib.md5(data).hexdigest()
    assert [f.key for f in await client.list_folder(folder)] == [file.key]


@pytest.mark.parametrize(
    ("dialect", "size"),
    [("storage", 5000), ("presign", 5000), ("presign", 11 * MiB + 5)],
    ids=["storage", "presign", "presign-multipart"],
)
async def test_an_upload_names_its_object_before_the_bytes_go(
    open_client: Open, folder: str, make_file: MakeFile, dialect: str, size: int
) -> None:
    """`on_key` gets the key while no object has it yet: a caller that dies before the
    answer can still tell the object later (the mount journals it)."""
    client = await open_client(dialect, tuning=SMALL_PARTS)
    storage = await open_client()
    named: list[str] = []

    async def on_key(key: str) -> None:
        with pytest.raises(errors.NotFound):
            await storage.stat(key)
        named.append(key)

    file = await client.upload(make_file(size), folder, "k.bin", on_key=on_key)
    assert named == [file.key]
    assert (await storage.stat(file.key)).size == size
