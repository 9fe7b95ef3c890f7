"""A hypothesis state machine: random FUSE operations against a simple model
(path -> bytes, and a set of folders); after every step the mount's view, and the
remote's objects, equal the model."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stowfs.errors import Unavailable
from stowfs.fs import xattrs
from tests.fs.harness import CTX, FS, mounted_ops, setattr_
from tests.fs.memremote import MemRemote

T = TypeVar("T")
NAMES = st.sampled_from(["a", "b", "c.txt"])
DATA = st.binary(max_size=3000)
KEYS = st.sampled_from(["prompt", "seed", "tags"])
VALUES = st.recursive(
    st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.text(max_size=12)
    | st.sampled_from(["42", "true", "null", '"x"', "[1]", " 7", "{}"]),  # strings as JSON
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)


def _slow(method: str) -> Any:  # Any: it stands in for methods of any signature
    async def call(self: MemRemote, *args: Any, **kw: Any) -> Any:
        await trio.sleep(0.002)
        return await getattr(MemRemote, method)(self, *args, **kw)

    return call


class SlowRemote(MemRemote):
    """Uploads, metadata patches, deletes and moves that take a moment, as requests do:
    the next steps' operations come while they are on their way."""

    upload = _slow("upload")
    patch_metadata = _slow("patch_metadata")
    delete = _slow("delete")
    move = _slow("move")


