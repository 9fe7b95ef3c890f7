"""A real `stowfs serve` in a subprocess on 127.0.0.1, port 0, for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STOWFS = [sys.executable, "-m", "stowfs"]


def stowfs_cmd(*args: str) -> list[str]:
    return [*STOWFS, *args]


@dataclass
class LiveServer:
    data_dir: Path
    proc: subprocess.Popen[str]
    base_url: str
    _teams: int = field(default=0)

    def new_key(self, team: str | None = None, plan: str = "pro") -> str:
        if team is None:
            self._teams += 1
            team = f"team{self._teams}-{os.getpid()}-{time.monotonic_ns()}"
        return create_key(self.data_dir, team, plan)

    def stop(self) -> None:
        stop_process(self.proc, grace=0)


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """Wait `grace` seconds for a clean exit, then terminate, then kill."""
    try:
        proc.wait(grace)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def create_key(data_dir: Path, team: str, plan: str = "pro") -> str:
    out = subprocess.run(
        stowfs_cmd("keys", "create", "--data", str(data_dir), "--team", team, "--plan", plan),
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def start_server(data_dir: Path, *extra: str, timeout: float = 30) -> LiveServer:
    """Start a server; returns once it printed its base URL (it accepts connections then)."""
    proc = subprocess.Popen(
        stowfs_cmd("serve", "--data", str(data_dir), "--listen", "127.0.0.1:0", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # blocks until ready or the process exits
    if not line.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"server did not start (exit {proc.wait(timeout)}): {line!r}")
    return LiveServer(data_dir, proc, line)
