"""Random work on a tree through a real mount and on a local reference tree: files
written, appended to, truncated, renamed, removed and given metadata, folders made,
removed and moved, a writer kept open across it all, remounts between. The two trees
must match (names, bytes, user xattrs), and the server must hold each file once. A
remount may follow a kill -9 of the mount, uploads under way (nothing written is lost);
the server may be stopped at times (what the mount refuses meanwhile is not done)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fs.mountfix import Mount, new_mount, xattr_dir
from tests.livesrv import LiveServer, start_server

NAMES = ("a", "b", "c.txt", "d.txt")
XATTRS = {
    "user.prompt": (b"a cat", b"", b"x y z"),
    "user.seed": (b"1", b"42", b"977"),
    "user.tags": (b'["x","y"]', b"[]"),
}
Tree = dict[str, tuple[bytes, list[tuple[str, bytes]]] | None]  # folders: None


def snapshot(root: Path) -> Tree:
    """Every folder and file under `root`: a file's bytes and user metadata xattrs."""
    found: Tree = {}
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        found[rel + "/"] = None
        for name in files:
            path = os.path.join(folder, name)
            keys = [k for k in os.listxattr(path) if k.startswith("user.") and k in XATTRS]
            meta = sorted((k, os.getxattr(path, k)) for k in keys)
            found[os.path.normpath(os.path.join(rel, name))] = (Path(path).read_bytes(), meta)
    return found


class Model:
    """One random step on both trees at once; steps a local disk would refuse are
    skipped, so both see the same calls."""

    def __init__(self, rng: random.Random, mount: Mount, ref: Path) -> None:
        self.rng, self.mount, self.ref = rng, mount, ref
        self.held: list[int] | None = None  # a writer on both trees

    @property
    def roots(self) -> tuple[Path, Path]:
        return self.ref, self.mount.path

    def both(self, fn: Callable[[Path], Any]) -> None:
        for root in self.roots:
            fn(root)

    def folders(self) -> list[Path]:
        return [Path(f).relative_to(self.ref) for f, _, _ in os.walk(self.ref)]

    def step(self) -> None:
        rng = self.rng
        folder = rng.choice(self.folders())
        path = folder / rng.choice(NAMES)
        ref = self.ref / path
        op = rng.choice(
            ["write", "write", "append", "trunc", "mv", "mv", "rm", "mkdir"] * 2
            + ["rmdir", "mvdir", "xattr", "xattr", "hold", "pwrite", "release"]
        )
        if op == "write" and not ref.is_dir():
            data = rng.randbytes(rng.choice([0, 10, 5000, 70_000]))
            self.both(lambda r: (r / path).write_bytes(data))
        elif op in ("append", "trunc", "xattr") and ref.is_file():
            if op == "append":
                data = rng.randbytes(rng.choice([1, 9000]))
                self.both(lambda r: _append(r / path, data))
            elif op == "trunc":
                size = rng.randrange(3000)
                self.both(lambda r: os.truncate(r / path, size))
            else:
                key = rng.choice(sorted(XATTRS))
                value = rng.choice(XATTRS[key])
                self.both(lambda r: os.setxattr(r / path, key, value))
        elif op == "mv" and ref.is_file():
            target = rng.choice(self.folders()) / rng.choice(NAMES)
            if not (self.ref / target).is_dir():
                self.both(lambda r: os.rename(r / path, r / target))
        elif op == "rm" and ref.is_file():
            self.both(lambda r: os.unlink(r / path))
        elif op == "mkdir" and not ref.exists() and len(folder.parts) < 2:
            self.both(lambda r: os.mkdir(r / path))
        elif op == "rmdir" and folder.parts and not any((self.ref / folder).iterdir()):
            self.both(lambda r: os.rmdir(r / folder))
        elif op == "mvdir" and folder.parts:
            into = rng.choice(self.folders())
            target = into / rng.choice(NAMES)
            inside = into == folder or folder in into.parents
            if not inside and len(into.parts) < 2 and not (self.ref / target).exists():
                self.both(lambda r: os.rename(r / folder, r / target))
        elif op == "hold" and self.held is None and not ref.is_dir():
            self.held = [os.open(r / path, os.O_RDWR | os.O_CREAT) for r in self.roots]
        elif op == "pwrite" and self.held is not None:
            data, offset = rng.randbytes(rng.choice([1, 500, 20_000])), rng.randrange(30_000)
            for fd in self.held:
                os.pwrite(fd, data, offset)
        elif op == "release":
            self.release()

    def release(self) -> None:
        for fd in self.held or []:
            os.close(fd)
        self.held = None

    def check(self) -> None:
        assert snapshot(self.mount.path) == snapshot(self.ref)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def server_tree(mount: Mount, folder: str = "") -> list[tuple[str, int]]:
    """(path, size) of every file the server holds, duplicates included."""
    with mount.api() as api:
        files = api.get("/files/storage/files", params={"folder": folder, "limit": 100}).json()
        subs = api.get("/files/storage/folders", params={"parent": folder}).json()
    found = [(os.path.join(folder, f["filename"]), f["size"]) for f in files["files"]]
    for sub in subs["folders"]:
        found += server_tree(mount, sub["path"])
    return sorted(found)


