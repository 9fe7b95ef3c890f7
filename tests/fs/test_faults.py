"""Faults with a real mount: the server goes down and comes back; random writes
through the mount against a local reference copy, also after a remount."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fs.mountfix import Mount, drop_page_cache, new_mount, wait_for
from tests.livesrv import LiveServer, create_key, start_server


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A server of this test's own, which the test may stop and restart."""
    server = start_server(tmp_path / "srv")
    try:
        yield server
    finally:
        server.stop()


def test_server_down_reads_cached_data_and_keeps_writes(
    own_server: LiveServer, tmp_path: Path
) -> None:
    key = create_key(own_server.data_dir, "faults")
    m = new_mount(tmp_path, own_server.base_url, key)
    m.start()
    try:
        data = os.urandom(3 * 1024 * 1024)
        (m.path / "cached.bin").write_bytes(data)
        drop_page_cache(m.path / "cached.bin")
        assert (m.path / "cached.bin").read_bytes() == data  # now in the block cache

        port = own_server.base_url.split(":")[2].split("/")[0]
        own_server.stop()
        drop_page_cache(m.path / "cached.bin")
        assert (m.path / "cached.bin").read_bytes() == data  # offline, from the cache
        assert "cached.bin" in os.listdir(m.path)

        done = subprocess.run(
            ["cp", "/proc/self/status", str(m.path / "new.txt")], capture_output=True, text=True
        )
        assert done.returncode != 0
        assert "Input/output error" in done.stderr
        kept = (m.path / "new.txt").read_bytes()  # nothing lost: still there locally
        assert kept

        server = start_server(own_server.data_dir, "--listen", f"127.0.0.1:{port}")
        own_server.proc = server.proc  # the fixture stops it
        wait_for(lambda: any(f["filename"] == "new.txt" for f in m.remote_files()), 30, "retry")
        assert m.remote_bytes(m.remote_file("new.txt")) == kept
    finally:
        m.unmount()


class Reference:
    """Random writes, appends and truncates through the mount and on a local copy."""

    def __init__(self, rng: random.Random, mnt: Path, ref: Path) -> None:
        self.rng, self.mnt, self.ref = rng, mnt, ref

    def step(self, name: str) -> None:
        op = self.rng.choice(["write", "append", "truncate", "rewrite"])
        size = (self.ref / name).stat().st_size if (self.ref / name).exists() else 0
        chunk = self.rng.randbytes(self.rng.randint(1, 200_000))
        offset = self.rng.randint(0, size + 1000)
        for root in (self.mnt, self.ref):
            path = root / name
            if op == "rewrite" or not path.exists():
                path.write_bytes(chunk)
            elif op == "append":
                with open(path, "ab") as f:
                    f.write(chunk)
            elif op == "truncate":
                os.truncate(path, offset)
            else:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, chunk, min(offset, size))
                finally:
                    os.close(fd)

    def check(self, m: Mount) -> None:
        for path in sorted(self.ref.iterdir()):
            drop_page_cache(self.mnt / path.name)
            assert (self.mnt / path.name).read_bytes() == path.read_bytes(), path.name


def test_random_writes_match_a_reference(live_server: LiveServer, tmp_path: Path) -> None:
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    ref = tmp_path / "ref"
    ref.mkdir()
    m.start()
    try:
        model = Reference(random.Random(20261121), m.path, ref)
        for _ in range(40):
            model.step(model.rng.choice(["a", "b", "c"]))
        model.check(m)
        m.unmount()
        m.start()
        model.check(m)
        for path in ref.iterdir():
            assert m.remote_bytes(m.remote_file(path.name)) == path.read_bytes()
    finally:
        m.unmount()
