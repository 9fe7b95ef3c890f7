"""The data every side serves, laid out before any server starts: the reference server's
database and blob, the same files for rclone serve and nginx, and the local sources."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from stowfs.server import db
from tests.benchmarks.bench_server import insert_blob, insert_files, team_of
from tests.benchmarks.workloads import Layout
from tests.livesrv import create_key

MANY = "many"
BIG = "big/blob.bin"  # insert_blob's folder and name
SMALL_SIZE = 4096


@dataclass(frozen=True)
class Plan:
    runs: int
    big_mib: int
    many: int
    small: int
    search_files: int
    random_reads: int


FULL = Plan(runs=3, big_mib=1024, many=10_000, small=1_000, search_files=100_000, random_reads=500)
QUICK = Plan(runs=1, big_mib=64, many=1_000, small=100, search_files=10_000, random_reads=100)


@dataclass(frozen=True)
class Stage:
    data: Path  # the reference server's data dir
    keys: dict[str, str]  # "search", "upload", "fs": one team each
    big_key: str  # object key of the big file
    peer: Path  # served by rclone serve webdav
    www: Path  # served by nginx (blob.bin, and upload/ for PUTs)
    layout: Layout


def populate(work: Path, plan: Plan) -> Stage:
    data = work / "data"
    data.mkdir()
    keys = {
        name: create_key(data, f"bench-{name}", "enterprise") for name in ("search", "upload", "fs")
    }

    def fill(c: sqlite3.Connection) -> tuple[str, str, list[tuple[str, int]]]:
        insert_files(c, *team_of(c, keys["search"]), plan.search_files)
        team, user = team_of(c, keys["fs"])
        insert_files(c, team, user, plan.many, seed=1, folders=[MANY])
        big_key = insert_blob(c, data, team, user, plan.big_mib)
        file_id = c.execute("SELECT file_id FROM files WHERE object_key = ?", (big_key,))
        many = c.execute(
            "SELECT filename, size FROM files WHERE team_id = ? AND folder = ?", (team, MANY)
        )
        return big_key, file_id.fetchone()[0], [(r[0], r[1]) for r in many]

    conn = db.connect(data / "meta.db")
    try:
        big_key, file_id, many = db.transaction(conn, fill)
    finally:
        conn.close()
    blob = data / "blobs" / "objects" / file_id[:2] / file_id

    # One inode everywhere: every reader shares the page cache of the same bytes.
    peer = work / "peer"
    (peer / BIG).parent.mkdir(parents=True)
    os.link(blob, peer / BIG)
    (peer / MANY).mkdir()
    for name, size in many:  # sparse: listings see the sizes, nothing reads the bytes
        with open(peer / MANY / name, "wb") as f:
            f.truncate(size)
    www = work / "www"
    (www / "upload").mkdir(parents=True)
    (www / "upload").chmod(0o777)  # nginx's workers drop root
    os.link(blob, www / "blob.bin")
    source = work / "source"
    (source / "small").mkdir(parents=True)
    os.link(blob, source / "big.bin")
    for i in range(plan.small):
        (source / "small" / f"s{i:04d}.bin").write_bytes(os.urandom(SMALL_SIZE))

    layout = Layout(
        big=BIG,
        big_size=plan.big_mib * 1024 * 1024,
        many=MANY,
        many_names=[name for name, _ in many],
        source_big=source / "big.bin",
        source_small=source / "small",
        random_reads=plan.random_reads,
    )
    return Stage(data, keys, big_key, peer, www, layout)
