"""Reference server benchmarks: upload-url requests/s, search latency at 100,000 files,
download throughput against nginx serving the same blob with sendfile.

    .venv/bin/python -m tests.benchmarks.bench_server [--files N] [--download-mib N]

Starts its own server (and nginx) on 127.0.0.1, prints a table and writes
tests/benchmarks/results/server.json. The load generator is Python on the same
machine, so requests/s is a floor set by both ends sharing the cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from stowfs.server import db
from stowfs.server.fields import TEXT_FIELDS, index_rows
from stowfs.server.names import ancestors
from stowfs.server.timeutil import iso
from tests.livesrv import LiveServer, create_key, start_server

RESULTS = Path(__file__).parent / "results" / "server.json"
NGINX = "/usr/sbin/nginx"
CHUNK = 4 * 1024 * 1024

UPLOAD_REQUESTS = 2_000
UPLOAD_CONNECTIONS = 16
SEARCHES = 200

WORDS = [
    *("cat", "dog", "castle", "forest", "neon", "portrait", "sunset", "ocean", "robot"),
    *("dragon", "city", "night", "rain", "studio", "golden", "vintage", "anime"),
    *("watercolor", "cyberpunk", "mountain", "river", "flower", "galaxy", "knight"),
]
PROJECTS = [f"project-{i:02d}" for i in range(20)]
TAGS = [f"tag{i:02d}" for i in range(30)]
MODELS = [
    "black-forest-labs/flux-schnell",
    "stability/sdxl",
    "openai/dall-e-3",
    "midjourney/v6",
    "ideogram/v2",
]
TYPES = [("png", "image/png"), ("jpg", "image/jpeg"), ("webp", "image/webp"), ("mp4", "video/mp4")]
FOLDERS = [f"{kind}/{n:02d}" for kind in ("inputs", "outputs") for n in range(25)]
YEAR = 365 * 86_400
START = time.time() - YEAR


# -- populating meta.db directly (the server is not running yet) --------------------------


def team_of(conn: sqlite3.Connection, key: str) -> tuple[str, str]:
    row = conn.execute(
        "SELECT team_id, user_id FROM api_keys WHERE key_hash = ?",
        (hashlib.sha256(key.encode()).hexdigest(),),
    ).fetchone()
    return row[0], row[1]


def fake_metadata(rng: random.Random) -> dict[str, Any]:
    return {
        "project": rng.choice(PROJECTS),
        "tags": rng.sample(TAGS, rng.randint(1, 4)),
        "source": "prediction" if rng.random() < 0.7 else "upload",
        "source_model": rng.choice(MODELS),
        "category": rng.choice(["portrait", "landscape", "abstract", "product"]),
        "environment": rng.choice(["dev", "prod"]),
        "seed": rng.randrange(2**32),
        "steps": rng.choice([20, 25, 30, 50]),
        "cfg_scale": rng.choice([5.0, 7.0, 7.5, 9.0]),
        "width": rng.choice([512, 768, 1024]),
        "height": rng.choice([512, 768, 1024]),
        "prompt": " ".join(rng.sample(WORDS, 6)),
        "is_processed": rng.random() < 0.5,
    }


def insert_files(
    conn: sqlite3.Connection,
    team_id: str,
    user_id: str,
    count: int,
    seed: int = 42,
    folders: list[str] = FOLDERS,
) -> None:
    """`count` stored files with varied metadata, indexed as files.store would index them
    (rows only: their bytes are never read)."""
    rng = random.Random(seed)
    first = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM files").fetchone()[0]
    files: list[tuple[Any, ...]] = []
    attrs: list[tuple[Any, ...]] = []
    fts: list[tuple[Any, ...]] = []
    for i in range(count):
        row_id = first + i
        ext, ctype = rng.choice(TYPES)
        folder = rng.choice(folders)
        name = f"img_{i:06d}_{rng.choice(WORDS)}.{ext}"
        created = iso(START + i * YEAR / count)
        metadata = fake_metadata(rng)
        files.append(
            (
                row_id,
                f"{team_id}{i:012x}",
                team_id,
                user_id,
                f"{team_id}/{folder}/{i}_{name}",
                folder,
                name,
                ext,
                ctype,
                rng.randrange(10_000, 20_000_000),
                hashlib.md5(name.encode(), usedforsecurity=False).hexdigest(),
                json.dumps(metadata),
                created,
            )
        )
        attrs.extend((row_id, team_id, *r) for r in index_rows(metadata))
        texts = [metadata.get(k, "") for k in TEXT_FIELDS[1:]]
        fts.append((row_id, name, *texts))
    conn.executemany(
        "INSERT INTO files (id, file_id, team_id, user_id, object_key, folder, filename,"
        " extension, content_type, size, checksum, state, upload_ip, metadata, created_at,"
        " updated_at, upload_kind)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,'stored','127.0.0.1',?,?,?,'post')",
        [(*f, f[-1]) for f in files],
    )
    conn.executemany(
        "INSERT INTO attrs (file_id, team_id, name, vtext, vnum) VALUES (?,?,?,?,?)", attrs
    )
    conn.executemany(
        "INSERT INTO fts (rowid, filename, prompt, negative_prompt) VALUES (?,?,?,?)", fts
    )
    conn.executemany(
        "INSERT OR IGNORE INTO folders (team_id, path, created_at) VALUES (?,?,?)",
        [(team_id, p, iso(START)) for f in folders for p in ancestors(f)],
    )


def insert_blob(
    conn: sqlite3.Connection, data_dir: Path, team_id: str, user_id: str, mib: int
) -> str:
    """A stored object of `mib` MiB; returns its object key."""
    file_id = f"{team_id}bench"
    path = data_dir / "blobs" / "objects" / file_id[:2] / file_id
    path.parent.mkdir(parents=True, exist_ok=True)
    md5 = hashlib.md5(usedforsecurity=False)
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        for _ in range(mib * 1024 * 1024 // CHUNK):
            f.write(block)
            md5.update(block)
    key = f"{team_id}/big/1_blob.bin"
    now = iso(time.time())
    conn.execute(
        "INSERT INTO files (file_id, team_id, user_id, object_key, folder, filename, extension,"
        " content_type, size, checksum, state, metadata, created_at, updated_at, upload_kind)"
        " VALUES (?,?,?,?,'big','blob.bin','bin','application/octet-stream',?,?,'stored','{}',"
        "?,?,'post')",
        (file_id, team_id, user_id, key, path.stat().st_size, md5.hexdigest(), now, now),
    )
    return key


# -- measurements ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench_upload_urls(base_url: str, key: str) -> dict[str, Any]:
    errors = 0
    limits = httpx.Limits(max_connections=UPLOAD_CONNECTIONS)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"X-API-Key": key}, limits=limits, timeout=60
    ) as client:

        async def worker(n: int, start: int) -> None:
            nonlocal errors
            for i in range(start, start + n):
                body = {"filename": f"f{i}.png", "folder": "bench", "metadata": {"tags": ["b"]}}
                r = await client.post("/files/upload-url", json=body)
                errors += r.status_code != 200

        await worker(20, -20)  # warm-up: connections and caches
        per = UPLOAD_REQUESTS // UPLOAD_CONNECTIONS
        t0 = time.perf_counter()
        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for c in range(UPLOAD_CONNECTIONS):
                    nursery.start_soon(worker, per, c * per)
        elapsed = time.perf_counter() - t0
    done = per * UPLOAD_CONNECTIONS
    return {
        "requests": done,
        "connections": UPLOAD_CONNECTIONS,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(done / elapsed, 1),
        "errors": errors,
    }


def search_bodies(rng: random.Random, count: int) -> list[tuple[str, dict[str, Any]]]:
    def day(frac: float) -> str:
        return iso(START + frac * YEAR)

    shapes: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("all, newest first", lambda: {}),
        ("project", lambda: {"filters": {"project": rng.choice(PROJECTS)}}),
        (
            "project + tags",
            lambda: {"filters": {"project": rng.choice(PROJECTS), "tags": [rng.choice(TAGS)]}},
        ),
        (
            "content_type + folder",
            lambda: {"filters": {"content_type": "image/png", "folder": rng.choice(FOLDERS)}},
        ),
        (
            "source_model + created_at gte",
            lambda: {
                "filters": {
                    "source_model": rng.choice(MODELS),
                    "created_at": {"gte": day(rng.random())},
                }
            },
        ),
        (
            "size range",
            lambda: {"filters": {"size": {"gte": 1_000_000, "lte": rng.randrange(2, 20) * 10**6}}},
        ),
        ("seed lt", lambda: {"filters": {"seed": {"lt": rng.randrange(2**32)}}}),
        ("tags contain 2", lambda: {"filters": {"tags": rng.sample(TAGS, 2)}}),
        ("prompt words", lambda: {"filters": {"prompt": " ".join(rng.sample(WORDS, 2))}}),
        ("filename substring", lambda: {"filters": {"filename": f"{rng.randrange(100_000):05d}"}}),
        ("prompt short word", lambda: {"filters": {"prompt": "ca"}}),
        (
            "boolean + keyword",
            lambda: {"filters": {"is_processed": True, "environment": "prod"}},
        ),
        ("sort size asc", lambda: {"sort_by": "size", "sort_order": "asc"}),
        (
            "sort seed (attr) desc, project",
            lambda: {"filters": {"project": rng.choice(PROJECTS)}, "sort_by": "seed"},
        ),
        ("deep page", lambda: {"page": rng.randrange(100, 1000), "page_size": 100}),
    ]
    out = []
    for i in range(count):
        label, make = shapes[i % len(shapes)]
        out.append((label, {"page_size": 20, **make()}))
    return out


async def bench_search(base_url: str, key: str) -> dict[str, Any]:
    bodies = search_bodies(random.Random(7), SEARCHES)
    times: dict[str, list[float]] = {}
    totals: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": key}, timeout=60) as c:
        r = await c.post("/files/storage/search", json={})  # warm-up: page cache
        assert r.status_code == 200, r.text
        with trio.fail_after(600):
            for label, body in bodies:
                t0 = time.perf_counter()
                r = await c.post("/files/storage/search", json=body)
                took = time.perf_counter() - t0
                assert r.status_code == 200, (body, r.text)
                times.setdefault(label, []).append(took)
                totals[label] = r.json()["total"]
    every = [t for ts in times.values() for t in ts]
    return {
        "searches": len(every),
        "p50_ms": round(statistics.median(every) * 1000, 1),
        "p95_ms": round(percentile(every, 0.95) * 1000, 1),
        "max_ms": round(max(every) * 1000, 1),
        "by_shape": {
            label: {
                "p95_ms": round(percentile(ts, 0.95) * 1000, 1),
                "last_total": totals[label],
            }
            for label, ts in times.items()
        },
    }


def curl_mb_s(url: str, runs: int = 3) -> float:
    """Median MB/s (10^6 bytes) of `runs` downloads to /dev/null, after one warm-up."""
    speeds = []
    for i in range(runs + 1):
        out = subprocess.run(
            ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{speed_download}", url],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if i:
            speeds.append(float(out.stdout) / 1e6)
    return round(statistics.median(speeds), 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def nginx(root: Path, work: Path) -> Iterator[str]:
    """nginx serving `root` on a free loopback port; yields its base URL."""
    port = free_port()
    work.mkdir()
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        # uploads (PUT) for the benchmark's upload limit
        dav_methods PUT;
        create_full_put_path on;
        client_max_body_size 0;
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (work / "error.log").read_text()
                    raise RuntimeError(f"nginx did not start: {log}") from None
                time.sleep(0.05)  # polling a port with a deadline, not synchronizing
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_download(server: LiveServer, key: str, object_key: str, work: Path) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/files/storage/file/{object_key}", headers={"X-API-Key": key})
    r.raise_for_status()
    record = r.json()
    blob = server.data_dir / "blobs" / "objects"
    file_id = record["file_id"]
    ours = curl_mb_s(record["file_url"])
    with nginx(blob / file_id[:2], work / "nginx") as base:
        theirs = curl_mb_s(f"{base}/{file_id}")
    return {
        "bytes": record["size"],
        "stowfs_mb_s": ours,
        "nginx_mb_s": theirs,
        "ratio": round(ours / theirs, 2),
    }


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="files for the search bench")
    parser.add_argument("--download-mib", type=int, default=1024, help="size of the object")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stowfs-bench-"))
    work.chmod(0o755)  # nginx workers drop root for an unprivileged user that must read it
    server: LiveServer | None = None
    try:
        data = work / "data"
        data.mkdir()
        keys = {
            name: create_key(data, f"bench-{name}", "enterprise")
            for name in ("search", "upload", "download")
        }
        t0 = time.perf_counter()
        conn = db.connect(data / "meta.db")
        try:

            def fill(c: sqlite3.Connection) -> str:
                insert_files(c, *team_of(c, keys["search"]), args.files)
                return insert_blob(c, data, *team_of(c, keys["download"]), args.download_mib)

            object_key = db.transaction(conn, fill)
        finally:
            conn.close()
        populate_s = time.perf_counter() - t0
        print(f"populated {args.files} files + {args.download_mib} MiB in {populate_s:.1f} s")

        server = start_server(data)
        results: dict[str, Any] = {"files": args.files, "populate_seconds": round(populate_s, 1)}
        results["upload_url"] = trio.run(bench_upload_urls, server.base_url, keys["upload"])
        results["search"] = trio.run(bench_search, server.base_url, keys["search"])
        results["download"] = bench_download(server, keys["download"], object_key, work)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    report(results)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def report(results: dict[str, Any]) -> None:
    up, se, dl = results["upload_url"], results["search"], results["download"]
    rows = [
        (
            "upload-url",
            f"{up['requests_per_s']} req/s",
            f"{up['requests']} requests, {up['connections']} connections, {up['errors']} errors",
        ),
        (
            f"search ({results['files']} files)",
            f"p95 {se['p95_ms']} ms",
            f"p50 {se['p50_ms']} ms, max {se['max_ms']} ms, {se['searches']} searches",
        ),
        (
            "download",
            f"{dl['stowfs_mb_s']} MB/s",
            f"nginx {dl['nginx_mb_s']} MB/s, ratio {dl['ratio']}, {dl['bytes']} bytes",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, figure, detail in rows:
        print(f"{name:<{width}}  {figure:>16}  {detail}")
    print("search p95 by shape:")
    for label, v in se["by_shape"].items():
        print(f"  {label:<34} {v['p95_ms']:>8} ms  (total {v['last_total']})")


if __name__ == "__main__":
    main()
