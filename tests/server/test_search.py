"""Search, distinct values and the field schema (protocol.md section 2, seed 000)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from stowfs.server import db, search
from stowfs.server.auth import create_key
from stowfs.server.fields import FIELDS
from tests.benchmarks.bench_server import insert_files, team_of
from tests.livesrv import LiveServer
from tests.server.flows import upload_post

FLUX = "black-forest-labs/flux-schnell"

# (filename, folder, size, metadata), uploaded in this order (created_at ascending).
FILES: list[tuple[str, str, int, dict[str, Any]]] = [
    (
        "photo.png",
        "inputs",
        1000,
        {
            "project": "avatar-gen",
            "tags": ["portrait", "input"],
            "source_model": FLUX,
            "prompt": "A Golden Retriever puppy in the snow",
            "seed": 42,
            "steps": 20,
            "is_processed": True,
            "category": "portraits",
            "reviewer": "ann@example.com",
        },
    ),
    (
        "sunset.png",
        "inputs",
        2000,
        {
            "project": "avatar-gen",
            "tags": ["landscape", "approved"],
            "source_model": "stability/sdxl",
            "prompt": "sunset over the ocean, golden hour",
            "negative_prompt": "blurry, low quality",
            "seed": 7,
            "is_processed": False,
        },
    ),
    (
        "Cat_Photo.JPG",
        "outputs",
        3000,
        {
            "project": "pets",
            "tags": ["portrait", "approved", "cat"],
            "source_model": FLUX,
            "prompt": "a cat on a sofa",
            "seed": 1000,
            "reviewer": "bob",
        },
    ),
    ("notes.txt", "docs", 10, {}),
    (
        "video.mp4",
        "outputs/clips",
        5000,
        {
            "project": "pets",
            "tags": ["video"],
            "duration": 12.5,
            "expires_at": "2030-01-01T00:00:00Z",
            "score": 3,
        },
    ),
    (
        "draft.png",
        "inputs",
        400,
        {
            "project": "avatar-gen",
            "tags": ["portrait", "approved"],
            "status": "reviewed",
            "seed": 99,
            "environment": "dev",
            "custom_flag": True,
        },
    ),
]
ALL = [f[0] for f in FILES]


@dataclass
class Corpus:
    key: str
    records: dict[str, dict[str, Any]]  # by filename


async def _upload_all(base_url: str, key: str) -> dict[str, dict[str, Any]]:
    records = {}
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": key}) as api:
        for name, folder, size, metadata in FILES:
            records[name] = await upload_post(api, name, b"x" * size, folder, metadata)
    return records


@pytest.fixture(scope="module")
def corpus(live_server: LiveServer) -> Corpus:
    """One team's files, uploaded once for the module; tests only read them."""
    key = live_server.new_key()
    return Corpus(key, trio.run(_upload_all, live_server.base_url, key))


@pytest.fixture
async def client(live_server: LiveServer, corpus: Corpus) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=live_server.base_url, headers={"X-API-Key": corpus.key}, timeout=30
    ) as c:
        yield c


