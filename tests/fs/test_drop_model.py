"""Random work in a drop folder (the presign dialect) through a real mount: files
written, rewritten, renamed and removed, the mount killed (kill -9) or unmounted between.
Its listing must match a model at every step (each name once, with its size), and each
file's key must hold its last bytes on the service."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tests.fs.mountfix import new_mount
from tests.livesrv import LiveServer

NAMES = ("a", "b", "c.txt", "d.bin")


def test_random_work_in_a_drop_folder_matches_a_model(
    live_server: LiveServer, tmp_path: Path
) -> None:
    rng = random.Random(5)
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    options = ("--dialect", "presign", "--write-back", "1")
    model: dict[str, bytes] = {}
    m.start(*options)
    try:
        for _ in range(60):
            op, name = rng.choice(["write", "write", "mv", "rm", "restart"]), rng.choice(NAMES)
            if op == "write":
                model[name] = rng.randbytes(rng.choice([0, 10, 5000, 70_000]))
                (m.path / name).write_bytes(model[name])
            elif op == "mv" and name in model:
                to = rng.choice(NAMES)
                os.rename(m.path / name, m.path / to)
                model[to] = model.pop(name)
            elif op == "rm" and name in model:
                os.unlink(m.path / name)
                del model[name]
            elif op == "restart":
                m.restart(*options, killed=rng.random() < 0.5)
            shown = {p.name: p.stat().st_size for p in m.path.iterdir()}
            assert shown == {k: len(v) for k, v in model.items()}
        m.unmount()
        m.start(*options)
        for name, data in model.items():
            key = os.getxattr(m.path / name, "user.stowfs.key").decode()
            with m.api() as api:
                record = api.get(f"/files/storage/file/{key}").json()
                assert api.get(record["file_url"]).content == data, name
    finally:
        m.unmount()
