"""The blob store on its own: received and joined bytes, their size and MD5, and no
temp file left behind by a failure."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from starlette.requests import ClientDisconnect

from stowfs.server import blobs
from stowfs.server.blobs import COPY_CHUNK, SMALL_FILE, BlobStore, Received, TooLarge

# Around and across the COPY_CHUNK buffers, with empty and one-byte pieces.
ODD_SIZES = [1, 65536, 0, 3, COPY_CHUNK - 5, COPY_CHUNK + 7, 2 * COPY_CHUNK + 1, 12345]


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def temp_files(store: BlobStore) -> list[Path]:
    return list(store.tmp.iterdir())


async def chunks_of(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def check(received: Received, data: bytes, store: BlobStore) -> None:
    assert received.size == len(data)
    assert received.md5 == hashlib.md5(data).hexdigest()
    assert received.path.parent == store.tmp
    assert received.path.read_bytes() == data


async def test_receive_stream_of_odd_chunks(store: BlobStore) -> None:
    pieces = [os.urandom(n) for n in ODD_SIZES]
    data = b"".join(pieces)
    check(await store.receive_stream(chunks_of(pieces), len(data)), data, store)


async def test_receive_empty_stream(store: BlobStore) -> None:
    check(await store.receive_stream(chunks_of([]), 0), b"", store)


async def test_receive_stream_limit(store: BlobStore) -> None:
    data = os.urandom(COPY_CHUNK + 100)
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    received = await store.receive_stream(chunks_of(pieces), len(data))
    check(received, data, store)
    with pytest.raises(TooLarge):
        await store.receive_stream(chunks_of(pieces), len(data) - 1)
    assert temp_files(store) == [received.path]


async def test_body_error_is_raised_as_itself(store: BlobStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(COPY_CHUNK + 1)  # a buffer goes to the writer first
        raise ClientDisconnect

    with pytest.raises(ClientDisconnect):
        await store.receive_stream(broken(), 10 * COPY_CHUNK)
    assert temp_files(store) == []


async def test_write_error_is_raised_as_itself(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Full(io.FileIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blobs, "open_new", lambda path: Full(path, "wb"))
    pieces = [b"x" * 65536] * 200
    with pytest.raises(OSError) as failed:
        await store.receive_stream(chunks_of(pieces), 10 * COPY_CHUNK)
    assert failed.value.errno == errno.ENOSPC
    assert temp_files(store) == []


async def test_cancelled_receive_leaves_no_temp_file(store: BlobStore) -> None:
    receiving = trio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield os.urandom(COPY_CHUNK + 1)
        receiving.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def run() -> None:
            await store.receive_stream(stalled(), 10 * COPY_CHUNK)

        nursery.start_soon(run)
        await receiving.wait()
        assert len(temp_files(store)) == 1
        nursery.cancel_scope.cancel()
    assert temp_files(store) == []


def write_parts(store: BlobStore, sizes: list[int]) -> tuple[list[Path], bytes]:
    paths, pieces = [], []
    for number, size in enumerate(sizes, 1):
        path = store.part_path("up", number)
        path.parent.mkdir(parents=True, exist_ok=True)
        piece = os.urandom(size)
        path.write_bytes(piece)
        paths.append(path)
        pieces.append(piece)
    return paths, b"".join(pieces)


async def test_concat_parts_of_odd_sizes(store: BlobStore) -> None:
    paths, data = write_parts(store, ODD_SIZES)
    check(await store.concat(paths), data, store)
    assert b"".join(p.read_bytes() for p in paths) == data  # the parts are left as they were


async def test_concat_of_a_missing_part(store: BlobStore) -> None:
    paths, _ = write_parts(store, [10, 20])
    paths[1].unlink()
    with pytest.raises(FileNotFoundError):
        await store.concat(paths)
    assert temp_files(store) == []


@pytest.mark.parametrize("error", [errno.EXDEV, errno.ENOSYS])
async def test_concat_where_copy_file_range_cannot(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    def refuse(*args: object) -> int:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    paths, data = write_parts(store, ODD_SIZES)
    check(await store.concat(paths), data, store)


async def test_concat_copy_error(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "copy_file_range", fail)
    paths, _ = write_parts(store, [10, 20])
    with pytest.raises(OSError) as failed:
        await store.concat(paths)
    assert failed.value.errno == errno.EIO
    assert temp_files(store) == []


# in memory (one read), the largest copied in one read, on disk (the kernel's copy)
@pytest.mark.parametrize("size", [1000, SMALL_FILE, 3 * COPY_CHUNK + 5])
async def test_receive_spooled_file(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as spool:
        spool.write(data)
        spool.seek(0)
        check(await store.receive_file(spool), data, store)
