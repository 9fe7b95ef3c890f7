"""The storage dialect against the live reference server: every operation."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from stowfs import errors
from stowfs.remote import connect
from stowfs.remote.capabilities import capabilities, parse_info
from stowfs.remote.common import HttpRemote
from stowfs.remote.storage import StorageRemote
from stowfs.remote.transport import Transport
from tests.livesrv import LiveServer
from tests.remote.conftest import FAST, Open
from tests.remote.faultproxy import FaultProxy

MakeFile = Callable[..., Path]


async def test_connect_returns_a_storage_remote(live_server: LiveServer, shared_key: str) -> None:
    remote = await connect(live_server.base_url, shared_key)
    try:
        caps = remote.capabilities
        assert caps.dialect == "storage"
        assert caps.server_move
        assert caps.changes
        assert caps.rmdir
        assert caps.usage_limits
        assert caps.multipart
        assert caps.single_upload_max == 50 * 1024 * 1024
        assert caps.refuses_name("back\\slash")  # the reference server says so
        assert caps.refuses_name("tab\tname")  # control characters: protocol.md
        assert not caps.refuses_name("spaces, 'quotes' and é")
    finally:
        await remote.aclose()


@pytest.mark.parametrize("doc", [None, {"dialects": ["storage"]}])
def test_a_provider_naming_no_forbidden_characters_refuses_what_the_protocol_does(
    doc: object,
) -> None:
    caps = capabilities("storage", parse_info(doc))
    assert caps.refuses_name("a/b")
    assert caps.refuses_name("tab\tname")  # control characters: protocol.md
    assert not caps.refuses_name("back\\slash")


async def test_upload_list_stat_read(client: HttpRemote, folder: str, make_file: MakeFile) -> None:
    source = make_file(300_000)
    data = source.read_bytes()
    seen: list[int] = []
    file = await client.upload(
        source, f"{folder}/sub", "a.bin", {"tags": ["x"]}, progress=seen.append
    )
    assert file.folder == f"{folder}/sub"
    assert file.name == "a.bin"
    assert file.size == len(data)
    assert file.checksum == hashlib.md5(data).hexdigest()
    assert file.metadata["tags"] == ["x"]
    assert sum(seen) == len(data)
    assert [f.key for f in await client.list_folder(f"{folder}/sub")] == [file.key]
    assert await client.list_folder(folder) == []
    assert [f.path for f in await client.list_folders(folder)] == [f"{folder}/sub"]
    assert (await client.stat(file.key)).checksum == file.checksum
    assert await client.read(file, 0, 10**9) == data
    assert await client.read(file, 1000, 5000) == data[1000:6000]
    assert await client.read(file, len(data) - 10, 100) == data[-10:]
    assert await client.read(file, len(data), 100) == b""
    streamed = b"".join([c async for c in client.stream(file, 7, 100_000)])
    assert streamed == data[7:100_007]
    url, expires = await client.fresh_url(file)
    assert url.startswith("http")
    assert expires > file.created_at


async def test_parallel_read_of_a_big_range(
    open_client: Open, folder: str, make_file: MakeFile
) -> None:
    from stowfs.remote import Tuning

    client = await open_client(tuning=Tuning(read_split=256 * 1024, read_parallel=4))
    source = make_file(3 * 1024 * 1024 + 17)
    file = await client.upload(source, folder, "big.bin")
    data = source.read_bytes()
    assert await client.read(file, 5, len(data)) == data[5:]


async def test_metadata_public_move_delete(
    client: HttpRemote, folder: str, make_file: MakeFile
) -> None:
    file = await client.upload(make_file(1000), folder, "m.png", {"prompt": "cat", "seed": 3})
    patched = await client.patch_metadata(file.key, {"seed": None, "steps": 20})
    assert patched.metadata == {"prompt": "cat", "steps": 20}
    public = await client.set_public(file.key, True)
    assert public.is_public
    assert public.public_url
    moved = await client.move(public, f"{folder}/other", "n.png")
    assert (moved.folder, moved.name) == (f"{folder}/other", "n.png")
    assert moved.checksum == file.checksum
    assert moved.is_public
    with pytest.raises(errors.NotFound):
        await client.stat(file.key)
    await client.delete(moved.key)
    with pytest.raises(errors.NotFound):
        await client.delete(moved.key)
    with pytest.raises(errors.MetadataTooLarge):
        await client.upload(make_file(10), folder, "big-meta.txt", {"prompt": "x" * 20_000})
    held = await client.upload(make_file(10), folder, "held.txt", {"legal_hold": True})
    with pytest.raises(errors.Conflict):
        await client.delete(held.key)


async def test_folders(client: HttpRemote, folder: str, make_file: MakeFile) -> None:
    await client.mkdir(f"{folder}/a/b")
    await client.mkdir(f"{folder}/a/b")  # existing is fine
    assert [f.path for f in await client.list_folders(f"{folder}/a")] == [f"{folder}/a/b"]
    file = await client.upload(make_file(10), f"{folder}/a", "f.txt")
    with pytest.raises(errors.Conflict):
        await client.rmdir(f"{folder}/a")
    await client.rmdir(f"{folder}/a/b")
    await client.delete(file.key)
    await client.rmdir(f"{folder}/a")
    assert await client.list_folders(folder) == []
    with pytest.raises(errors.InvalidRequest):
        await client.mkdir(f"{folder}/bad\x01name")


async def test_usage_search_schema(
    open_client: Open, live_server: LiveServer, make_file: MakeFile
) -> None:
    client = await open_client(key=live_server.new_key(plan="free"))
    await client.upload(make_file(1234), "u", "one.png", {"prompt": "red fox", "tags": ["a", "b"]})
    await client.upload(make_file(100, "two.bin"), "u", "two.bin", {"tags": ["b"]})
    usage = await client.usage()
    assert (usage.total_bytes, usage.file_count) == (1334, 2)
    assert usage.limit_bytes == 1024**3
    assert usage.limit_files == 1000
    found = await client.search({"tags": "b"}, sort_by="size", sort_order="asc")
    assert [f.name for f in found.files] == ["two.bin", "one.png"]
    assert found.total == 2
    assert [f.name for f in (await client.search({"prompt": "fox"})).files] == ["one.png"]
    assert sorted(await client.distinct("extension")) == ["bin", "png"]
    names = {f.name for f in await client.schema()}
    assert {"prompt", "tags", "checksum"} <= names
    with pytest.raises(errors.InvalidRequest):
        await client.search({"no_such_field": 1})


async def test_the_schema_judges_values_as_the_service_does(
    client: HttpRemote, folder: str, make_file: MakeFile
) -> None:
    """A mount checks the metadata of a file not uploaded yet by the schema (a value the
    service refuses would refuse the whole upload later): it must agree with a PATCH."""
    file = await client.upload(make_file(10), folder, "f.txt")
    fields = {f.name: f for f in await client.schema()}
    values: list[Any] = ["text", "", 7, -1, 2.5, True, ["a", "b"], [1], {"a": 1}]
    values += ["2026-12-04", "2026-12-04T10:00:00Z", "2026-12-04T10:00:00+02:00", "noon"]
    names = ["prompt", "seed", "cfg_scale", "legal_hold", "tags", "expires_at", "size"]
    verdicts = []
    for name in names:
        for value in values:
            try:
                await client.patch_metadata(file.key, {name: value})
                served = True
            except errors.InvalidRequest:
                served = False
            verdicts.append((name, value, fields[name].accepts(value), served))
    assert [v for v in verdicts if v[2] != v[3]] == []
    assert {v[3] for v in verdicts} == {True, False}


async def test_change_feed(client: HttpRemote, folder: str, make_file: MakeFile) -> None:
    start = await client.changes(None)
    assert start.changes == []
    file = await client.upload(make_file(10), folder, "c.txt")
    await client.delete(file.key)
    batch = await client.changes(start.cursor)
    mine = [c for c in batch.changes if c.folder.startswith(folder)]
    assert [(c.kind, c.op) for c in mine] == [
        ("folder", "upsert"),
        ("file", "upsert"),
        ("file", "delete"),
    ]
    assert mine[1].file is not None
    assert mine[1].file.key == file.key
    with pytest.raises(errors.InvalidRequest):
        await client.changes("not-a-cursor")


def _plain(client: HttpRemote, key: str) -> StorageRemote:
    """The same service seen as a plain provider: no extensions, no multipart."""
    info = dataclasses.replace(client.info, extensions=frozenset(), dialects=frozenset({"storage"}))
    transport = Transport(client.transport.base_url, key, policy=FAST)
    return StorageRemote(transport, info, client.tuning)


async def test_fallbacks_without_extensions(
    client: HttpRemote, shared_key: str, folder: str, make_file: MakeFile
) -> None:
    plain = _plain(client, shared_key)
    try:
        caps = plain.capabilities
        assert not (caps.server_move)
        assert not (caps.changes)
        assert not (caps.rmdir)
        assert not (caps.multipart)
        assert caps.move  # by copy + delete
        source = make_file(200_000)
        start = await plain.changes(None)
        file = await plain.upload(source, folder, "orig.bin", {"prompt": "p"})
        moved = await plain.move(file, f"{folder}/dst", "new.bin")
        assert moved.key != file.key
        assert moved.metadata.get("prompt") == "p"
        assert await plain.read(moved, 0, moved.size) == source.read_bytes()
        assert await plain.list_folder(folder) == []
        batch = await plain.changes(start.cursor)
        ops = {(c.kind, c.op, c.folder) for c in batch.changes}
        assert ("file", "upsert", f"{folder}/dst") in ops
        assert ("folder", "upsert", folder) in ops
        again = await plain.changes(batch.cursor)
        assert again.changes == []
        await plain.delete(moved.key)
        gone = await plain.changes(again.cursor)
        assert [(c.op, c.key) for c in gone.changes if c.kind == "file"] == [("delete", moved.key)]
        with pytest.raises(errors.Conflict) as expired:
            await plain.changes(start.cursor)
        assert expired.value.code == "CURSOR_EXPIRED"
        with pytest.raises(errors.Unsupported):
            await plain.rmdir(folder)
        big = source.with_name("big.bin")
        with big.open("wb") as f:
            f.truncate(51 * 1024 * 1024)  # sparse: nothing is sent anyway
        with pytest.raises(errors.TooLarge, match="no multipart"):
            await plain.upload(big, folder, "big.bin")
    finally:
        await plain.aclose()


async def test_errors_map_to_the_tree(open_client: Open, client: HttpRemote) -> None:
    with pytest.raises(errors.NotFound):
        await client.stat("no/such/key")
    bad = await open_client(key="stk_not-a-real-key-0000000000")
    with pytest.raises(errors.AuthFailed) as failed:
        await bad.verify()
    assert failed.value.status == 401
    assert "UNAUTHORIZED" in str(failed.value)
    with pytest.raises(errors.ConfigError):
        await open_client("ftp")


async def test_over_50_mb_uses_the_advertised_multipart(
    client: HttpRemote, folder: str, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    with source.open("wb") as f:
        f.truncate(51 * 1024 * 1024)  # sparse zeros: the size is what matters
        f.seek(0)
        f.write(b"head")
    marks: list[int] = []

    async def note(cp: object) -> None:
        marks.append(len(getattr(cp, "parts", {})))

    file = await client.upload(source, folder, "big.bin", on_checkpoint=note)
    assert len(marks) > 2  # multipart: a checkpoint per part
    assert file.size == source.stat().st_size
    assert file.checksum == hashlib.md5(source.read_bytes()).hexdigest()
    assert await client.read(file, 0, 10) == b"head" + bytes(6)


@pytest.mark.parametrize("dialect", ["storage", "presign"])
async def test_empty_file_and_odd_names(
    open_client: Open, folder: str, tmp_path: Path, dialect: str
) -> None:
    client = await open_client(dialect)
    storage = await open_client()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    name = 'odd "name" #1 ?%20 é.txt'
    file = await client.upload(empty, f"{folder}/sp ace", name)
    assert file.size == 0
    assert file.checksum == hashlib.md5(b"").hexdigest()
    listed = await storage.list_folder(f"{folder}/sp ace")
    assert [f.name for f in listed] == [name]
    stat = await storage.stat(file.key)
    assert stat.name == name
    assert await storage.read(stat, 0, 100) == b""


async def test_small_upload_is_confirmed_by_its_answer(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    """The server answers the POST with the stored record: no stat is needed."""
    client = await open_client(url=proxy.base_url())
    source = make_file(5000)
    data = source.read_bytes()
    file = await client.upload(source, folder, "s.bin", {"seed": 3})
    assert file.checksum == hashlib.md5(data).hexdigest()
    assert file.size == len(data)
    assert file.metadata["seed"] == 3
    assert proxy.count("GET", "/files/storage/file/") == 0
    assert await client.read(file, 0, len(data)) == data


async def test_range_reads_keep_their_connection(
    client: HttpRemote, folder: str, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each range is read to its end, so its connection goes back to the pool: ten small
    reads need no new connection."""
    file = await client.upload(make_file(50_000), folder, "k.bin")
    await client.read(file, 0, 10)  # a connection for the signed URL's host, kept
    opened: list[object] = []
    real = trio.open_tcp_stream

    async def counted(*args: Any, **kwargs: Any) -> trio.SocketStream:
        opened.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(trio, "open_tcp_stream", counted)
    for offset in range(0, 50_000, 5_000):
        assert len(await client.read(file, offset, 5_000)) == 5_000
    assert opened == []


