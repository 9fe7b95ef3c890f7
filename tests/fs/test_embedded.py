"""The embedded default: `stowfs mount DIR` with no remote runs its own local server."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fs.mountfix import wait_for
from tests.livesrv import stowfs_cmd


def serve_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if " serve " in cmdline and marker in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class Local:
    """A user whose data and cache dirs are under `tmp`: `stowfs` runs as them."""

    tmp: Path
    data: Path

    @property
    def env(self) -> dict[str, str]:
        cache = str(self.tmp / "cache")
        return {**os.environ, "XDG_DATA_HOME": str(self.data), "XDG_CACHE_HOME": cache}

    @property
    def mnt(self) -> Path:
        path = self.tmp / "mnt"
        path.mkdir(exist_ok=True)
        return path

    def stowfs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(stowfs_cmd(*args), env=self.env, capture_output=True, text=True)

    def servers(self) -> list[int]:
        return serve_processes(str(self.tmp))


@pytest.fixture
def local(tmp_path: Path) -> Local:
    return Local(tmp_path, tmp_path / "data")


def test_mount_without_remote_uses_the_local_store(local: Local) -> None:
    mnt = local.mnt
    for round_ in range(2):  # the second mount finds the first one's key and data
        done = local.stowfs("mount", str(mnt))
        assert done.returncode == 0, done.stderr
        try:
            assert os.path.ismount(mnt)
            if round_ == 0:
                (mnt / "hello.txt").write_text("local")
            else:
                assert (mnt / "hello.txt").read_text() == "local"
            assert local.servers()  # its own server process
        finally:
            done = local.stowfs("unmount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(mnt)
        wait_for(lambda: not local.servers(), 20, "the server to end")
    key_file = local.data / "stowfs/local/local.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_local_store_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    local = Local(tmp_path, tmp_path / "a-file")
    done = local.stowfs("mount", str(local.mnt))
    assert done.returncode == 1
    assert done.stderr == f"stowfs: {tmp_path}/a-file/stowfs/local: Not a directory\n"
    assert not os.path.ismount(local.mnt)


def test_the_local_store_server_is_started_again_if_it_dies(local: Local) -> None:
    mnt = local.mnt
    done = local.stowfs("mount", str(mnt))
    assert done.returncode == 0, done.stderr
    try:
        (mnt / "before.txt").write_text("1")
        [first] = local.servers()
        os.kill(first, signal.SIGKILL)  # as the OOM killer would
        wait_for(lambda: local.servers() not in ([], [first]), 30, "a new server")
        (mnt / "after.txt").write_text("2")  # the same port: the mount's URLs still work
        assert sorted(os.listdir(mnt)) == ["after.txt", "before.txt"]
        assert (mnt / "before.txt").read_text() == "1"
    finally:
        done = local.stowfs("unmount", str(mnt))
    assert done.returncode == 0
    wait_for(lambda: not local.servers(), 20, "the server to end")
    log = next((local.tmp / "cache").rglob("mount.log")).read_text()
    assert "the local store's server exited (-9): starting it again" in log


def test_ctrl_c_in_a_terminal_leaves_the_server_to_finish_the_uploads(local: Local) -> None:
    """A Ctrl-C reaches the whole foreground process group: the mount unmounts, and its
    pending uploads still have their server."""
    mnt = local.mnt
    log = local.tmp / "mount.log"
    with open(log, "wb") as out:
        cmd = stowfs_cmd("mount", "-f", "--write-back", "600", str(mnt))
        proc = subprocess.Popen(cmd, env=local.env, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_for(lambda: os.path.ismount(mnt), 30, "the mount")
        (mnt / "pending.txt").write_text("written back")
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert "all pending uploads finished" in log.read_text()
    wait_for(lambda: not local.servers(), 20, "the server to end")


def test_uploads_pending_at_unmount_wait_for_the_server_started_again(local: Local) -> None:
    """The server dies just before an unmount with uploads pending: its keeper goes on
    through the unmount's uploads, which land once it is back."""
    mnt = local.mnt
    done = local.stowfs("mount", "--write-back", "600", str(mnt))
    assert done.returncode == 0, done.stderr
    try:
        (mnt / "pending.txt").write_text("written back")
        [server] = local.servers()
        os.kill(server, signal.SIGKILL)
    finally:
        done = local.stowfs("unmount", str(mnt))
    assert done.returncode == 0, done.stderr
    log = next((local.tmp / "cache").rglob("mount.log")).read_text()
    assert "all pending uploads finished" in log
    wait_for(lambda: not local.servers(), 20, "the server to end")
