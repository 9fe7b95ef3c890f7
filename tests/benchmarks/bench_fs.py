"""Benchmark the mount against curl (a script; not collected by pytest).

    .venv/bin/python -m tests.benchmarks.bench_fs [--size-mb 1024] [--files 10000]

Targets (issue fs): sequential read >= 0.75 of curl; cp in (upload done when close
returns) >= 0.5 of curl's upload speed; ls -l of a 10,000-file folder cold < 1 s,
warm < 0.3 s; 1,000 files of 4 KiB copied in >= 890 files/s; peak RSS of the mount
while copying 1 GiB in < 200 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from tests.fs.mountfix import Mount, new_mount
from tests.livesrv import create_key, start_server

MB = 1024 * 1024
FAST = ("--dir-cache-time", "60")  # the fixture's 1 s is for the tests' remote changes


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def curl_upload(m: Mount, source: Path) -> float:
    """The presign dialect's single PUT with curl (its limit caps the size)."""
    size = source.stat().st_size
    with m.api() as api:
        grant = api.post(
            "/files/presign",
            json={"file_name": "curl.bin", "file_size": size, "content_type": "x/bin"},
        ).json()
    headers = [arg for k, v in grant["upload_headers"].items() for arg in ("-H", f"{k}: {v}")]
    cmd = ["curl", "-sf", "-X", "PUT", "-T", str(source), *headers, grant["upload_url"]]
    return timed(lambda: run(*cmd))


async def fill_folder(m: Mount, folder: str, count: int) -> None:
    """`count` small files uploaded by another client, 32 at a time."""
    limiter = trio.CapacityLimiter(32)
    async with httpx.AsyncClient(
        base_url=m.base_url, headers={"X-API-Key": m.key}, timeout=60
    ) as api:

        async def one(i: int) -> None:
            async with limiter:
                body = {"filename": f"f{i:05d}.txt", "folder": folder}
                grant = (await api.post("/files/upload-url", json=body)).json()
                r = await api.post(
                    grant["upload_url"],
                    data=grant["upload_fields"],
                    files={"file": (body["filename"], b"x")},
                    headers={"X-API-Key": ""},
                )
                r.raise_for_status()

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stowfs-bench-"))
    server = start_server(work / "srv")
    m = new_mount(work, server.base_url, create_key(work / "srv", "bench", "enterprise"))
    try:
        big = work / "big.bin"
        with open(big, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(MB))
        size_mb = args.size_mb

        m.start(*FAST)
        assert m.proc is not None
        t_cp = timed(lambda: run("cp", big, m.path / "big.bin"))
        rss = peak_rss_mb(m.proc.pid)
        part = work / "part.bin"
        with open(big, "rb") as src, open(part, "wb") as dst:
            dst.write(src.read(min(size_mb, 400) * MB))
        t_curl_up = curl_upload(m, part) * size_mb / min(size_mb, 400)
        print(
            f"cp in {size_mb} MiB: {size_mb / t_cp:.0f} MiB/s vs curl upload "
            f"{size_mb / t_curl_up:.0f} MiB/s: ratio {t_curl_up / t_cp:.2f} (target >= 0.5)"
        )
        print(f"peak RSS of the mount while copying in: {rss:.0f} MB (target < 200)")

        m.unmount()
        shutil.rmtree(m.cache)  # a cold block cache
        m.start(*FAST)
        url = os.getxattr(m.path / "big.bin", "user.stowfs.url").decode()
        t_curl = timed(lambda: run("curl", "-sf", "-o", "/dev/null", url))
        t_read = timed(lambda: run("cat", m.path / "big.bin"))
        assert m.proc is not None
        read_rss = peak_rss_mb(m.proc.pid)
        print(
            f"sequential read: {size_mb / t_read:.0f} MiB/s vs curl {size_mb / t_curl:.0f}"
            f" MiB/s: ratio {t_curl / t_read:.2f} (target >= 0.75)"
        )
        print(f"peak RSS of the mount while reading: {read_rss:.0f} MB")

        small = work / "small"
        small.mkdir()
        for i in range(1000):
            (small / f"s{i:04d}").write_bytes(os.urandom(4096))
        run("mkdir", m.path / "small")
        t_small = timed(lambda: run("sh", "-c", f"cp {small}/* {m.path}/small/"))
        print(f"1,000 x 4 KiB in, upload on close: {1000 / t_small:.0f} files/s (target >= 890)")
        for delay in ("0", "30"):  # uploads racing the copy, or after it
            m.unmount()
            m.start(*FAST, "--write-back", delay)
            run("mkdir", m.path / f"small-wb{delay}")
            copy = f"cp {small}/* {m.path}/small-wb{delay}/"
            t_small = timed(lambda: run("sh", "-c", copy))  # noqa: B023 - called right here
            print(f"1,000 x 4 KiB in, --write-back {delay}: {1000 / t_small:.0f} files/s")

        trio.run(fill_folder, m, "many", args.files)
        m.unmount()
        m.start(*FAST)
        t_cold = timed(lambda: run("ls", "-l", m.path / "many"))
        t_warm = timed(lambda: run("ls", "-l", m.path / "many"))
        print(
            f"ls -l of {args.files} files: cold {t_cold:.2f} s (target < 1),"
            f" warm {t_warm:.2f} s (target < 0.3)"
        )
    finally:
        m.unmount()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
