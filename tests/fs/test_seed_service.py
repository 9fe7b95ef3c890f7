"""A real mount of a provider that has only what the seed's storage API has: no
capabilities document, no change feed, no server move, no folder delete, no plan limits
(a proxy answers 404 for each). Every operation still works, by its fallback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fs.mountfix import Mount, new_mount, wait_for
from tests.fs.test_mount import fails, sh
from tests.livesrv import LiveServer
from tests.remote.faultproxy import FaultProxy, proxy_in_thread

EXTENSIONS = [  # (method, path) of what the reference server adds to the seed
    ("GET", "/v1/capabilities"),
    ("GET", "/v1/files/storage/changes"),
    ("POST", "/v1/files/storage/file/move"),
    ("DELETE", "/v1/files/storage/folder"),
]
NOT_FOUND = b'{"error": {"code": "NOT_FOUND", "message": "no such endpoint"}}'


@pytest.fixture
def seed_proxy(live_server: LiveServer) -> Iterator[FaultProxy]:
    """The live server behind a proxy that hides its extensions (in a thread of its own:
    the test drives the mount with blocking shell tools)."""
    port = urlsplit(live_server.base_url).port
    assert port is not None
    proxy = FaultProxy(port)
    for method, path in EXTENSIONS:
        proxy.add("respond", path, method=method, status=404, body=NOT_FOUND, times=10**9)
    with proxy_in_thread(proxy):
        yield proxy


@pytest.fixture
def seed_mount(seed_proxy: FaultProxy, live_server: LiveServer, tmp_path: Path) -> Iterator[Mount]:
    m = new_mount(tmp_path, seed_proxy.base_url(), live_server.new_key())
    m.start()
    try:
        yield m
    finally:
        m.unmount()


def test_a_seed_only_service_mounts_and_every_operation_falls_back(
    seed_mount: Mount, seed_proxy: FaultProxy, tmp_path: Path
) -> None:
    m, mnt = seed_mount, seed_mount.path
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(200_000))
    sh("cp", src, mnt / "a.bin")
    sh("cmp", src, mnt / "a.bin")
    sh("mkdir", mnt / "d")
    sh("mv", mnt / "a.bin", mnt / "d/b.bin")  # download, upload, delete
    sh("cmp", src, mnt / "d/b.bin")
    assert [f["filename"] for f in m.remote_files("d")] == ["b.bin"]
    assert m.remote_files("") == []

    sh("mv", mnt / "d", mnt / "e")  # its files move; the old folder stays, empty
    sh("cmp", src, mnt / "e/b.bin")
    assert [f["filename"] for f in m.remote_files("e")] == ["b.bin"]
    wait_for(lambda: sorted(os.listdir(mnt)) == ["d", "e"], 10, "the old folder listed again")
    assert "Operation not supported" in fails("rmdir", mnt / "d")

    assert sh("getfattr", "--only-values", "-n", "user.stowfs.url", mnt / "e/b.bin").startswith(
        "http"
    )
    assert sh("df", "--output=used", mnt).split()[-1] != "0"  # usage, without plan limits

    with m.api() as api:  # elsewhere: shown once the listing expires (no change feed)
        grant = api.post("/files/upload-url", json={"filename": "new.txt", "folder": "e"})
        grant.raise_for_status()
        posted = api.post(
            grant.json()["upload_url"],
            data=grant.json()["upload_fields"],
            files={"file": ("new.txt", b"from elsewhere")},
        )
        assert posted.status_code == 201
    wait_for(lambda: "new.txt" in os.listdir(mnt / "e"), 10, "a listing to show it")
    assert (mnt / "e/new.txt").read_bytes() == b"from elsewhere"

    sh("rm", mnt / "e/b.bin", mnt / "e/new.txt")
    assert m.remote_files("e") == []
    for method, path in EXTENSIONS[1:]:  # asked for capabilities once, then never these
        assert seed_proxy.count(method, path) == 0, path