async def find(client: httpx.AsyncClient, filters: Any = None, **body: Any) -> dict[str, Any]:
    if filters is not None:
        body["filters"] = filters
    r = await client.post("/files/storage/search", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def names(client: httpx.AsyncClient, filters: Any = None, **body: Any) -> list[str]:
    """Filenames found, in the order returned (default sort: newest first)."""
    result = await find(client, filters, page_size=100, **body)
    return [f["filename"] for f in result["files"]]


def newest_first(*wanted: str) -> list[str]:
    return [n for n in reversed(ALL) if n in wanted]


async def error(client: httpx.AsyncClient, body: Any, status: int = 400) -> dict[str, Any]:
    r = await client.post("/files/storage/search", json=body)
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"].isupper()
    assert err["message"]
    return err


async def test_seed_examples(client: httpx.AsyncClient, corpus: Corpus) -> None:
    body = {
        "filters": {"content_type": "image/png", "folder": "inputs"},
        "sort_by": "created_at",
        "sort_order": "desc",
        "page_size": 10,
    }
    result = await find(client, **body)
    assert set(result) == {"files", "total", "page", "page_size", "total_pages"}
    assert [f["filename"] for f in result["files"]] == ["draft.png", "sunset.png", "photo.png"]
    assert (result["total"], result["page"], result["page_size"], result["total_pages"]) == (
        3,
        1,
        10,
        1,
    )
    first = result["files"][0]
    assert first["url"] == first["file_url"]
    for key in ("object_key", "content_type", "size", "folder", "created_at", "metadata"):
        assert first[key] == corpus.records["draft.png"][key]

    found = await names(client, {"project": "avatar-gen", "tags": ["approved"]})
    assert found == ["draft.png", "sunset.png"]

    since = corpus.records["Cat_Photo.JPG"]["created_at"]
    found = await names(client, {"source_model": FLUX, "created_at": {"gte": since}})
    assert found == ["Cat_Photo.JPG"]
    found = await names(client, {"source_model": FLUX, "created_at": {"gte": "2000-01-01"}})
    assert found == ["Cat_Photo.JPG", "photo.png"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"category": "portraits"}, ["photo.png"]),
        ({"status": "reviewed"}, ["draft.png"]),
        ({"status": "uploaded"}, [n for n in ALL if n != "draft.png"]),
        ({"source": "upload"}, ALL),
        ({"extension": "png"}, ["photo.png", "sunset.png", "draft.png"]),
        ({"extension": "jpg"}, ["Cat_Photo.JPG"]),
        ({"is_processed": False}, ["sunset.png"]),
        ({"steps": 20}, ["photo.png"]),
        ({"seed": 42.0}, ["photo.png"]),
        ({"visibility": "private"}, ALL),
        ({"visibility": "public"}, []),
        ({"folder": "outputs"}, ["Cat_Photo.JPG"]),
        ({"content_type": "video/mp4"}, ["video.mp4"]),
        ({"project": "pets", "source_model": FLUX}, ["Cat_Photo.JPG"]),
        ({"project": "nope"}, []),
    ],
)
async def test_equality(client: httpx.AsyncClient, filters: Any, expected: list[str]) -> None:
    assert await names(client, filters) == newest_first(*expected)


async def test_equality_on_system_columns(client: httpx.AsyncClient, corpus: Corpus) -> None:
    rec = corpus.records["sunset.png"]
    for field in ("file_id", "object_key", "checksum"):
        assert await names(client, {field: rec[field]}) == ["sunset.png"]
    assert await names(client, {"size": 2000}) == ["sunset.png"]
    assert await names(client, {"created_at": rec["created_at"]}) == ["sunset.png"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"tags": "portrait"}, ["photo.png", "Cat_Photo.JPG", "draft.png"]),
        ({"tags": ["portrait"]}, ["photo.png", "Cat_Photo.JPG", "draft.png"]),
        ({"tags": ["portrait", "approved"]}, ["Cat_Photo.JPG", "draft.png"]),
        ({"tags": ["portrait", "approved", "cat"]}, ["Cat_Photo.JPG"]),
        ({"tags": ["portrait", "landscape"]}, []),
        ({"project": ["pets"]}, ["Cat_Photo.JPG", "video.mp4"]),
        ({"project": ["pets", "avatar-gen"]}, []),
    ],
)
async def test_contains_all(client: httpx.AsyncClient, filters: Any, expected: list[str]) -> None:
    assert await names(client, filters) == newest_first(*expected)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"size": {"gte": 2000}}, ["sunset.png", "Cat_Photo.JPG", "video.mp4"]),
        ({"size": {"gt": 2000, "lt": 5000}}, ["Cat_Photo.JPG"]),
        ({"size": {"lte": 400}}, ["notes.txt", "draft.png"]),
        ({"seed": {"lte": 42}}, ["photo.png", "sunset.png"]),
        ({"seed": {"gt": 42}}, ["Cat_Photo.JPG", "draft.png"]),
        ({"seed": {"gte": 7, "lt": 99.5}}, ["photo.png", "sunset.png", "draft.png"]),
        ({"duration": {"gte": 12.5}}, ["video.mp4"]),
        ({"expires_at": {"gte": "2029-12-31"}}, ["video.mp4"]),
        ({"expires_at": {"lt": "2029-12-31T23:00:00+00:00"}}, []),
        ({"expires_at": "2030-01-01T09:00:00+09:00"}, ["video.mp4"]),
        ({"created_at": {"lt": "2000-01-01T00:00:00Z"}}, []),
        ({"score": {"gt": 2}}, ["video.mp4"]),
    ],
)
async def test_ranges(client: httpx.AsyncClient, filters: Any, expected: list[str]) -> None:
    assert await names(client, filters) == newest_first(*expected)


