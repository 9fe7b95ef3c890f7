"""Faults injected by a loopback proxy: operations succeed or fail cleanly, and nothing is
duplicated or lost."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from stowfs import errors
from stowfs.remote import RetryPolicy, UploadCheckpoint
from stowfs.remote.common import HttpRemote
from tests.remote.conftest import SMALL_PARTS, Open
from tests.remote.faultproxy import FaultProxy

MakeFile = Callable[..., Path]


async def _via(
    open_client: Open, proxy: FaultProxy, dialect: str = "storage", **kw: object
) -> HttpRemote:
    return await open_client(dialect, url=proxy.base_url(), **kw)


async def _only(client: HttpRemote, folder: str) -> list[str]:
    return [f.name for f in await client.list_folder(folder)]


async def test_download_resumes_after_a_cut_body(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    client = await _via(open_client, proxy)
    source = make_file(2 * 1024 * 1024)
    file = await client.upload(source, folder, "d.bin")
    proxy.add("cut_body", "/dl/", method="GET", after_bytes=700_000, times=2)
    data = b"".join([chunk async for chunk in client.stream(file)])
    assert data == source.read_bytes()
    ranges = [s.headers.get("range") for s in proxy.seen if "/dl/" in s.target]
    assert len(ranges) == 3
    assert ranges[0] == f"bytes=0-{file.size - 1}"
    assert ranges[1] == f"bytes=700000-{file.size - 1}"  # resumed where it stopped
    assert ranges[2] == f"bytes=1400000-{file.size - 1}"


async def test_503_bursts_and_429_retry_after(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    client = await _via(open_client, proxy)
    proxy.add("respond", "/files/upload-url", status=503, times=3)
    proxy.add("respond", "/v1/upload", status=503, times=2)
    proxy.add("respond", "/files/storage/files", status=429, headers={"Retry-After": "1"})
    file = await client.upload(make_file(5000), folder, "r.bin")
    start = trio.current_time()
    assert await _only(client, folder) == ["r.bin"]
    assert trio.current_time() - start >= 1.0  # Retry-After was honoured
    assert proxy.count("POST", "/files/upload-url") == 4
    assert proxy.count("POST", "/v1/upload") == 3
    assert (await client.stat(file.key)).size == 5000


async def test_retry_budget_runs_out(open_client: Open, proxy: FaultProxy) -> None:
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05, max_elapsed=5, max_attempts=3)
    client = await _via(open_client, proxy, policy=policy)
    proxy.add("respond", "/files/storage/folders", status=503, times=3)
    with pytest.raises(errors.Unavailable):
        await client.list_folders()
    assert proxy.count("GET", "/files/storage/folders") == 3
    proxy.add("respond", "/files/storage/folders", status=429, headers={"Retry-After": "60"})
    with pytest.raises(errors.RateLimited) as limited:
        await client.list_folders()  # a wait past the budget is not even started
    assert limited.value.retry_after == 60
    proxy.add("respond", "/files/storage/folders", status=404, body=b"{}")
    with pytest.raises(errors.NotFound):
        await client.list_folders()
    assert proxy.count("GET", "/files/storage/folders") == 5  # 4xx: never retried


@pytest.mark.parametrize("action", ["drop_response", "drop_request"])
async def test_lost_upload_answer_leaves_one_object(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile, action: str
) -> None:
    client = await _via(open_client, proxy)
    proxy.add(action, "/v1/upload", method="POST")  # type: ignore[arg-type]
    source = make_file(100_000)
    file = await client.upload(source, folder, "once.bin")
    assert await _only(client, folder) == ["once.bin"]
    assert file.checksum == hashlib.md5(source.read_bytes()).hexdigest()
    # Lost after the server stored it: checked, not sent again. Lost before: sent again.
    assert proxy.count("POST", "/v1/upload") == (1 if action == "drop_response" else 2)


async def test_presign_put_answer_lost(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    client = await _via(open_client, proxy, "presign")
    storage = await open_client()
    proxy.add("drop_response", "/v1/put/", method="PUT")
    source = make_file(64_000)
    file = await client.upload(source, folder, "p.bin")
    listed = await storage.list_folder(folder)
    assert [(f.key, f.checksum) for f in listed] == [(file.key, file.checksum)]
    assert proxy.count("PUT", "/v1/put/") == 2  # the repeat got 412: already there


async def test_multipart_faults_and_lost_complete(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    client = await _via(open_client, proxy, tuning=SMALL_PARTS)
    proxy.add("drop_response", "/v1/part/", method="PUT")
    proxy.add("respond", "/v1/part/", method="PUT", status=503, times=2)
    proxy.add("drop_response", "/uploads/multipart/complete")
    source = make_file(11 * 1024 * 1024)
    file = await client.upload(source, folder, "mp.bin")
    assert await _only(client, folder) == ["mp.bin"]
    assert file.checksum == hashlib.md5(source.read_bytes()).hexdigest()
    assert proxy.count("POST", "/uploads/multipart/complete") == 2
    assert proxy.count("POST", "/uploads/multipart/initiate") == 1


async def test_multipart_resumes_after_cancel(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    source = make_file(16 * 1024 * 1024)
    saved: list[dict[str, object]] = []
    first = await _via(open_client, proxy, tuning=dataclasses.replace(SMALL_PARTS, part_parallel=1))

    async def persist(cp: UploadCheckpoint) -> None:
        saved.append(cp.to_dict())
        if len(cp.parts) == 2:
            scope.cancel()  # the process dies between parts

    with trio.CancelScope() as scope:
        await first.upload(source, folder, "resume.bin", on_checkpoint=persist)
    assert scope.cancelled_caught
    await first.aclose()
    checkpoint = UploadCheckpoint.from_dict(saved[-1])
    assert sorted(checkpoint.parts) == [1, 2]
    sent_before = proxy.count("PUT", "/v1/part/")

    second = await _via(open_client, proxy, tuning=SMALL_PARTS)
    file = await second.upload(source, folder, "resume.bin", checkpoint=checkpoint)
    assert proxy.count("PUT", "/v1/part/") - sent_before == 2  # only parts 3 and 4
    assert proxy.count("POST", "/uploads/multipart/initiate") == 1
    listed = await second.list_folder(folder)
    assert [f.key for f in listed] == [file.key]
    assert await second.read(file, 0, file.size) == source.read_bytes()


async def test_changed_source_restarts_the_upload(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    client = await _via(open_client, proxy, tuning=SMALL_PARTS)
    source = make_file(6 * 1024 * 1024)
    stale = UploadCheckpoint("gone-upload", "k", 123, 5 * 1024 * 1024, {1: "x"}, 1)
    file = await client.upload(source, folder, "c.bin", checkpoint=stale)
    assert await _only(client, folder) == ["c.bin"]
    assert file.size == 6 * 1024 * 1024
    assert proxy.count("POST", "/uploads/multipart/abort") == 1


async def test_lost_answers_to_move_and_delete(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    client = await _via(open_client, proxy)
    file = await client.upload(make_file(1000), folder, "m.bin")
    proxy.add("drop_response", "/files/storage/file/move")
    moved = await client.move(file, folder, "n.bin")
    assert moved.name == "n.bin"
    assert await _only(client, folder) == ["n.bin"]
    assert proxy.count("POST", "/files/storage/file/move") == 1
    proxy.add("drop_response", "/files/storage/file", method="DELETE")
    await client.delete(moved.key)  # the repeat's 404 means the first one worked
    assert await _only(client, folder) == []


async def test_url_renewed_on_403_and_before_expiry(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    skew = [0.0]
    client = await _via(open_client, proxy, wall_clock=lambda: time.time() + skew[0])
    source = make_file(3 * 1024 * 1024)
    data = source.read_bytes()
    file = await client.upload(source, folder, "u.bin")
    stats = proxy.count("GET", "/files/storage/file/")

    # A tampered URL: 403, renewed through stat, read goes on.
    proxy.add("tamper", "/dl/", method="GET")
    assert await client.read(file, 0, 1000) == data[:1000]
    assert proxy.count("GET", "/files/storage/file/") == stats + 1

    # A long read: the stream breaks, and meanwhile the URL is about to expire; the
    # resume renews the URL first, and the bytes are whole.
    proxy.add("cut_body", "/dl/", method="GET", after_bytes=1_000_000)
    received = bytearray()
    async for chunk in client.stream(file):
        received += chunk
        if len(received) >= 500_000 and skew[0] == 0.0:
            url_expires = (await client.fresh_url(file, 0))[1]
            skew[0] = url_expires - time.time() - 10  # 10 s left
    assert bytes(received) == data
    assert proxy.count("GET", "/files/storage/file/") == stats + 2  # renewed once more


async def test_refused_parts_raise_one_error_and_abort(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    client = await _via(open_client, proxy, tuning=SMALL_PARTS)
    proxy.add("respond", "/v1/part/", method="PUT", status=403, times=20)
    with pytest.raises(errors.Forbidden):  # not an ExceptionGroup from the part workers
        await client.upload(make_file(11 * 1024 * 1024), folder, "no.bin")
    assert proxy.count("POST", "/uploads/multipart/abort") == 1
    assert await _only(client, folder) == []


async def test_slow_answers_time_out_and_are_retried(
    open_client: Open, proxy: FaultProxy, folder: str
) -> None:
    import httpx

    client = await _via(open_client, proxy, timeout=httpx.Timeout(5.0, read=0.5))
    proxy.add("delay", "/files/storage/folders", method="GET", delay=0.2)  # slow but in time
    proxy.add("delay", "/files/storage/folders", method="GET", delay=2.0)  # past the read timeout
    await client.mkdir(f"{folder}/sub")
    expected = [f"{folder}/sub"]
    assert [f.path for f in await client.list_folders(folder)] == expected
    assert [f.path for f in await client.list_folders(folder)] == expected
    assert proxy.count("GET", "/files/storage/folders") == 3  # the late one was asked again


async def test_a_web_page_is_not_a_storage_service(open_client: Open, proxy: FaultProxy) -> None:
    page = {"status": 200, "body": b"<html>hello</html>", "headers": {"Content-Type": "text/html"}}
    proxy.add("respond", "/v1/", times=10, **page)
    client = await _via(open_client, proxy)  # no capabilities document: a plain provider
    assert not client.info.described
    with pytest.raises(errors.ProtocolError, match="wrong URL or dialect"):
        await client.verify()
    with pytest.raises(errors.ProtocolError):
        await client.list_folders()


async def test_an_answer_cut_in_its_body_is_a_broken_connection(
    open_client: Open, proxy: FaultProxy, folder: str, make_file: MakeFile
) -> None:
    """The server dies while it sends an answer's body: a call safe to repeat is repeated,
    an upload's answer lost so is settled by looking. httpx's own error escaped instead,
    and ended the mount that made the call."""
    client = await open_client(url=proxy.base_url())
    cuts = [
        proxy.add("cut_body", "/files/upload-url", after_bytes=10),
        proxy.add("cut_body", "/v1/upload", method="POST", after_bytes=10),
    ]
    file = await client.upload(make_file(5000), folder, "f.bin")
    cuts.append(proxy.add("cut_body", "/files/storage/file/metadata", after_bytes=5))
    assert (await client.patch_metadata(file.key, {"seed": 1})).metadata["seed"] == 1
    assert [r.times for r in cuts] == [0, 0, 0]
    assert [f.key for f in await client.list_folder(folder)] == [file.key]
