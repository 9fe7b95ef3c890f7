"""Client benchmarks: 1 GiB upload and download through stowfs.remote vs curl on the same
URLs in the same run, and small-file uploads per second.

    .venv/bin/python -m tests.benchmarks.bench_client [--mib 1024] [--small 300]

Starts its own server on 127.0.0.1 and prints a table (also written to
tests/benchmarks/results/client.json). Upload: the client's multipart upload (parallel
parts) against curl PUTting the same parts, to URLs signed for the same upload flow,
with the same parallelism. Download: the client's sequential stream and its parallel
ranged `read` (which also holds the bytes in memory) against `curl -o /dev/null` of the
same signed URL. Client and curl alternate; each keeps its best round.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from stowfs.remote import HttpRemote, RemoteFile, open_remote
from tests.livesrv import start_server

RESULTS = Path(__file__).parent / "results" / "client.json"
MiB = 1024 * 1024


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


async def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await fn(*args)
    return time.perf_counter() - start, result


def split_parts(source: Path, part_size: int, work: Path) -> tuple[list[Path], list[Any]]:
    parts, etags = [], []
    with open(source, "rb") as f:
        n = 0
        while data := f.read(part_size):
            n += 1
            path = work / f"part{n:05d}"
            path.write_bytes(data)
            parts.append(path)
            etags.append({"part_number": n, "etag": hashlib.md5(data).hexdigest()})
    return parts, etags


async def curl_upload(client: HttpRemote, source: Path, work: Path) -> float:
    """The same multipart flow (initiate, sign, PUT parts, complete) with curl sending the
    parts; the parts are split and hashed beforehand, untimed."""
    multipart = client.multipart
    assert multipart is not None
    size = source.stat().st_size  # noqa: ASYNC240 (untimed set-up)
    part_size, parallel = multipart.plan(size)
    count = -(-size // part_size)
    parts, etags = split_parts(source, part_size, work)
    transport = client.transport
    start = time.perf_counter()
    doc = (
        await transport.request(
            "POST",
            "uploads/multipart/initiate",
            json={"file_name": "curl.bin", "file_size": size, "folder": "bench"},
        )
    ).json()
    upload_id = doc["upload_id"]
    signed = (
        await transport.request(
            "POST",
            "uploads/multipart/presign-parts",
            json={"upload_id": upload_id, "part_numbers": list(range(1, count + 1))},
        )
    ).json()["parts"]
    args = ["curl", "-sS", "--no-progress-meter", "--fail", "--parallel"]
    args += ["--parallel-max", str(parallel)]
    for part, item in zip(parts, signed, strict=True):
        args += ["-T", str(part), item["upload_url"], "-o", "/dev/null"]
    await trio.run_process(args)
    await transport.request(
        "POST", "uploads/multipart/complete", json={"upload_id": upload_id, "parts": etags}
    )
    elapsed = time.perf_counter() - start
    for part in parts:
        part.unlink()
    return elapsed


async def client_stream(client: HttpRemote, file: RemoteFile) -> int:
    total = 0
    async for chunk in client.stream(file):
        total += len(chunk)
    return total


async def client_parallel(client: HttpRemote, file: RemoteFile) -> int:
    """Whole-file read in 128 MiB calls, each split into parallel sub-ranges."""
    total = 0
    step = 128 * MiB
    for offset in range(0, file.size, step):
        total += len(await client.read(file, offset, step))
    return total


async def curl_download(url: str) -> float:
    start = time.perf_counter()
    await trio.run_process(["curl", "-sS", "--fail", "-o", "/dev/null", url])
    return time.perf_counter() - start


def small_files(work: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = work / f"small{i}.txt"
        path.write_bytes(os.urandom(4096))
        paths.append(path)
    return paths


async def small_uploads(client: HttpRemote, work: Path, count: int, concurrency: int) -> float:
    paths = small_files(work, count)
    limiter = trio.CapacityLimiter(concurrency)

    async def one(path: Path) -> None:
        async with limiter:
            await client.upload(path, "small", path.name)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(one, path)
    return count / (time.perf_counter() - start)


async def run(mib: int, small: int, rounds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="stowfs-bench-"))
    server = start_server(work / "server")
    try:
        key = server.new_key(plan="enterprise")
        client = await open_remote(server.base_url, key)
        source = work / "big.bin"
        make_file(source, mib * MiB)
        size = mib * MiB

        def rate(seconds: float) -> float:
            return size / MiB / seconds

        # Alternate client and curl, keep each one's best round: the machine is shared.
        up_client, up_curl = math.inf, math.inf
        for _ in range(rounds):
            seconds, file = await timed(client.upload, source, "bench", "big.bin")
            up_client = min(up_client, seconds)
            up_curl = min(up_curl, await curl_upload(client, source, work))
        url, _ = await client.fresh_url(file)
        down_curl, down_stream, down_parallel = math.inf, math.inf, math.inf
        for _ in range(rounds + 1):
            down_curl = min(down_curl, await curl_download(url))
            seconds, got = await timed(client_stream, client, file)
            assert got == size
            down_stream = min(down_stream, seconds)
            seconds, got = await timed(client_parallel, client, file)
            assert got == size
            down_parallel = min(down_parallel, seconds)
        per_second = await small_uploads(client, work, small, 16)
        await client.aclose()
        assert client.multipart is not None
        part_size, parallel = client.multipart.plan(size)
        return {
            "file_mib": mib,
            "rounds": rounds,
            "part_size_mib": part_size // MiB,
            "parallel_parts": parallel,
            "upload_client_mib_s": rate(up_client),
            "upload_curl_mib_s": rate(up_curl),
            "upload_ratio": up_curl / up_client,
            "download_curl_mib_s": rate(down_curl),
            "download_stream_mib_s": rate(down_stream),
            "download_parallel_mib_s": rate(down_parallel),
            "download_stream_ratio": down_curl / down_stream,
            "download_parallel_ratio": down_curl / down_parallel,
            "small_uploads_per_s": per_second,
            "cpus": os.cpu_count(),
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the big file")
    parser.add_argument("--small", type=int, default=300, help="number of 4 KiB uploads")
    parser.add_argument("--rounds", type=int, default=2, help="uploads each (best is kept)")
    opts = parser.parse_args()
    results = trio.run(run, opts.mib, opts.small, opts.rounds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for name, value in results.items():
        print(f"{name:26} {value:10.2f}" if isinstance(value, float) else f"{name:26} {value:>10}")


if __name__ == "__main__":
    main()
