"""The embedded default: `stowfs mount DIR` with no remote runs its own local server."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

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


def test_mount_without_remote_uses_the_local_store(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def stowfs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(stowfs_cmd(*args), env=env, capture_output=True, text=True)

    for round_ in range(2):  # the second mount finds the first one's key and data
        done = stowfs("mount", str(mnt))
        assert done.returncode == 0, done.stderr
        try:
            assert os.path.ismount(mnt)
            if round_ == 0:
                (mnt / "hello.txt").write_text("local")
            else:
                assert (mnt / "hello.txt").read_text() == "local"
            assert serve_processes(str(tmp_path))  # its own server process
        finally:
            done = stowfs("unmount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(mnt)
        wait_for(lambda: not serve_processes(str(tmp_path)), 20, "the server to end")
    key_file = tmp_path / "data/stowfs/local/local.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_local_store_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "a-file"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(stowfs_cmd("mount", str(mnt)), env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == f"stowfs: {tmp_path}/a-file/stowfs/local: Not a directory\n"
    assert not os.path.ismount(mnt)


def test_the_local_store_server_is_started_again_if_it_dies(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(stowfs_cmd("mount", str(mnt)), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    try:
        (mnt / "before.txt").write_text("1")
        [first] = serve_processes(str(tmp_path))
        os.kill(first, signal.SIGKILL)  # as the OOM killer would
        wait_for(lambda: serve_processes(str(tmp_path)) not in ([], [first]), 30, "a new server")
        (mnt / "after.txt").write_text("2")  # the same port: the mount's URLs still work
        assert sorted(os.listdir(mnt)) == ["after.txt", "before.txt"]
        assert (mnt / "before.txt").read_text() == "1"
    finally:
        done = subprocess.run(
            stowfs_cmd("unmount", str(mnt)), env=env, capture_output=True, text=True
        )
    assert done.returncode == 0
    wait_for(lambda: not serve_processes(str(tmp_path)), 20, "the server to end")
    log = next((tmp_path / "cache").rglob("mount.log")).read_text()
    assert "the local store's server exited (-9): starting it again" in log


def test_ctrl_c_in_a_terminal_leaves_the_server_to_finish_the_uploads(tmp_path: Path) -> None:
    """A Ctrl-C reaches the whole foreground process group: the mount unmounts, and its
    pending uploads still have their server."""
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "mount.log"
    with open(log, "wb") as out:
        cmd = stowfs_cmd("mount", "-f", "--write-back", "600", str(mnt))
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
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
    wait_for(lambda: not serve_processes(str(tmp_path)), 20, "the server to end")