def offsets_asked(
    client: StorageRemote,
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int = -1,
    then: Callable[[], Any] | None = None,
) -> list[int]:
    """Record the offset of every listing page asked for; `fail_at`: that page fails,
    `then`: awaited once the first page arrived."""
    asked: list[int] = []
    call = client.transport.call

    async def recording(method: str, path: str, **kw: Any) -> dict[str, Any]:
        offset = kw["params"]["offset"] if path == "files/storage/files" else None
        if offset is not None:
            asked.append(offset)
            if offset == fail_at:
                raise errors.Unavailable("the service is down", status=503)
        doc = await call(method, path, **kw)
        if offset == 0 and then is not None:
            await then()
        return doc

    monkeypatch.setattr(client.transport, "call", recording)
    return asked


async def test_a_listing_of_many_pages_has_every_file_once(
    client: HttpRemote, folder: str, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(client, StorageRemote)
    source = make_file(10)
    keys = {(await client.upload(source, folder, f"f{i}.bin")).key for i in range(10)}
    client._page = 3
    asked = offsets_asked(client, monkeypatch)
    assert sorted(f.key for f in await client.list_folder(folder)) == sorted(keys)
    assert sorted(asked) == [0, 3, 6, 9]


async def test_a_page_that_fails_fails_the_listing_with_its_own_error(
    client: HttpRemote, folder: str, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages are asked for two at a time: the error is still the service's, not a group."""
    assert isinstance(client, StorageRemote)
    source = make_file(10)
    for i in range(10):
        await client.upload(source, folder, f"f{i}.bin")
    client._page = 3
    offsets_asked(client, monkeypatch, fail_at=6)
    with pytest.raises(errors.Unavailable):
        await client.list_folder(folder)


async def test_a_folder_that_grows_while_it_is_listed_loses_no_file(
    client: HttpRemote, folder: str, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newest first: files added after the first page push the others to later offsets,
    past the total the first page gave."""
    assert isinstance(client, StorageRemote)
    source = make_file(10)
    keys = {(await client.upload(source, folder, f"f{i}.bin")).key for i in range(7)}
    client._page = 3

    async def add() -> None:
        for i in range(4):
            await client.upload(source, folder, f"new{i}.bin")

    asked = offsets_asked(client, monkeypatch, then=add)
    listed = [f.key for f in await client.list_folder(folder)]
    assert len(listed) == len(set(listed))
    assert keys <= set(listed)
    assert max(asked) >= 9  # beyond the 7 the first page counted