async def test_created_at_range_between_uploads(client: httpx.AsyncClient, corpus: Corpus) -> None:
    low = corpus.records["sunset.png"]["created_at"]
    high = corpus.records["video.mp4"]["created_at"]
    found = await names(client, {"created_at": {"gt": low, "lte": high}})
    assert found == newest_first("Cat_Photo.JPG", "notes.txt", "video.mp4")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"filename": "cat"}, ["Cat_Photo.JPG"]),
        ({"filename": "PHOTO"}, ["photo.png", "Cat_Photo.JPG"]),
        ({"filename": "hoto.pn"}, ["photo.png"]),
        ({"filename": "mp"}, ["video.mp4"]),  # short word: LIKE
        ({"filename": "photo jpg"}, ["Cat_Photo.JPG"]),
        ({"filename": "100%"}, []),
        ({"prompt": "golden"}, ["photo.png", "sunset.png"]),
        ({"prompt": "GOLDEN retriever"}, ["photo.png"]),
        ({"prompt": "retr now"}, ["photo.png"]),
        ({"prompt": "a sofa"}, ["Cat_Photo.JPG"]),
        ({"prompt": "on"}, ["Cat_Photo.JPG"]),
        ({"prompt": "in"}, ["photo.png"]),
        ({"prompt": "zebra"}, []),
        ({"prompt": ["cat", "sofa"]}, ["Cat_Photo.JPG"]),
        ({"negative_prompt": "BLUR"}, ["sunset.png"]),
        ({"prompt": 'say "hi"'}, []),
        ({"prompt": "gold\0puppy"}, ["photo.png"]),  # NUL separates words
    ],
)
async def test_text_match(client: httpx.AsyncClient, filters: Any, expected: list[str]) -> None:
    assert await names(client, filters) == newest_first(*expected)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"metadata.reviewer": "bob"}, ["Cat_Photo.JPG"]),
        ({"reviewer": "bob"}, ["Cat_Photo.JPG"]),  # bare: the team uses the key
        ({"custom_flag": True}, ["draft.png"]),
        ({"metadata.score": 3}, ["video.mp4"]),
        ({"metadata.nobody": "x"}, []),
        ({"metadata.project": "pets"}, ["Cat_Photo.JPG", "video.mp4"]),
        ({"metadata.size": 2000}, []),  # system fields are not in the metadata
    ],
)
async def test_custom_keys(client: httpx.AsyncClient, filters: Any, expected: list[str]) -> None:
    assert await names(client, filters) == newest_first(*expected)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"seed": None}, ["notes.txt", "video.mp4"]),
        ({"reviewer": None}, [n for n in ALL if n not in ("photo.png", "Cat_Photo.JPG")]),
        ({"metadata.nobody": None}, ALL),
        ({"tags": None}, ["notes.txt"]),
        ({"checksum": None}, []),
        ({"status": None}, []),  # "uploaded" is indexed even when unset
    ],
)
async def test_null_is_absent(client: httpx.AsyncClient, filters: Any, expected: list[str]) -> None:
    assert await names(client, filters) == newest_first(*expected)


@pytest.mark.parametrize(
    ("sort_by", "order", "expected"),
    [
        ("created_at", "asc", ALL),
        ("created_at", "desc", ALL[::-1]),
        (
            "size",
            "asc",
            ["notes.txt", "draft.png", "photo.png", "sunset.png", "Cat_Photo.JPG", "video.mp4"],
        ),
        (
            "size",
            "desc",
            ["video.mp4", "Cat_Photo.JPG", "sunset.png", "photo.png", "draft.png", "notes.txt"],
        ),
        (
            "filename",
            "asc",
            ["Cat_Photo.JPG", "draft.png", "notes.txt", "photo.png", "sunset.png", "video.mp4"],
        ),
        # Files without the field come last either way; ties by upload order.
        (
            "seed",
            "asc",
            ["sunset.png", "photo.png", "draft.png", "Cat_Photo.JPG", "notes.txt", "video.mp4"],
        ),
        (
            "seed",
            "desc",
            ["Cat_Photo.JPG", "draft.png", "photo.png", "sunset.png", "video.mp4", "notes.txt"],
        ),
        # Arrays: the smallest element going up, the largest going down.
        (
            "tags",
            "asc",
            ["sunset.png", "Cat_Photo.JPG", "draft.png", "photo.png", "video.mp4", "notes.txt"],
        ),
        (
            "tags",
            "desc",
            ["video.mp4", "draft.png", "Cat_Photo.JPG", "photo.png", "sunset.png", "notes.txt"],
        ),
        (
            "metadata.reviewer",
            "asc",
            ["photo.png", "Cat_Photo.JPG", "sunset.png", "notes.txt", "video.mp4", "draft.png"],
        ),
    ],
)
async def test_sort(
    client: httpx.AsyncClient, sort_by: str, order: str, expected: list[str]
) -> None:
    assert await names(client, sort_by=sort_by, sort_order=order) == expected


