"""Faults with a real mount: the server goes down and comes back; parallel copies through
a network that drops and delays; random writes through the mount against a local
reference copy, also after a remount; a folder move the service refuses halfway."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE
from urllib.parse import urlsplit

import pytest

from tests.fs.mountfix import Mount, drop_page_cache, new_mount, wait_for
from tests.livesrv import LiveServer, create_key, start_server
from tests.remote.faultproxy import FaultProxy, proxy_in_thread


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A server of this test's own, which the test may stop and restart."""
    server = start_server(tmp_path / "srv")
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mounted_through_proxy(
    server: LiveServer, tmp_path: Path, *extra: str
) -> Iterator[tuple[FaultProxy, Mount]]:
    """A mount of `server` through a fault proxy (rules added by the test)."""
    port = urlsplit(server.base_url).port
    assert port is not None
    with proxy_in_thread(FaultProxy(port)) as proxy:
        m = new_mount(tmp_path, proxy.base_url(), server.new_key())
        m.start(*extra)
        try:
            yield proxy, m
        finally:
            m.unmount()


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


def test_parallel_copies_through_a_faulty_network_lose_nothing(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """8 cp processes at once while the network drops requests and answers and the
    service answers 503 and 429: every cp succeeds, and each file is stored once, whole."""
    port = urlsplit(live_server.base_url).port
    assert port is not None
    rng = random.Random(7)
    src = tmp_path / "src"
    copied: dict[str, bytes] = {}
    for i in range(8):
        (src / f"d{i}").mkdir(parents=True)
        for j in range(4):
            copied[f"d{i}/f{j}"] = rng.randbytes(rng.randint(1, 300_000))
            (src / f"d{i}/f{j}").write_bytes(copied[f"d{i}/f{j}"])
    with proxy_in_thread(FaultProxy(port)) as proxy:
        m = new_mount(tmp_path, proxy.base_url(), live_server.new_key())
        m.start("--retry-time", "30")
        try:
            rules = [
                proxy.add("drop_response", "/v1/upload", method="POST", times=3),
                proxy.add("drop_request", "/v1/upload", method="POST", times=2),
                proxy.add("respond", "/v1/upload", method="POST", status=503, times=3),
                proxy.add("drop_request", "/files/upload-url", times=2),
                proxy.add("respond", "/files/upload-url", status=429, headers={"Retry-After": "1"}),
                proxy.add("delay", "/files/upload-url", delay=0.5, times=4),
            ]
            cps = [
                subprocess.Popen(["cp", "-r", str(src / f"d{i}"), str(m.path)], stderr=PIPE)
                for i in range(8)
            ]
            for cp in cps:
                _, err = cp.communicate(timeout=120)
                assert cp.returncode == 0, err
            assert [r.times for r in rules] == [0] * len(rules)  # every fault happened
            stored: dict[str, bytes] = {}
            for f in m.remote_files():
                path = f"{f['folder']}/{f['filename']}"
                assert path not in stored, f"{path} is stored twice"
                stored[path] = m.remote_bytes(f)
            assert stored == copied
            for i in range(8):
                assert sorted(os.listdir(m.path / f"d{i}")) == [f"f{j}" for j in range(4)]
        finally:
            m.unmount()
        # Read back on a fresh mount (empty caches) while downloads break.
        (tmp_path / "fresh").mkdir()
        fresh = new_mount(tmp_path / "fresh", proxy.base_url(), m.key)
        fresh.start("--retry-time", "30")
        try:
            rules = [
                proxy.add("cut_body", "/v1/dl/", after_bytes=1000, times=3),
                proxy.add("respond", "/v1/dl/", status=503, times=2),
                proxy.add("drop_request", "/v1/dl/"),
            ]
            cat = subprocess.run(
                ["cat", *sorted(copied)], cwd=fresh.path, capture_output=True, timeout=120
            )
            assert cat.returncode == 0, cat.stderr
            assert cat.stdout == b"".join(copied[path] for path in sorted(copied))
            assert [r.times for r in rules] == [0] * len(rules)
        finally:
            fresh.unmount()


def test_a_folder_rename_refused_halfway_is_put_back(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """`mv` of a folder whose second file the service refuses to move: mv fails, and the
    folder is whole where it was, on the server and in the mount. (Left half-moved, the
    new folder exists: mv then moved the old one into it, `z/x/...`, and said nothing.)"""
    with mounted_through_proxy(live_server, tmp_path) as (proxy, m):
        (m.path / "x").mkdir()
        for name in "123":
            (m.path / "x" / name).write_bytes(name.encode())
        move = "/files/storage/file/move"
        first = proxy.add("delay", move)  # (after no delay: the first file goes through)
        refused = proxy.add(
            "respond",
            move,
            status=409,
            body=b'{"error": {"code": "LEGAL_HOLD", "message": "injected"}}',
        )
        done = subprocess.run(
            ["mv", str(m.path / "x"), str(m.path / "z")], capture_output=True, text=True
        )
        assert done.returncode != 0
        assert "Operation not permitted" in done.stderr
        assert (first.times, refused.times) == (0, 0)
        assert proxy.count("POST", move) == 3  # 1 moved, 1 refused, 1 moved back
        stored = sorted(f"{f['folder']}/{f['filename']}" for f in m.remote_files())
        assert stored == ["x/1", "x/2", "x/3"]
        assert os.listdir(m.path) == ["x"]
        assert sorted(os.listdir(m.path / "x")) == ["1", "2", "3"]
        assert [(m.path / "x" / n).read_bytes() for n in "123"] == [b"1", b"2", b"3"]


def test_kill9_while_the_answer_to_an_upload_of_a_file_changed_since_is_on_its_way(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The service stores an upload, its answer is slow, the file grows meanwhile, and the
    mount is killed: the next mount deletes that older version and sends the newer, so
    the file is on the server once, with its last bytes (it was there twice: the older
    object could not be told by its bytes)."""
    with mounted_through_proxy(live_server, tmp_path, "--write-back", "0") as (proxy, m):
        slow = proxy.add("delay", "/v1/upload", method="POST", delay=60)
        (m.path / "f").write_bytes(b"first")
        wait_for(lambda: len(m.remote_files()) == 1, 20, "the first upload stored")
        with open(m.path / "f", "ab") as f:
            f.write(b" and more")
        m.kill9()
        assert slow.times == 0  # (its answer never came)
        m.start()
        whole = [b"first and more"]
        wait_for(lambda: [m.remote_bytes(f) for f in m.remote_files()] == whole, 20, "f")
        assert (m.path / "f").read_bytes() == whole[0]


def test_an_upload_whose_answer_is_lost_and_cannot_be_looked_up_is_stored_once(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The service stores the upload, its answer is lost, and the look that would tell
    whether it landed fails too: cp fails (EIO), the mount keeps the bytes, and its
    retry finds that object instead of sending a second one beside it."""
    with mounted_through_proxy(live_server, tmp_path) as (proxy, m):
        proxy.add("drop_response", "/v1/upload", method="POST")
        look = proxy.add("respond", "/files/storage/file/", method="GET", times=10_000)
        done = subprocess.run(["cp", "/proc/self/status", str(m.path / "f")], stderr=PIPE)
        assert done.returncode != 0
        assert b"Input/output error" in done.stderr
        kept = (m.path / "f").read_bytes()
        look.times = 0  # the service answers again
        wait_for(lambda: len(m.remote_files()) == 1, 20, "the retry")
        m.unmount()  # (any upload still pending goes now)
        [stored] = m.remote_files()
        assert m.remote_bytes(stored) == kept
