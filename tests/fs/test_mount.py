"""Real mounts driven by real shell tools, checked against the server's API."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import trio

from stowfs.remote.upload import GROWING_PART
from tests.fs.mountfix import Mount, new_mount, wait_for, xattr_dir
from tests.livesrv import LiveServer, stowfs_cmd

MiB = 1024 * 1024


def sh(*cmd: str | Path) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd}: {done.stderr}"
    return done.stdout


def fails(*cmd: str | Path) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert done.returncode != 0, f"{cmd} succeeded"
    return done.stderr


def upload(m: Mount, folder: str, name: str, data: bytes, metadata: dict[str, object]) -> None:
    """Another client's upload (the storage dialect's presigned POST)."""
    with m.api() as api:
        body = {"filename": name, "folder": folder, "metadata": metadata}
        grant = api.post("/files/upload-url", json=body).json()
        r = api.post(
            grant["upload_url"],
            data=grant["upload_fields"],
            files={"file": (name, data)},
            headers={"X-API-Key": ""},
        )
        assert r.status_code == 201, r.text


async def fill_folder(m: Mount, folder: str, count: int) -> None:
    """`count` one-byte files uploaded by another client, eight at a time."""
    limiter = trio.CapacityLimiter(8)
    headers = {"X-API-Key": m.key}
    async with httpx.AsyncClient(base_url=m.base_url, timeout=60) as api:

        async def one(name: str) -> None:
            async with limiter:
                body = {"filename": name, "folder": folder}
                grant = await api.post("/files/upload-url", json=body, headers=headers)
                r = await api.post(
                    grant.json()["upload_url"],
                    data=grant.json()["upload_fields"],
                    files={"file": (name, b"x")},
                )
                assert r.status_code == 201, r.text

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, f"f{i}")


def test_copy_list_read_edit_remove(mount: Mount, tmp_path: Path) -> None:
    mnt = mount.path
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    sh("cp", src, mnt / "a.bin")
    assert mount.remote_bytes(mount.remote_file("a.bin")) == src.read_bytes()
    assert "a.bin" in sh("ls", "-l", mnt)
    assert sh("stat", "-c", "%s", mnt / "a.bin").strip() == "300000"
    sh("cmp", src, mnt / "a.bin")

    sh("mkdir", mnt / "dir")
    sh("mv", mnt / "a.bin", mnt / "dir/b.bin")
    assert [f["filename"] for f in mount.remote_files("dir")] == ["b.bin"]
    assert sh("ls", "-a", mnt / "dir").split() == [".", "..", "b.bin"]
    assert [f["filename"] for f in mount.remote_files("")] == []

    with open(mnt / "dir/b.bin", "ab") as f:  # append
        f.write(b"tail")
    sh("truncate", "-s", "10", mnt / "dir/b.bin")
    expected = src.read_bytes()[:10]
    assert (mnt / "dir/b.bin").read_bytes() == expected
    assert mount.remote_bytes(mount.remote_file("dir/b.bin")) == expected
    assert len(mount.remote_files("dir")) == 1  # replaced, not duplicated

    sh("touch", "-d", "2020-02-02 02:02:02 UTC", mnt / "dir/b.bin")
    assert sh("stat", "-c", "%Y", mnt / "dir/b.bin").strip() == "1580608922"
    assert mount.remote_file("dir/b.bin")["metadata"]["mtime"] == 1580608922.0

    sh("cp", "-p", mnt / "dir/b.bin", mnt / "dir/c.bin")
    assert sh("stat", "-c", "%Y", mnt / "dir/c.bin").strip() == "1580608922"

    assert "Directory not empty" in fails("rmdir", mnt / "dir")
    sh("mv", mnt / "dir", mnt / "moved")
    assert sorted(f["filename"] for f in mount.remote_files("moved")) == ["b.bin", "c.bin"]
    sh("rm", mnt / "moved/b.bin", mnt / "moved/c.bin")
    sh("rmdir", mnt / "moved")
    assert mount.remote_files() == []
    assert sh("ls", "-A", mnt) == ""


def test_rsync_keeps_mtimes_and_sends_nothing_twice(mount: Mount, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(5000))
    os.utime(src / "sub/f0", (1580608922, 1580608922))
    sh("rsync", "-a", f"{src}/", mount.path / "tree")
    assert mount.remote_file("tree/sub/f0")["metadata"]["mtime"] == 1580608922.0
    assert sh("stat", "-c", "%Y", mount.path / "tree/sub/f0").strip() == "1580608922"
    sh("cmp", src / "sub/f1", mount.path / "tree/sub/f1")
    # A second run finds every file the same (size and mtime): none sent again.
    again = sh("rsync", "-a", "--itemize-changes", f"{src}/", mount.path / "tree")
    assert again == ""  # folder mtimes too, for the life of the mount
    assert len(mount.remote_files("tree/sub")) == 3


def test_files_written_under_a_temp_name_get_their_real_names_type(mount: Mount) -> None:
    """rsync writes `.name.XXXXXX`, sed -i `sedXXXXXX`, then rename: the URL must still
    serve an image as one."""
    src = mount.path.parent / "pics"
    src.mkdir()
    (src / "gen.png").write_bytes(b"\x89PNG fake")
    (src / "notes.txt").write_text("draft\n")
    sh("rsync", "-a", f"{src}/", mount.path)
    sh("sed", "-i", "s/draft/final/", mount.path / "notes.txt")
    for name, expected in (("gen.png", "image/png"), ("notes.txt", "text/plain")):
        assert mount.remote_file(name)["content_type"] == expected
        fact = sh("getfattr", "--only-values", "-n", "user.stowfs.content_type", mount.path / name)
        assert fact == expected
        with mount.api() as api:
            served = api.get(mount.remote_file(name)["file_url"])
            assert served.headers["content-type"].split(";")[0] == expected


def test_refused_operations(mount: Mount) -> None:
    mnt = mount.path
    sh("touch", mnt / "f")
    assert "Operation not permitted" in fails("ln", "-s", "f", mnt / "l")
    assert "Operation not permitted" in fails("ln", mnt / "f", mnt / "h")
    assert "Operation not permitted" in fails("mkfifo", mnt / "p")
    sh("chmod", "600", mnt / "f")  # accepted, not stored
    assert "No such file" in fails("cat", mnt / "missing")
    # a name the server refuses fails at once, even where close is never checked
    assert "Invalid argument" in fails("sh", "-c", f"echo x > '{mnt}/back\\slash'")
    assert "Invalid argument" in fails("mkdir", mnt / "tab\tname")
    assert sorted(os.listdir(mnt)) == ["f"]
    # folder paths: at most 1,024 characters on the reference server
    deep = mnt.joinpath(*["d" * 250] * 4)  # 1,003
    sh("mkdir", "-p", deep / ("x" * 20))
    assert "File name too long" in fails("mkdir", deep / ("y" * 21))
    sh("touch", deep / ("x" * 20) / "g")
    assert "File name too long" in fails("mv", mnt / ("d" * 250), mnt / ("e" * 252))
    assert mount.remote_files(str(deep.relative_to(mnt) / ("x" * 20)))[0]["filename"] == "g"


def test_names_that_urls_must_escape(mount: Mount) -> None:
    """Characters with a meaning in a URL or a query string, through paths and URLs."""
    mnt = mount.path
    names = ["a?b.txt", "a#b.txt", "100%.txt", "%2F.txt", "a+b c.txt", "q&r=s;t.txt"]
    names += ["é ü 日本.txt", " lead", "trail ", "..dots", "-dash"]
    folder = mnt / "d?x" / "#y %20"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text(name)
    sh("mv", folder / "a?b.txt", mnt / "d?x" / "moved&.txt")
    assert sorted(os.listdir(folder)) == sorted(n for n in names if n != "a?b.txt")
    assert {f["filename"] for f in mount.remote_files("d?x/#y %20")} == set(names) - {"a?b.txt"}
    with mount.api() as api:
        for path, content in [(f"d?x/#y %20/{n}", n) for n in names[1:]] + [
            ("d?x/moved&.txt", "a?b.txt")
        ]:
            assert (mnt / path).read_text() == content
            url = os.getxattr(mnt / path, "user.stowfs.url").decode()
            assert api.get(url).text == content, path
            assert mount.remote_bytes(mount.remote_file(path)) == content.encode()
    os.setxattr(folder / "a#b.txt", "user.k?#%", b"v&=+ x")
    assert mount.remote_file("d?x/#y %20/a#b.txt")["metadata"]["k?#%"] == "v&=+ x"


def test_xattrs_against_the_server(mount: Mount) -> None:
    mnt = mount.path
    upload(mount, "", "img.png", b"png", {"prompt": "a red fox", "seed": 7, "tags": ["x"]})
    f = mnt / "img.png"
    wait_for(f.exists, 10, "the upload to appear")
    assert sh("getfattr", "--only-values", "-n", "user.prompt", f) == "a red fox"
    assert sh("getfattr", "--only-values", "-n", "user.seed", f) == "7"
    dump = sh("getfattr", "-d", f)
    for name in ("user.tags", "user.stowfs.key", "user.stowfs.url", "user.stowfs.checksum"):
        assert name in dump
    sh("setfattr", "-n", "user.seed", "-v", "8", f)
    sh("setfattr", "-n", "user.note", "-v", "hello", f)
    os.setxattr(f, "user.label", b'"8"')  # setfattr would strip the quotes itself
    sh("setfattr", "-x", "user.prompt", f)
    meta = mount.remote_file("img.png")["metadata"]
    assert (meta["seed"], meta["note"], meta["label"]) == (8, "hello", "8")
    assert "prompt" not in meta
    assert os.getxattr(f, "user.label") == b'"8"'  # round trip
    assert "Argument list too long" in fails("setfattr", "-n", "user.big", "-v", "x" * 11000, f)
    assert "No such attribute" in fails("getfattr", "-n", "user.nope", f)
    assert "No such attribute" in fails("getfattr", "-n", "trusted.x", f)
    url = sh("getfattr", "--only-values", "-n", "user.stowfs.url", f)
    with mount.api() as api:
        assert api.get(url).content == b"png"
    sh("setfattr", "-n", "user.stowfs.public", "-v", "true", f)
    assert mount.remote_file("img.png")["is_public"] is True
    public = sh("getfattr", "--only-values", "-n", "user.stowfs.public_url", f)
    assert public.startswith("http")
    # Before its upload, as after: a value the schema refuses fails, the bytes still go.
    with open(mnt / "new.png", "wb") as pending:
        pending.write(b"new")
        assert "Invalid argument" in fails("setfattr", "-n", "user.seed", "-v", "x", pending.name)
        sh("setfattr", "-n", "user.seed", "-v", "9", pending.name)
    record = mount.remote_file("new.png")
    assert (mount.remote_bytes(record), record["metadata"]["seed"]) == (b"new", 9)


def test_tools_that_copy_xattrs(mount: Mount, tmp_path: Path) -> None:
    """They write back every xattr they find (facts included) or remove those the
    source lacks: the facts take it without effect, the metadata goes across."""
    mnt = mount.path
    local = xattr_dir(tmp_path / "local")
    upload(mount, "", "gen.png", b"png", {"prompt": "a red fox", "seed": 7})
    sh("cp", "--preserve=xattr", mnt / "gen.png", local / "gen.png")
    assert os.getxattr(local / "gen.png", "user.stowfs.key")  # another object's facts
    sh("cp", "--preserve=xattr", local / "gen.png", mnt / "copy.png")
    sh("rsync", "-aX", f"{local}/gen.png", mnt / "synced.png")
    (local / "plain.txt").write_text("no xattrs")
    sh("rsync", "-aX", f"{local}/plain.txt", mnt)  # removes the facts rsync finds
    sh("tar", "--xattrs", "-cf", tmp_path / "t.tar", "-C", local, "gen.png")
    sh("mkdir", mnt / "x")
    cursor = mount.api().get("/files/storage/changes", params={"cursor": "latest"}).json()
    sh("tar", "--xattrs", "-xf", tmp_path / "t.tar", "-C", mnt / "x")
    feed = mount.api().get("/files/storage/changes", params={"cursor": cursor["cursor"]})
    # mknod, setxattr, then the bytes: one object, not an empty one replaced
    assert [(c["op"], c["size"]) for c in feed.json()["changes"]] == [("upsert", 3)]
    for name in ("copy.png", "synced.png", "x/gen.png"):
        record = mount.remote_file(name)
        assert (record["metadata"]["prompt"], record["metadata"]["seed"]) == ("a red fox", 7)
        assert mount.remote_bytes(record) == b"png"
        assert (
            sh("getfattr", "--only-values", "-n", "user.stowfs.key", mnt / name)
            == (record["object_key"])
        )
    assert mount.remote_bytes(mount.remote_file("plain.txt")) == b"no xattrs"
    dump = tmp_path / "dump"
    dump.write_text(sh("getfattr", "-d", "-m", "-", mnt / "copy.png"))

    def stored() -> dict[str, object]:  # the record less its URLs, signed anew each second
        record = mount.remote_file("copy.png")
        return {k: v for k, v in record.items() if k not in ("file_url", "url", "expires_at")}

    before = stored()
    subprocess.run(["setfattr", f"--restore={dump}"], cwd="/", check=True)
    assert stored() == before  # nothing changed, not even updated_at


def test_duplicates_and_remote_changes(mount: Mount) -> None:
    mnt = mount.path
    sh("ls", mnt)  # the root listing is cached now
    upload(mount, "", "cat.png", b"old", {})
    upload(mount, "", "cat.png", b"new", {})
    wait_for(lambda: len(os.listdir(mnt)) == 2, 10, "both objects")
    names = sorted(os.listdir(mnt))
    assert names[0] == "cat.png"
    assert names[1].startswith("cat~")
    assert names[1].endswith(".png")
    assert (mnt / "cat.png").read_bytes() == b"new"
    assert (mnt / names[1]).read_bytes() == b"old"
    with mount.api() as api:  # deleted elsewhere: gone within --dir-cache-time
        key = next(f for f in mount.remote_files() if f["size"] == 3)["object_key"]
        api.delete("/files/storage/file", params={"object_key": key})
    wait_for(lambda: len(os.listdir(mnt)) == 1, 10, "the delete to show")


def test_a_file_open_across_a_replace_elsewhere_reads_one_version(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """Another mount's replace (the new object, then the old one deleted) while a reader
    holds the file open: the reader gets the bytes it opened or ESTALE, never the new
    object's. The path shows the new one at once after a read found the old one gone,
    not one ESTALE per open until the change feed (5 s here) or the kernel's entry for
    the name (30 s) catches up."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    size = 16 * MiB
    upload(m, "", "f", b"o" * size, {})
    m.start("--dir-cache-time", "30")
    try:
        fd = os.open(m.path / "f", os.O_RDONLY)
        try:
            assert os.pread(fd, MiB, 0) == b"o" * MiB
            [old] = m.remote_files()
            upload(m, "", "f", b"n" * size, {})
            with m.api() as api:
                api.delete("/files/storage/file", params={"object_key": old["object_key"]})
            stale = []

            def shows_new() -> bool:
                try:
                    return (m.path / "f").read_bytes() == b"n" * size
                except OSError as exc:  # the old version, found gone
                    if exc.errno != errno.ESTALE:
                        raise
                    stale.append(exc)
                    return False

            wait_for(shows_new, 10, "the new version")
            # One, and a second if the next open came before the kernel took the notice.
            assert len(stale) <= 2
            seen = set()
            for offset in range(0, size, 4 * MiB):
                try:
                    seen.add(os.pread(fd, MiB, offset))
                except OSError as exc:
                    seen.add(errno.errorcode[exc.errno or 0].encode())
            assert seen <= {b"o" * MiB, b"ESTALE"}
        finally:
            os.close(fd)
    finally:
        m.unmount()


