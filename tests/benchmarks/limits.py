"""The physical limits the mounts are held against: curl downloading and uploading the big
file to the reference server and to nginx, stowfs's own client doing the same, the local
disk, and the kernel filling its page cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from stowfs.remote import HttpRemote, RemoteFile
from tests.benchmarks.bench_client import (
    client_stream,
    curl_download,
    curl_upload,
    split_parts,
    timed,
)
from tests.benchmarks.peers import START_TIMEOUT, unmount
from tests.benchmarks.report import FILL_AGAIN, FILL_IDLE, IDLE, NULL_FS
from tests.benchmarks.workloads import Layout, seq_read, timed_run
from tests.fs.mountfix import wait_for

Record = Callable[[str, str, float], None]  # (measure, system, value)
CHUNK = 1024 * 1024
TMPFS = Path("/dev/shm")


def read_file(path: Path, cold: bool) -> float:
    """Seconds to read `path`; `cold` first drops its pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if cold:
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        while os.read(fd, CHUNK):
            pass
        return time.perf_counter() - start
    finally:
        os.close(fd)


def disk(path: Path, record: Record) -> None:
    size = path.stat().st_size
    record("disk_read", "local disk, cold", size / read_file(path, cold=True) / 1e6)
    record("disk_read", "local disk, warm", size / read_file(path, cold=False) / 1e6)


def page_fill(size: int, record: Record) -> None:
    """A read through any mount fills the kernel's page cache (curl to /dev/null fills
    nothing). Timed as a tmpfs file written: after the machine sat idle (on a VM that
    reports free pages to its host, the host must hand the memory back first), then at
    once again, into the pages just freed."""
    if not TMPFS.is_dir():
        return
    path = TMPFS / f"stowfs-bench-fill-{os.getpid()}"
    block = b"\1" * CHUNK
    time.sleep(IDLE)  # the condition measured, not a wait for something
    for system in (FILL_IDLE, FILL_AGAIN):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            start = time.perf_counter()
            for _ in range(size // CHUNK):
                os.write(fd, block)
            elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
            path.unlink()
        record("page_fill", system, size / elapsed / 1e6)


async def nginx_upload(client: HttpRemote, source: Path, base_url: str, work: Path) -> float:
    """curl PUTting the same parts as `curl_upload`, with the same parallelism, to nginx."""
    size = source.stat().st_size  # noqa: ASYNC240 (untimed set-up)
    assert client.multipart is not None
    part_size, parallel = client.multipart.plan(size)
    parts, _ = split_parts(source, part_size, work)
    args = ["curl", "-sS", "--no-progress-meter", "--fail", "--parallel"]
    args += ["--parallel-max", str(parallel)]
    for part in parts:
        args += ["-T", str(part), f"{base_url}/upload/{part.name}", "-o", "/dev/null"]
    start = time.perf_counter()
    await trio.run_process(args)
    elapsed = time.perf_counter() - start
    for part in parts:
        part.unlink()
    return elapsed


async def transfers(
    client: HttpRemote, file: RemoteFile, source: Path, nginx_url: str, work: Path, record: Record
) -> None:
    """One round of downloads then uploads of the big file, each side in turn."""
    mb = file.size / 1e6
    url, _ = await client.fresh_url(file)
    record("download", "curl → server", mb / await curl_download(url))
    record("download", "curl → nginx", mb / await curl_download(f"{nginx_url}/blob.bin"))
    seconds, got = await timed(client_stream, client, file)
    assert got == file.size, got
    record("download", "stowfs client", mb / seconds)
    record("upload", "curl → server", mb / await curl_upload(client, source, work))
    record("upload", "curl → nginx", mb / await nginx_upload(client, source, nginx_url, work))
    seconds, _ = await timed(client.upload, source, "bench", source.name)
    record("upload", "stowfs client", mb / seconds)


def null_fs(layout: Layout, work: Path, record: Record) -> None:
    """The floor of a pyfuse3 + trio mount here: a filesystem that does no work (see
    nullfs.py), read and listed like stowfs: a cold read fills the kernel's page cache,
    and `ls -l` makes two getxattr round trips per entry."""
    path = work / "nullfs"
    path.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "tests.benchmarks.nullfs", str(path), str(layout.big_size)]
    with open(work / "nullfs.log", "ab") as log:
        proc = subprocess.Popen([*cmd, str(len(layout.many_names))], stdout=log, stderr=log)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"nullfs exited {proc.returncode}")
            return os.path.ismount(path)

        wait_for(ready, START_TIMEOUT, "nullfs")
        _, whole = seq_read(path / "big")
        record("null_read", NULL_FS, layout.big_size / whole / 1e6)
        timed_run("ls", "-l", path / "many")  # the kernel learns the entries
        record("null_ls", NULL_FS, timed_run("ls", "-l", path / "many"))
    finally:
        unmount(path, proc)
