"""The embedded default: the reference server as a child process on loopback over the
local data dir, with a generated key kept in a 0600 file there. Several mounts (and
sync daemons) may share the data dir; each runs its own server process, which ends
with its parent (PR_SET_PDEATHSIG, so even a kill -9 of the parent ends it) and which
its parent starts again if it dies first (`LocalServer.keep_up`)."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import trio

from . import paths
from .errors import ConfigError

log = logging.getLogger(__name__)

KEY_FILE = "local.key"
PLAN = "enterprise"
TEAM = "local"
PR_SET_PDEATHSIG = 1
RESTART_DELAY = 1.0  # seconds before starting a server again that failed to start
RESTART_DELAY_MAX = 60.0


def _stowfs(*args: str) -> list[str]:
    return [sys.executable, "-m", "stowfs", *args]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def local_key(data_dir: Path) -> str:
    """The embedded store's key, created on first use (under a lock: mounts may race)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    with open(data_dir / ".key.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path.read_text().strip()
        out = subprocess.run(
            # The local store is the user's own disk: the largest plan, so df shows 1 TB.
            _stowfs("keys", "create", "--data", str(data_dir), "--team", TEAM, "--plan", PLAN),
            capture_output=True,
            text=True,
            check=False,
        )
        key = out.stdout.strip()
        if out.returncode != 0 or not key:
            raise ConfigError(f"cannot create a key for the local store: {out.stderr.strip()}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key


@dataclass
class LocalServer:
    data_dir: Path
    proc: subprocess.Popen[str]
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def keep_up(self) -> None:
        """Start the server again whenever it exits (a crash, the OOM killer), on the same
        port: the mount's URLs name it. Runs until cancelled; a failure of its own ends
        the keeping, not the mount."""
        try:
            await self._keep_up()
        except Exception:
            log.exception("the local store's server is no longer kept up")

    async def _keep_up(self) -> None:
        port = urlsplit(self.url).port
        delay, up_since = RESTART_DELAY, trio.current_time()
        while True:
            with os.fdopen(os.pidfd_open(self.proc.pid), "rb", buffering=0) as pidfd:
                await trio.lowlevel.wait_readable(pidfd)  # readable once the process ended
            log.warning("the local store's server exited (%s): starting it again", self.proc.wait())
            if trio.current_time() - up_since > RESTART_DELAY_MAX:
                delay = RESTART_DELAY  # it had stayed up a while: at once
            else:
                await trio.sleep(delay)  # it keeps dying: not in a loop
                delay = min(delay * 2, RESTART_DELAY_MAX)
            while True:
                # Started from this thread: the child's PDEATHSIG follows the thread that
                # forked it, and a worker thread ends when idle.
                self.proc = _launch(self.data_dir, port)
                try:
                    await trio.to_thread.run_sync(_ready, self.proc)
                    break
                except ConfigError as exc:
                    log.warning("%s; trying again in %.0f s", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)
            up_since = trio.current_time()


def _launch(data_dir: Path, port: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _stowfs("serve", "--data", str(data_dir), "--listen", f"127.0.0.1:{port or 0}"),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=_die_with_parent,  # only prctl: safe in the forked child
        # Not in the terminal's process group: a Ctrl-C is the mount's to handle, and its
        # pending uploads need the server.
        start_new_session=True,
    )


def _ready(proc: subprocess.Popen[str]) -> str:
    """The server's base URL, once it printed it (it accepts connections then)."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # blocks until ready or the process exits
    if not line.startswith("http"):
        proc.kill()
        proc.wait()
        raise ConfigError(f"the local store's server did not start (exit {proc.returncode})")
    return line


def start_local_server(data_dir: Path | None = None) -> LocalServer:
    data_dir = data_dir or paths.local_server_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = _launch(data_dir)
    return LocalServer(data_dir, proc, _ready(proc))
