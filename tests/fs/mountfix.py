"""Real mounts for the tests: `stowfs mount -f` (or background mode) as a subprocess
against a live server, with a deadline, failing fast if the process dies."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.livesrv import stop_process, stowfs_cmd

START_TIMEOUT = 30.0


def drop_page_cache(path: Path) -> None:
    """Make the next read of `path` come from the mount, not the kernel's pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, max_pause: float = 0.02
) -> None:
    """Poll `predicate` until it holds; the pauses grow from 10 ms to `max_pause`."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 1.5, max_pause)


@dataclass
class Mount:
    path: Path
    cache: Path
    log: Path
    base_url: str
    key: str
    key_file: Path
    args: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    options: tuple[str, ...] = ()  # of stowfs itself, before `mount` (-v: log requests)
    pid: int | None = None  # background mode: the detached process
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    # -- the server's view -------------------------------------------------------------
    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.key}, timeout=30)

    def remote_files(self, folder: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 1000}
        if folder is not None:
            params["folder"] = folder
        with self.api() as api:
            r = api.get("/files/storage/files", params=params)
            r.raise_for_status()
            files: list[dict[str, Any]] = r.json()["files"]
            return files

    def remote_bytes(self, record: dict[str, Any]) -> bytes:
        with self.api() as api:
            r = api.get(record["file_url"])
            r.raise_for_status()
            return r.content

    def remote_file(self, path: str) -> dict[str, Any]:
        folder, _, name = path.rpartition("/")
        found = [f for f in self.remote_files(folder) if f["filename"] == name]
        assert len(found) == 1, found
        return found[0]

    # -- life cycle --------------------------------------------------------------------
    def command(self, *extra: str) -> list[str]:
        return stowfs_cmd(
            *self.options,
            "mount",
            *self.args,
            str(self.path),
            "--url",
            self.base_url,
            "--key-file",
            str(self.key_file),
            "--cache-dir",
            str(self.cache),
            "--dir-cache-time",
            "1",
            "--retry-time",
            "2",
            *extra,
        )

    def start(self, *extra: str, foreground: bool = True) -> None:
        if not foreground:
            done = subprocess.run(self.command(*extra), capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            assert os.path.ismount(self.path)  # ready when the command returns
            self.pid = int(os.getxattr(self.path, "user.stowfs.pid"))
            return
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [*self.command(*extra), "-f"], stdout=logf, stderr=logf, env=self.env
            )
        proc = self.proc

        def ready() -> bool:
            """This process's mount answers: not a dead one left on the mountpoint, which
            a stat can still find mounted (from the kernel's cache)."""
            if proc.poll() is not None:
                raise AssertionError(f"mount exited {proc.returncode}: {self.log.read_text()}")
            try:
                return os.getxattr(self.path, "user.stowfs.pid") == str(proc.pid).encode()
            except OSError:
                return False

        wait_for(ready, START_TIMEOUT, "the mount")

    def unmount(self, timeout: float = 60.0) -> None:
        """fusermount3 -u, falling back to -z; then wait, terminate, kill."""
        if _attached(self.path):
            done = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            if done.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.proc is not None:
            stop_process(self.proc, grace=timeout)
            self.proc = None
        if self.pid is not None:
            wait_for(lambda: not _alive(self.pid), timeout, "the mount process")  # type: ignore[arg-type]
            self.pid = None

    def restart(self, *extra: str, killed: bool) -> None:
        """Mount again, after a clean unmount or (`killed`) a kill -9."""
        if killed:
            self.kill9()
        else:
            self.unmount()
        self.start(*extra)

    def kill9(self, *, clean_up: bool = True) -> None:
        """kill -9 the mount; `clean_up`: also detach the dead mount as a user would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        if clean_up:
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)


def _attached(path: Path) -> bool:
    """Mounted, also by a mount process gone (its mountpoint answers ENOTCONN)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return os.path.ismount(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def new_mount(tmp: Path, base_url: str, key: str, *args: str) -> Mount:
    path = tmp / "mnt"
    path.mkdir(exist_ok=True)
    key_file = tmp / "key"
    key_file.write_text(key)
    return Mount(path, tmp / "cache", tmp / "mount.log", base_url, key, key_file, args)


def xattr_dir(path: Path) -> Path:
    """A new local folder whose files take user xattrs; skips the test where the disk
    has none."""
    path.mkdir()
    try:
        os.setxattr(path, "user.probe", b"1")
    except OSError:
        pytest.skip("no user xattrs on the local disk")
    os.removexattr(path, "user.probe")
    return path