def test_df_shows_the_plan(mount: Mount) -> None:
    def df() -> tuple[int, int]:
        out = sh("df", "-B1", "--output=size,used", mount.path).split()
        return int(out[-2]), int(out[-1])

    assert df() == (10 * 1024**3, 0)  # plan pro, nothing stored
    (mount.path / "f").write_bytes(b"x" * 1_000_000)
    assert df() == (10 * 1024**3, -(-1_000_000 // 4096) * 4096)  # at once after cp
    (mount.path / "f").unlink()
    assert df() == (10 * 1024**3, 0)


def test_a_full_quota_fails_cp_and_loses_nothing(live_server: LiveServer, tmp_path: Path) -> None:
    """At the free plan's 1,000 files, cp fails with ENOSPC (an edit too: the new object
    goes up before the old is removed); the bytes stay and go up once room is made."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key(plan="free"))
    trio.run(fill_folder, m, "fill", 999)
    m.start()
    try:
        (m.path / "last").write_text("fits")
        source = tmp_path / "source"
        source.write_text("no room")
        assert "No space left on device" in fails("cp", source, m.path / "over")
        with open(m.path / "last", "a") as f:
            f.write(", edited")
            with pytest.raises(OSError) as refused:
                f.close()
        assert refused.value.errno == errno.ENOSPC
        assert (m.path / "over").read_text() == "no room"  # kept, retried in the background
        assert m.remote_bytes(m.remote_file("last")) == b"fits"
        with m.api() as api:
            fill = [f for f in m.remote_files("fill") if f["filename"] in ("f0", "f1")]
            for record in fill:
                api.delete("/files/storage/file", params={"object_key": record["object_key"]})

        def landed() -> bool:
            found = {f["filename"]: f for f in m.remote_files()}
            return {"over", "last"} <= set(found) and found["last"]["size"] == 12

        wait_for(landed, 30, "the kept uploads", max_pause=0.2)
        assert m.remote_bytes(m.remote_file("over")) == b"no room"
        assert m.remote_bytes(m.remote_file("last")) == b"fits, edited"
    finally:
        m.unmount()


def test_parallel_cp(mount: Mount, tmp_path: Path) -> None:
    sources = []
    for i in range(8):
        src = tmp_path / f"p{i}"
        src.write_bytes(os.urandom(200_000 + i))
        sources.append(src)
    procs = [subprocess.Popen(["cp", str(s), str(mount.path / s.name)]) for s in sources]
    assert [p.wait(60) for p in procs] == [0] * 8
    remote = {f["filename"]: f for f in mount.remote_files()}
    for src in sources:
        assert mount.remote_bytes(remote[src.name]) == src.read_bytes()
        assert (mount.path / src.name).read_bytes() == src.read_bytes()


def parts_on(server: LiveServer, name: str) -> int:
    """Parts the server holds of the multipart upload of a file of that name."""
    db = sqlite3.connect(server.data_dir / "meta.db")
    try:
        row = db.execute(
            "SELECT COUNT(*) FROM parts p JOIN multipart m ON m.upload_id = p.upload_id"
            " JOIN files f ON f.id = m.file_row WHERE f.filename = ?",
            (name,),
        ).fetchone()
    finally:
        db.close()
    return int(row[0])


@pytest.mark.parametrize("overwrite", [False, True])
def test_big_file_uploads_while_it_is_written(
    mount: Mount, live_server: LiveServer, overwrite: bool
) -> None:
    """Parts of a big file being written reach the server before close; the object is
    whole, and its mtime is the file's. An overwrite of bytes already sent falls back
    to uploading the whole file at close."""
    name = f"streamed-{uuid.uuid4().hex[:8]}.bin"
    size = 50 * MiB + 2 * GROWING_PART + 12_345  # over one POST's limit, two parts more
    data = bytearray()

    def parts_sent() -> int:
        return parts_on(live_server, name)

    with open(mount.path / name, "wb", buffering=0) as f:
        for offset in range(0, size, MiB):
            chunk = os.urandom(min(MiB, size - offset))
            data += chunk
            f.write(chunk)
        wait_for(lambda: parts_sent() >= 2, 60, "parts sent while the file is open")
        if overwrite:
            f.seek(GROWING_PART // 2)
            f.write(b"x" * 1000)
            data[GROWING_PART // 2 : GROWING_PART // 2 + 1000] = b"x" * 1000
    record = mount.remote_file(name)
    assert record["size"] == size
    assert record["checksum"] == hashlib.md5(data).hexdigest()
    assert record["metadata"]["mtime"] == pytest.approx(os.stat(mount.path / name).st_mtime)


@pytest.mark.parametrize("how", ["stowfs", "fusermount3", "SIGTERM"])
def test_unmount_uploads_what_is_pending(live_server: LiveServer, tmp_path: Path, how: str) -> None:
    """SIGTERM: how systemd stops a mount."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.start("--write-back", "600", foreground=False)
    try:
        (m.path / "late").write_bytes(b"written back")
        assert m.remote_files() == []  # close returned before the upload
        if how == "stowfs":
            sh(*m.command()[:3], "unmount", m.path)  # returns once uploads are done
        elif how == "SIGTERM":
            assert m.pid is not None
            os.kill(m.pid, signal.SIGTERM)
            wait_for(lambda: not os.path.ismount(m.path), 30, "the mount to unmount itself")
            m.unmount()  # waits for the process to finish its uploads and exit
        else:
            sh("fusermount3", "-u", m.path)
            m.unmount()  # waits for the process to finish its uploads and exit
        assert not os.path.ismount(m.path)
        assert m.remote_bytes(m.remote_file("late")) == b"written back"
    finally:
        m.unmount()
    log = (m.cache / "mount.log").read_text()
    assert "1 upload(s) pending" in log
    assert "all pending uploads finished" in log


def test_mount_errors_are_one_line(live_server: LiveServer, tmp_path: Path) -> None:
    m = new_mount(tmp_path, live_server.base_url, "not-a-key")
    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    cases = [
        (tmp_path / "missing", live_server.base_url, "does not exist"),
        (m.path, live_server.base_url, "API key"),
        (m.path, closed, "cannot reach"),
    ]
    for path, url, expected in cases:
        cmd = m.command("--retry-time", "0.5")
        cmd[cmd.index(str(m.path))] = str(path)
        cmd[cmd.index(live_server.base_url)] = url
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode != 0
        assert expected in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"  # a cache dir that cannot be made
    cmd = m.command()
    cmd[cmd.index(str(m.cache))] = str(cache)
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.startswith(f"stowfs: {cache}")  # the path first, as Unix tools say
    assert "Not a directory" in done.stderr
    assert "Errno" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_dead_mount_of_another_filesystem_is_left_to_its_owner(
    live_server: LiveServer, tmp_path: Path
) -> None:
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    other = subprocess.Popen(
        [sys.executable, "-m", "tests.benchmarks.nullfs", str(m.path), "10", "1"],
        cwd=Path(__file__).parents[2],
    )
    try:
        wait_for(lambda: os.path.ismount(m.path), 30, "the other filesystem's mount")
        other.kill()
        other.wait()
        done = subprocess.run(m.command(), capture_output=True, text=True)
        assert done.returncode != 0
        assert "left over from a mount that died" in done.stderr
        assert f"run: fusermount3 -u {m.path}" in done.stderr
        assert f" {m.path} " in Path("/proc/self/mountinfo").read_text()  # not ours: left
    finally:
        other.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)


def test_busy_mountpoint(mount: Mount) -> None:
    done = subprocess.run(mount.command(), capture_output=True, text=True)
    assert done.returncode != 0
    assert "busy" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with open(mount.path / "open.txt", "w"):  # a program still uses the mount
        unmount = stowfs_cmd("unmount", str(mount.path))
        done = subprocess.run(unmount, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"see `fuser -vm {mount.path}`" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert os.path.ismount(mount.path)
    # The same storage on a second mountpoint needs a cache dir (a journal) of its own.
    second = mount.path.parent / "second"
    second.mkdir()
    cmd = mount.command()
    cmd[cmd.index(str(mount.path))] = str(second)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"used by the mount on {mount.path}" in done.stderr
    assert "--cache-dir of its own" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(second)


@pytest.mark.parametrize("cleared_by", ["user", "stowfs"])
def test_kill9_with_write_back_pending(
    live_server: LiveServer, tmp_path: Path, cleared_by: str
) -> None:
    """The next mount resumes the uploads; the dead mount left on the mountpoint is
    unmounted by the user or, if not, by that next mount (as after a restart by systemd)."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.start("--write-back", "600")
    data = {f"f{i}": os.urandom(50_000 + i) for i in range(5)}
    try:
        with open(m.path / "gone", "wb") as kept_open:  # removed while open: goes nowhere
            kept_open.write(b"before")
            os.unlink(m.path / "gone")
            kept_open.write(b" and after the unlink")
        for name, content in data.items():
            (m.path / name).write_bytes(content)
        assert m.remote_files() == []
        inside = subprocess.Popen(["sleep", "60"], cwd=m.path)  # keeps the dead mount busy
        try:
            m.kill9(clean_up=cleared_by == "user")
            assert len(list((m.cache / "staging").iterdir())) == 5  # every byte on disk
            m.start()
        finally:
            inside.kill()
            inside.wait()
        wait_for(lambda: len(m.remote_files()) == 5, 20, "the resumed uploads")
        assert {f["filename"] for f in m.remote_files()} == set(data)
        for name, content in data.items():
            assert m.remote_bytes(m.remote_file(name)) == content
            assert (m.path / name).read_bytes() == content
        log = m.log.read_text()
        assert ("left over from a mount that died: unmounted it" in log) == (cleared_by == "stowfs")
        assert "Traceback" not in log
    finally:
        m.unmount()


def test_kill9_after_renaming_files_pending_for_write_back(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """Pending files renamed, moved into a folder that is then renamed, rewritten under
    their new name: after kill -9 the next mount uploads each under its last name."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.start("--write-back", "600")
    try:
        (m.path / "a" / "sub").mkdir(parents=True)
        (m.path / "a" / "f1").write_text("one")
        (m.path / "a" / "sub" / "f2").write_text("two")
        (m.path / "g").write_text("gee")
        os.rename(m.path / "g", m.path / "a" / "g2")
        os.rename(m.path / "a", m.path / "b")
        (m.path / "h").write_text("first")
        os.rename(m.path / "h", m.path / "h2")
        (m.path / "h2").write_text("second")
        assert m.remote_files() == []
        m.kill9()
        m.start()
        wanted = {"f1": "one", "g2": "gee", "f2": "two", "h2": "second"}
        wait_for(lambda: len(m.remote_files()) == 4, 20, "the resumed uploads")
        found = {(f["folder"], f["filename"]): m.remote_bytes(f) for f in m.remote_files()}
        assert found == {
            (folder, name): wanted[name].encode()
            for folder, name in [("b", "f1"), ("b", "g2"), ("b/sub", "f2"), ("", "h2")]
        }
        assert not (m.path / "a").exists()
    finally:
        m.unmount()


def test_kill9_before_a_streamed_upload_completes_resumes_from_its_parts(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """A big file sent part by part while it was written, closed with write-back
    pending, then kill -9: the next mount sends only the part the server lacks."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.start("--write-back", "600")
    name = f"resumed-{uuid.uuid4().hex[:8]}.bin"
    data = os.urandom(3 * GROWING_PART + 12_345)
    try:
        with open(m.path / name, "wb", buffering=0) as f:
            for offset in range(0, len(data), MiB):
                f.write(data[offset : offset + MiB])
            wait_for(lambda: parts_on(live_server, name) == 3, 60, "the three whole parts")
        m.kill9()
        m.options = ("-v",)  # log every request
        m.start()
        wait_for(lambda: bool(m.remote_files()), 60, "the resumed upload", max_pause=0.2)
        assert m.remote_bytes(m.remote_file(name)) == data
        requests = [line for line in m.log.read_text().splitlines() if "HTTP Request" in line]
        assert not [r for r in requests if "multipart/initiate" in r]
        assert len([r for r in requests if "HTTP Request: PUT" in r]) == 1  # the last part
    finally:
        m.unmount()


def test_write_only_dialect_is_a_drop_folder(live_server: LiveServer, tmp_path: Path) -> None:
    import io

    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, "PNG")
    src = tmp_path / "red.png"
    src.write_bytes(image.getvalue())
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.start("--dialect", "images")
    try:
        sh("cp", src, m.path / "red.png")
        assert sh("ls", m.path).split() == ["red.png"]
        url = sh("getfattr", "--only-values", "-n", "user.stowfs.url", m.path / "red.png")
        with m.api() as api:
            assert api.get(url).content == src.read_bytes()
        assert "Operation not permitted" in fails("mkdir", m.path / "sub")
        m.unmount()
        m.start("--dialect", "images")
        assert sh("ls", m.path).split() == ["red.png"]  # from the mount's own record
    finally:
        m.unmount()


def test_a_presign_drop_folder_shows_each_file_s_key_and_cannot_read_it_back(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The presign dialect gives a key for a job to take, and no download URL."""
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.start("--dialect", "presign")
    try:
        data = os.urandom(100_000)
        (tmp_path / "frame.bin").write_bytes(data)
        sh("cp", tmp_path / "frame.bin", m.path)
        sh("mv", m.path / "frame.bin", m.path / "first.bin")
        assert sh("ls", m.path).split() == ["first.bin"]
        key = sh("getfattr", "--only-values", "-n", "user.stowfs.key", m.path / "first.bin")
        [stored] = m.remote_files()  # (the same service's storage dialect)
        assert (stored["object_key"], m.remote_bytes(stored)) == (key, data)
        assert "Permission denied" in fails("cat", m.path / "first.bin")
        assert "gave no download URL for 'first.bin'" in m.log.read_text()
        m.unmount()
        m.start("--dialect", "presign")
        assert sh("ls", m.path).split() == ["first.bin"]  # from the mount's own record
        sh("rm", m.path / "first.bin")
        assert sh("ls", m.path).split() == []
    finally:
        m.unmount()


def test_mount_options(live_server: LiveServer, tmp_path: Path) -> None:
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    upload(m, "", "f.txt", b"data", {})
    m.start("-o", "ro,uid=1234,gid=4321,other_xattrs=enotsup", "--umask", "077")
    try:
        assert sh("stat", "-c", "%u %g %a", m.path / "f.txt").split() == ["1234", "4321", "400"]
        assert (m.path / "f.txt").read_bytes() == b"data"
        assert "Read-only file system" in fails("touch", m.path / "new")
        # Other namespaces are "not supported" (GNU ls then stops asking); user.* as ever.
        assert "Operation not supported" in fails(
            "getfattr", "-n", "security.selinux", m.path / "f.txt"
        )
        assert "No such attribute" in fails("getfattr", "-n", "user.nope", m.path / "f.txt")
        assert "f.txt" in sh("ls", "-l", m.path)
    finally:
        m.unmount()
    bad = subprocess.run(
        [*m.command("-o", "other_xattrs=maybe")], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0
    assert "expected one of enodata, enotsup" in bad.stderr


def test_a_key_rotated_in_its_file_is_taken_up_by_the_running_mount(
    live_server: LiveServer, tmp_path: Path
) -> None:
    team = f"rotating-{uuid.uuid4().hex[:8]}"
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key(team=team))
    m.start()
    try:
        (m.path / "before.txt").write_text("old key")
        old = tmp_path / "old.key"
        old.write_text(m.key)
        m.key = live_server.new_key(team=team)
        m.key_file.write_text(m.key)  # the user rotates the key: a new one, the old revoked
        revoke = stowfs_cmd("keys", "revoke", "--data", str(live_server.data_dir))
        sh(*revoke, "--key-file", old)
        written: list[str] = []

        def refused_and_taken_up() -> bool:
            name = f"after-{len(written)}.txt"
            (m.path / name).write_text("new key")  # a close would fail with EACCES
            written.append(name)
            return "its source holds a new one" in m.log.read_text()

        # Servers cache a key's lookup for a few seconds: write until the refusal came.
        wait_for(refused_and_taken_up, 30, "the server to refuse the old key", max_pause=0.2)
        names = {f["filename"] for f in m.remote_files()}
        assert names == {"before.txt", *written}
    finally:
        m.unmount()


def test_named_remote_and_folder(live_server: LiveServer, tmp_path: Path) -> None:
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.key_file.chmod(0o600)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    base = ["--url", m.base_url, "--key-file", str(m.key_file)]
    add = stowfs_cmd("remote", "add", "work", *base)
    done = subprocess.run(add, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    upload(m, "proj/in", "ref.png", b"ref", {})
    cmd = stowfs_cmd("mount", "work:proj", str(m.path), "--cache-dir", str(m.cache))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    try:
        assert os.listdir(m.path) == ["in"]
        assert (m.path / "in/ref.png").read_bytes() == b"ref"
        (m.path / "out.txt").write_text("result")
        assert m.remote_bytes(m.remote_file("proj/out.txt")) == b"result"
    finally:
        sh(*stowfs_cmd("unmount", str(m.path)))


def test_kernel_read_ahead_is_raised_before_the_mount_is_ready(
    live_server: LiveServer, tmp_path: Path
) -> None:
    # A file opened earlier would keep the kernel's 128 KiB (it copies it at open).
    if os.geteuid() != 0:
        pytest.skip("only root may set a device's read-ahead")
    m = new_mount(tmp_path, live_server.base_url, live_server.new_key())
    m.start(foreground=False)
    try:
        device = next(
            line.split()[2]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == str(m.path)
        )
        assert Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == "1024"
    finally:
        m.unmount()
