"""A server whose disk is full answers 507 STORAGE_FULL (clients keep the bytes and try
again, as for a full plan), not a 500, and leaves no partial file behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.livesrv import LiveServer, start_server


@pytest.fixture
def small_disk_server(tmp_path: Path) -> Iterator[LiveServer]:
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        server = start_server(disk / "data")
        try:
            yield server
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def post(api: httpx.Client, name: str, data: bytes) -> httpx.Response:
    grant = api.post("/files/upload-url", json={"filename": name}).json()
    return api.post(grant["upload_url"], data=grant["upload_fields"], files={"file": (name, data)})


def test_a_full_disk_is_507_and_keeps_nothing_half_written(
    small_disk_server: LiveServer,
) -> None:
    key = small_disk_server.new_key(plan="business")  # the plan has room: the disk has not
    headers = {"X-API-Key": key}
    with httpx.Client(base_url=small_disk_server.base_url, headers=headers) as api:
        answers = [post(api, f"f{i}.bin", os.urandom(3_000_000)) for i in range(3)]
        assert [r.status_code for r in answers] == [201, 201, 507]
        assert answers[2].json()["error"]["code"] == "STORAGE_FULL"
        blobs = small_disk_server.data_dir / "blobs"
        assert [p for p in (blobs / "tmp").iterdir()] == []
        listed = api.get("/files/storage/files").json()
        assert sorted(f["filename"] for f in listed["files"]) == ["f0.bin", "f1.bin"]
        first = answers[0].json()["object_key"]
        assert api.delete("/files/storage/file", params={"object_key": first}).status_code == 200
        assert post(api, "again.bin", os.urandom(3_000_000)).status_code == 201