@pytest.mark.parametrize(
    ("seed", "extra", "killed"),
    [
        (20261204, (), False),
        (1204, ("--write-back", "1"), False),
        (412, ("--write-back", "0"), False),
        (3, ("--write-back", "0"), True),
    ],
    ids=["close", "write-back-1", "write-back-0", "write-back-0-kill-9"],
)
def test_random_work_on_a_tree_matches_a_reference(
    live_server: LiveServer, tmp_path: Path, seed: int, extra: tuple[str, ...], killed: bool
) -> None:
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    ref = xattr_dir(tmp_path / "ref")
    m.start(*extra)
    model = Model(random.Random(seed), m, ref)
    try:
        for n in range(120):
            model.step()
            if n % 30 == 29:
                model.release()
                m.restart(*extra, killed=killed)
                model.check()
        model.release()
        model.check()
        m.unmount()
        files = {p: v for p, v in snapshot(ref).items() if v is not None}
        assert server_tree(m) == sorted((p, len(v[0])) for p, v in files.items())
    finally:
        model.release()
        m.unmount()


class Refusable(Model):
    """A step the mount refuses (EIO: the server is stopped) is not taken on the
    reference; no writer is held (its writes could not be mirrored so)."""

    def __init__(self, rng: random.Random, mount: Mount, ref: Path) -> None:
        super().__init__(rng, mount, ref)
        self.held = []
        self.refused = 0

    def release(self) -> None:
        self.held = []

    def both(self, fn: Callable[[Path], Any]) -> None:
        try:
            fn(self.mount.path)
        except OSError:
            self.refused += 1
            return
        fn(self.ref)


@pytest.mark.parametrize("killed", [False, True], ids=["unmount", "kill-9"])
def test_random_work_on_a_tree_with_the_server_stopped_at_times(
    tmp_path: Path, killed: bool
) -> None:
    """Uploads fail and are retried, answers are lost as the server stops, the mount may
    be killed at a remount."""
    server = start_server(tmp_path / "srv")
    port = server.base_url.rsplit(":", 1)[1].split("/")[0]
    rng = random.Random(78)
    m = new_mount(tmp_path, server.base_url, server.new_key())
    model = Refusable(random.Random(11), m, xattr_dir(tmp_path / "ref"))
    m.start("--write-back", "0")
    try:
        for n in range(90):
            remount, down = n % 30 == 29, server.proc.poll() is not None
            if down and (remount or rng.random() < 0.25):
                server = start_server(tmp_path / "srv", "--listen", f"127.0.0.1:{port}")
            elif not down and not remount and rng.random() < 0.06:
                server.stop()
            model.step()
            if remount:
                m.restart("--write-back", "0", killed=killed)
                model.check()
        m.unmount()
        files = {p: v for p, v in snapshot(model.ref).items() if v is not None}
        assert server_tree(m) == sorted((p, len(v[0])) for p, v in files.items())
        assert model.refused > 0  # the server was away for some steps
    finally:
        m.unmount()
        server.stop()