async def test_pagination(client: httpx.AsyncClient) -> None:
    seen = []
    for page in (1, 2, 3):
        result = await find(client, page=page, page_size=2, sort_order="asc")
        assert (result["total"], result["total_pages"]) == (6, 3)
        assert (result["page"], result["page_size"]) == (page, 2)
        seen += [f["filename"] for f in result["files"]]
    assert seen == ALL
    result = await find(client, page=4, page_size=2)
    assert result["files"] == []
    assert result["total"] == 6
    result = await find(client, page_size=4)
    assert result["total_pages"] == 2
    assert len(result["files"]) == 4
    result = await find(client, {"project": "nope"})
    assert (result["total"], result["total_pages"], result["files"]) == (0, 0, [])
    assert len((await find(client))["files"]) == 6  # default page_size 20


async def test_limits(client: httpx.AsyncClient) -> None:
    assert (await find(client, page_size=100))["page_size"] == 100
    await error(client, {"page_size": 101})
    await error(client, {"page_size": 0})
    await error(client, {"page": 0})
    await error(client, {"page": 10**30})
    err = await error(client, {"url_expiration": 299})
    assert err["code"] == "INVALID_URL_EXPIRATION"
    await error(client, {"url_expiration": 15_552_001})
    await error(client, {"sort_order": "sideways"})
    await error(client, {"filters": [1, 2]})
    assert (await find(client, url_expiration=300))["total"] == 6
    r = await client.post("/files/storage/search", json={"filters": None})
    assert r.status_code == 200
    assert r.json()["total"] == 6


async def test_urls_download(client: httpx.AsyncClient) -> None:
    result = await find(client, {"filename": "notes"}, url_expiration=300)
    (rec,) = result["files"]
    r = await client.get(rec["url"])
    assert r.status_code == 200
    assert r.content == b"x" * 10


async def test_unknown_field_lists_valid_ones(client: httpx.AsyncClient) -> None:
    err = await error(client, {"filters": {"colour": "red"}})
    assert err["code"] == "UNKNOWN_FIELD"
    assert err["valid_fields"] == list(FIELDS)
    assert "content_type" in err["message"]
    assert "metadata.<key>" in err["message"]
    err = await error(client, {"sort_by": "colour"})
    assert err["code"] == "UNKNOWN_FIELD"


@pytest.mark.parametrize(
    "filters",
    [
        {"size": "big"},
        {"size": True},
        {"size": {"between": [1, 2]}},
        {"size": {}},
        {"size": {"gte": "a"}},
        {"project": {"gte": "a"}},
        {"is_processed": {"gte": 1}},
        {"tags": []},
        {"tags": [["x"]]},
        {"tags": [{"gte": 1}]},
        {"created_at": "not a date"},
        {"created_at": {"gte": 5}},
        {"is_processed": "yes"},
        {"filename": ""},
        {"prompt": 5},
        {"seed": 10**400},
        {"metadata.score": {"gte": 1, "lt": "z"}},
        {"metadata.score": {"gte": True}},
        {"metadata.score": {"x": 1}},
        {f"metadata.k{i}": "v" for i in range(101)},
        {"prompt": " ".join(["abc"] * 101)},
        {"prompt": "\0 \0"},
    ],
)
async def test_invalid_filters(client: httpx.AsyncClient, filters: Any) -> None:
    err = await error(client, {"filters": filters})
    assert err["code"] == "INVALID_FILTER"