class OpsMachine(RuleBasedStateMachine):
    WRITE_BACK: float | None = None  # upload on close
    REMOTE: type[SlowRemote] = SlowRemote

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.meta: dict[str, dict[str, Any]] = {}  # user metadata (mtime aside)
        self.dirs: set[str] = {""}
        self.theirs: list[str] = []  # files another client made (feed-shown names)
        self.remote = self.REMOTE()
        self.seen = 0  # of the remote's change log: what the feed has given so far
        self.deferred = False  # a file made by mknod may wait for its upload
        self.tmp = Path(tempfile.mkdtemp())
        ready = threading.Event()
        self._stop: trio.Event | None = None
        self.fs: FS | None = None
        self.token: trio.lowlevel.TrioToken | None = None

        async def main() -> None:
            async with mounted_ops(
                self.remote, self.tmp / "cache", block_size=1024, write_back=self.WRITE_BACK
            ) as fs:
                self.fs = fs
                self._stop = trio.Event()
                self.token = trio.lowlevel.current_trio_token()
                ready.set()
                await self._stop.wait()

        self.thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def run(self, fn: Callable[[FS], Awaitable[T]]) -> T:
        assert self.fs is not None
        fs = self.fs

        async def call() -> T:
            return await fn(fs)

        return trio.from_thread.run(call, trio_token=self.token)

    def teardown(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self.thread.join(10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    @staticmethod
    def join(folder: str, name: str) -> str:
        return f"{folder}/{name}" if folder else name

    def taken(self, path: str) -> bool:
        return path in self.files or path in self.dirs

    # -- rules -------------------------------------------------------------------------
    def folder(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.dirs)))

    @rule(data=st.data(), name=NAMES, content=DATA)
    def write(self, data: st.DataObject, name: str, content: bytes) -> None:
        folder = self.folder(data)
        path = self.join(folder, name)
        if path in self.dirs:
            return
        self.run(lambda fs: fs.write_file(path, content))
        self.files[path] = content
        self.meta.setdefault(path, {})  # an edit keeps the metadata

    @rule(data=st.data(), name=NAMES)
    def mknod(self, data: st.DataObject, name: str) -> None:
        """Its upload waits a moment (for the bytes, as `tar --xattrs` writes them next),
        racing the rules that follow."""
        path = self.join(self.folder(data), name)
        if self.taken(path):
            return

        async def go(fs: FS) -> None:
            parent, leaf = await fs.split(path)
            await fs.ops.mknod(parent, leaf, stat.S_IFREG | 0o644, 0, CTX)

        self.run(go)
        self.files[path] = b""
        self.meta[path] = {}
        self.deferred = True

    @precondition(lambda self: bool(self.files))
    @rule(data=st.data(), chunk=DATA, offset=st.integers(0, 4000))
    def pwrite(self, data: st.DataObject, chunk: bytes, offset: int) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        old = self.files[path]
        offset = min(offset, len(old))

        async def go(fs: FS) -> None:
            fh = await fs.open(path, os.O_RDWR)
            await fs.ops.write(fh, offset, chunk)
            await fs.close(fh)

        self.run(go)
        self.files[path] = old[:offset] + chunk + old[offset + len(chunk) :]

    @precondition(lambda self: bool(self.files))
    @rule(data=st.data(), size=st.integers(0, 4000))
    def truncate(self, data: st.DataObject, size: int) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))

        async def go(fs: FS) -> None:
            fh = await fs.open(path, os.O_RDWR)
            await setattr_(fs.ops, await fs.resolve(path), size=size, fh=fh)
            await fs.close(fh)

        self.run(go)
        old = self.files[path]
        self.files[path] = old[:size] + b"\0" * max(0, size - len(old))

    @precondition(lambda self: bool(self.files))
    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        self.run(lambda fs: fs.unlink(path))
        del self.files[path]
        del self.meta[path]

    @rule(folder=st.sampled_from(["d", "e"]))
    def mkdir(self, folder: str) -> None:
        if self.taken(folder):
            return
        self.run(lambda fs: fs.mkdir(folder))
        self.dirs.add(folder)

    @rule(folder=st.sampled_from(["d", "e"]))
    def rmdir(self, folder: str) -> None:
        if folder not in self.dirs or any(p.startswith(folder + "/") for p in self.files):
            return
        self.run(lambda fs: fs.rmdir(folder))
        self.dirs.discard(folder)

    @precondition(lambda self: bool(self.files))
    @rule(data=st.data(), name=NAMES)
    def rename(self, data: st.DataObject, name: str) -> None:
        src = data.draw(st.sampled_from(sorted(self.files)))
        dst = self.join(self.folder(data), name)
        if dst in self.dirs:
            return
        self.run(lambda fs: fs.rename(src, dst))
        self.files[dst] = self.files.pop(src)
        self.meta[dst] = self.meta.pop(src)

    @precondition(lambda self: bool(self.files))
    @rule(data=st.data(), key=KEYS, value=st.none() | VALUES)
    def setxattr(self, data: st.DataObject, key: str, value: Any) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        name = f"user.{key}"
        if value is None:
            if key not in self.meta[path]:
                return
            self.run(lambda fs: fs.removexattr(path, name))
            del self.meta[path][key]
        else:
            self.run(lambda fs: fs.setxattr(path, name, xattrs.encode(value)))
            self.meta[path][key] = value

    @rule(data=st.data(), content=DATA)
    def elsewhere(self, data: st.DataObject, content: bytes) -> None:
        """Another client uploads, edits the metadata of or deletes a file; the change
        feed's news since the last poll is applied (our own changes are in it too)."""
        mine = [p for p in self.theirs if p in self.files]
        what = data.draw(st.sampled_from(["put", "patch", "delete"] if mine else ["put"]))
        if what == "put":
            path = self.join(self.folder(data), f"x{len(self.theirs)}")
            if self.taken(path):
                return
            self.remote.put(path.rpartition("/")[0], path.rpartition("/")[2], content)
            self.theirs.append(path)
            self.files[path], self.meta[path] = content, {}
        else:
            path = data.draw(st.sampled_from(mine))
            [f] = self.remote.by_path(path)
            if what == "patch":
                self.run(lambda fs: self.remote.patch_metadata(f.key, {"seed": len(content)}))
                self.meta[path]["seed"] = len(content)
            else:
                self.run(lambda fs: self.remote.delete(f.key))
                del self.files[path], self.meta[path]
        news, self.seen = self.remote.log[self.seen :], len(self.remote.log)
        self.run(lambda fs: _absorb(fs, news))

    @rule(data=st.data(), name=NAMES, content=DATA)
    def amid_news(self, data: st.DataObject, name: str, content: bytes) -> None:
        """A rename (of a file, maybe over another; of a folder) or a rewrite while the
        change feed's news and listings keep coming: each call of the slow remote lets
        them in, so they show the operation half done."""
        choices = ["folder"] + (["file", "rewrite"] if self.files else [])
        what = data.draw(st.sampled_from(choices))
        if what == "folder":
            src, dst = data.draw(st.sampled_from([("d", "e"), ("e", "d")]))
            if src not in self.dirs or self.taken(dst):
                return
            op: Callable[[FS], Awaitable[object]] = lambda fs: fs.rename(src, dst)  # noqa: E731
        elif what == "file":
            src = data.draw(st.sampled_from(sorted(self.files)))
            dst = self.join(self.folder(data), name)
            if dst in self.dirs:
                return
            op = lambda fs: fs.rename(src, dst)  # noqa: E731
        else:
            src = dst = data.draw(st.sampled_from(sorted(self.files)))
            op = lambda fs: fs.write_file(src, content)  # noqa: E731

        async def go(fs: FS) -> None:
            tree = fs.ops.tree
            done = trio.Event()

            async def news() -> None:
                while not done.is_set():
                    tree.absorb(self.remote.log[self.seen :], trio.current_time())
                    for node in tree.loaded_folders():
                        await tree.refresh(node, force=True)
                    await trio.sleep(0.001)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(news)
                try:
                    await op(fs)
                finally:
                    done.set()

        self.run(go)
        if what == "rewrite":
            self.files[src] = content
            return
        prefix = src + "/" if what == "folder" else None
        for path in [p for p in self.files if p == src or (prefix and p.startswith(prefix))]:
            moved = dst + path[len(src) :]
            self.files[moved], self.meta[moved] = self.files.pop(path), self.meta.pop(path)
        if what == "folder":
            self.dirs.discard(src)
            self.dirs.add(dst)

    # -- invariants --------------------------------------------------------------------
    @invariant()
    def matches_model(self) -> None:
        for folder in self.dirs:
            expect = sorted(
                [p.rpartition("/")[2] for p in self.files if p.rpartition("/")[0] == folder]
                + [d for d in self.dirs if d and d.rpartition("/")[0] == folder]
            )
            assert self.run(lambda fs, folder=folder: fs.listdir(folder)) == expect  # type: ignore[misc]
        for path, content in self.files.items():
            assert self.run(lambda fs, path=path: fs.read_file(path)) == content  # type: ignore[misc]
            for key, value in self.meta[path].items():
                raw = self.run(lambda fs, p=path, k=key: fs.getxattr(p, f"user.{k}"))  # type: ignore[misc]
                assert xattrs.decode(raw) == value  # round trip

    @invariant()
    def remote_matches_model(self) -> None:
        if self.WRITE_BACK is not None or self.deferred:  # background uploads: wait for them
            self.run(lambda fs: fs.ops.uploader.drain())
            self.deferred = False
        remote = {f.path: self.remote.blobs[f.key] for f in self.remote.files.values()}
        assert len(remote) == len(self.remote.files)  # no leftover duplicates
        assert remote == self.files
        for f in self.remote.files.values():
            assert {k: v for k, v in f.metadata.items() if k != "mtime"} == self.meta[f.path]