async def test_unencodable_text_is_400(client: httpx.AsyncClient) -> None:
    body = '{"filters": {"project": "\\ud800"}}'
    r = await client.post(
        "/files/storage/search", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text


async def distinct(client: httpx.AsyncClient, field: str) -> list[Any]:
    r = await client.get(f"/files/storage/distinct/{field}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["field"] == field
    assert body["count"] == len(body["values"])
    values: list[Any] = body["values"]
    return values


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("folder", ["docs", "inputs", "outputs", "outputs/clips"]),
        ("tags", ["approved", "cat", "input", "landscape", "portrait", "video"]),
        ("status", ["reviewed", "uploaded"]),
        ("project", ["avatar-gen", "pets"]),
        ("seed", [7, 42, 99, 1000]),
        ("duration", [12.5]),
        ("is_processed", [False, True]),
        ("extension", ["jpg", "mp4", "png", "txt"]),
        ("content_type", ["image/jpeg", "image/png", "text/plain", "video/mp4"]),
        ("visibility", ["private"]),
        ("reviewer", ["ann@example.com", "bob"]),
        ("metadata.score", [3]),
        ("metadata.nobody", []),
        ("expires_at", ["2030-01-01T00:00:00.000000Z"]),
    ],
)
async def test_distinct(client: httpx.AsyncClient, field: str, expected: list[Any]) -> None:
    assert await distinct(client, field) == expected


async def test_distinct_unknown_field(client: httpx.AsyncClient) -> None:
    r = await client.get("/files/storage/distinct/colour")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "UNKNOWN_FIELD"


async def test_schema_fields(client: httpx.AsyncClient) -> None:
    r = await client.get("/files/storage/schema/fields")
    assert r.status_code == 200
    body = r.json()
    assert body["total_fields"] == len(FIELDS) == len(body["fields"])
    by_name = {f["name"]: f for f in body["fields"]}
    assert set(by_name) == set(FIELDS)
    for name, field in FIELDS.items():
        assert by_name[name]["type"] == field.type
        assert by_name[name]["searchable"] is True
        assert by_name[name].get("array", False) == field.array
        assert by_name[name].get("read_only", False) == field.system
    assert by_name["tags"]["array"] is True
    assert by_name["size"]["type"] == "long"


async def test_needs_a_key(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url) as anon:
        assert (await anon.post("/files/storage/search", json={})).status_code == 401
        assert (await anon.get("/files/storage/distinct/folder")).status_code == 401


async def test_team_isolation(api: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    mine = await upload_post(api, "photo.png", b"b" * 50, "inputs", {"project": "avatar-gen"})
    found = await names(api)
    assert found == ["photo.png"]
    assert (await find(api))["total"] == 1
    assert await names(api, {"project": "avatar-gen"}) == ["photo.png"]
    assert await names(api, {"filename": "photo"}) == ["photo.png"]
    assert await names(api, {"tags": "portrait"}) == []
    assert await distinct(api, "folder") == ["inputs"]
    assert await distinct(api, "project") == ["avatar-gen"]
    assert await distinct(api, "tags") == []
    # Team A's custom key is not a field of team B.
    err = await error(api, {"filters": {"reviewer": "bob"}})
    assert err["code"] == "UNKNOWN_FIELD"
    # And team A never sees team B's file.
    assert mine["object_key"] not in [
        f["object_key"] for f in (await find(client, page_size=100))["files"]
    ]
    assert await names(client, {"team_id": mine["object_key"].split("/")[0]}) == []


async def test_reindexed_after_patch(api: httpx.AsyncClient) -> None:
    rec = await upload_post(api, "a.png", b"a", "x", {"tags": ["old"]})
    r = await api.patch(
        "/files/storage/file/metadata",
        json={"object_key": rec["object_key"], "metadata": {"tags": ["new"], "status": "done"}},
    )
    assert r.status_code == 200, r.text
    assert await names(api, {"tags": "old"}) == []
    assert await names(api, {"tags": "new", "status": "done"}) == ["a.png"]


async def test_consistent_while_deleting(api: httpx.AsyncClient) -> None:
    keys = [(await upload_post(api, f"f{i}.txt", b"z", "d"))["object_key"] for i in range(8)]
    searches = 0

    async def delete_all() -> None:
        for key in keys:
            r = await api.delete("/files/storage/file", params={"object_key": key})
            assert r.status_code == 200, r.text

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(delete_all)
            while searches < 200:
                searches += 1
                result = await find(api, {"folder": "d"}, page_size=100)
                assert len(result["files"]) == result["total"]  # one snapshot
                if result["total"] == 0:
                    break
    assert (await find(api))["total"] == 0


# -- every query shape runs on indexes ----------------------------------------------------

SHAPES: list[tuple[dict[str, Any], str]] = [
    ({}, "created_at"),
    ({"content_type": "image/png", "folder": "inputs/01"}, "created_at"),
    ({"project": "project-01", "tags": ["tag01"]}, "created_at"),
    ({"source_model": "stability/sdxl", "created_at": {"gte": "2025-01-01"}}, "created_at"),
    ({"tags": ["tag01", "tag02"]}, "created_at"),
    ({"size": {"gte": 10, "lte": 10**6}}, "created_at"),
    ({"seed": {"lt": 10**6}}, "size"),
    ({"prompt": "neon castle"}, "created_at"),
    ({"prompt": "ca"}, "created_at"),
    ({"filename": "img ng"}, "filename"),
    ({"is_processed": True, "environment": "prod"}, "updated_at"),
    ({"metadata.reviewer": "bob"}, "created_at"),
    ({"seed": None}, "created_at"),
    ({"checksum": None}, "checksum"),
    ({"visibility": "public"}, "created_at"),
    ({"project": "project-02"}, "seed"),
    ({}, "tags"),
]
DISTINCT = ["folder", "tags", "seed", "content_type", "metadata.reviewer", "visibility"]
# A plan line that reads a whole table (the fts MATCH scan is an index lookup).
FULL_SCAN = re.compile(r"^SCAN (?!fts VIRTUAL TABLE INDEX \d+:M)")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sqlite3.Connection, str]]:
    path: Path = tmp_path_factory.mktemp("plans") / "meta.db"
    db.init_schema(path)
    conn = db.connect(path)
    key = db.transaction(conn, lambda c: create_key(c, "plans", "pro"))
    other = db.transaction(conn, lambda c: create_key(c, "others", "pro"))
    db.transaction(conn, lambda c: insert_files(c, *team_of(c, key), 300))
    db.transaction(conn, lambda c: insert_files(c, *team_of(c, other), 100, seed=1))
    team = team_of(conn, key)[0]
    conn.execute(
        "INSERT INTO attrs (file_id, team_id, name, vtext) SELECT MIN(id), ?, 'reviewer', 'bob'"
        " FROM files WHERE team_id = ?",
        (team, team),
    )
    try:
        yield conn, team
    finally:
        conn.close()


def statements_of(conn: sqlite3.Connection, run: Callable[[], object]) -> list[str]:
    seen: list[str] = []
    # FTS5's own statements on its shadow tables come as "-- ..." comments: skipped.
    conn.set_trace_callback(lambda sql: None if sql.startswith("--") else seen.append(sql))
    try:
        run()
    finally:
        conn.set_trace_callback(None)
    assert seen
    return seen


def full_scans(conn: sqlite3.Connection, statements: list[str]) -> list[str]:
    bad = []
    for sql in statements:
        assert "metadata" not in sql, sql  # never the JSON column
        for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"):
            if FULL_SCAN.match(row[3]):
                bad.append(f"{row[3]}  <-  {sql}")
    return bad


@pytest.mark.parametrize(("filters", "sort_by"), SHAPES)
def test_search_plans_use_indexes(
    planned: tuple[sqlite3.Connection, str], filters: dict[str, Any], sort_by: str
) -> None:
    conn, team = planned
    page = search.find(conn, team, filters, sort_by, True, 1, 20)
    assert all(r["team_id"] == team for r in page.rows)
    statements = statements_of(conn, lambda: search.find(conn, team, filters, sort_by, True, 1, 5))
    assert full_scans(conn, statements) == []


@pytest.mark.parametrize("field", DISTINCT)
def test_distinct_plans_use_indexes(planned: tuple[sqlite3.Connection, str], field: str) -> None:
    conn, team = planned
    statements = statements_of(conn, lambda: search.distinct(conn, team, field))
    assert full_scans(conn, statements) == []


def test_full_scan_detector_detects(planned: tuple[sqlite3.Connection, str]) -> None:
    conn, _ = planned
    assert full_scans(conn, ["SELECT id FROM files f WHERE f.size > 5"]) != []
    assert full_scans(conn, ["SELECT file_id FROM attrs WHERE vtext = 'x'"]) != []
    assert FULL_SCAN.match("SCAN f")
    assert FULL_SCAN.match("SCAN attrs")
    assert not FULL_SCAN.match("SCAN fts VIRTUAL TABLE INDEX 0:M3")
    assert not FULL_SCAN.match("SEARCH f USING INDEX files_created (team_id=? AND state=?)")