async def _absorb(fs: FS, changes: list[Any]) -> None:
    fs.ops.tree.absorb(changes, trio.current_time())


class WriteBackMachine(OpsMachine):
    """The same, with uploads in the background racing the operations."""

    WRITE_BACK = 0.0


class AwayRemote(SlowRemote):
    """`lose_answers`: an upload is stored, then the service goes away before it answers
    (the mount cannot know that it landed)."""

    lose_answers = False

    async def upload(self, *args: Any, **kw: Any) -> Any:
        stored = await super().upload(*args, **kw)
        if self.lose_answers:
            self.down = True
            raise Unavailable("connection dropped", status=503)
        return stored


class OutageMachine(WriteBackMachine):
    """The same, with the service away at times, for one operation and the uploads that
    follow it: from the start, or once it stored an upload whose answer is then lost.
    An operation the mount refuses meanwhile (EIO) is not taken on the model."""

    REMOTE = AwayRemote

    @rule(data=st.data(), lost=st.booleans(), name=NAMES, content=DATA, size=st.integers(0, 4000))
    def outage(self, data: st.DataObject, lost: bool, name: str, content: bytes, size: int) -> None:
        remote = self.remote
        assert isinstance(remote, AwayRemote)
        steps: list[Callable[[], None]] = [lambda: self.write(data, name, content)]
        if self.files:
            steps += [
                lambda: self.rename(data, name),
                lambda: self.unlink(data),
                lambda: self.truncate(data, size),
                lambda: self.setxattr(data, "seed", size),
            ]
        step = data.draw(st.sampled_from(steps))
        remote.down, remote.lose_answers = not lost, lost
        try:
            step()
        except pyfuse3.FUSEError as exc:  # refused for the outage: not taken
            if exc.errno != errno.EIO:
                raise
        try:
            self.run(lambda fs: fs.ops.uploader.drain())  # uploads fail, or land unanswered
        finally:
            remote.down = remote.lose_answers = False


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
OpsMachine.TestCase.settings = SETTINGS
WriteBackMachine.TestCase.settings = SETTINGS
OutageMachine.TestCase.settings = SETTINGS
TestOperationsStateful = OpsMachine.TestCase
TestWriteBackStateful = WriteBackMachine.TestCase
TestOutageStateful = OutageMachine.TestCase
