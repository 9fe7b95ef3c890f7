"""Dialect `storage`: every endpoint with the seed's shapes, limits and errors."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import trio

from tests.server.flows import upload_post

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["message"]
    code: str = body["error"]["code"]
    assert code.isupper()
    return code


async def test_seed_upload_url_example(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/files/upload-url", json={"filename": "reference_image.png", "folder": "inputs"}
    )
    assert r.status_code == 200
    grant = r.json()
    assert set(grant) == {"upload_url", "upload_fields", "file_url", "object_key", "folder"}
    assert grant["folder"] == "inputs"
    assert grant["upload_fields"]["Content-Type"] == "image/png"
    assert grant["upload_fields"]["key"] == grant["object_key"]
    _team, folder, leaf = grant["object_key"].split("/")
    assert folder == "inputs"
    ms, _, name = leaf.partition("_")
    assert ms.isdigit()
    assert name == "reference_image.png"
    # Pending uploads never appear in listings.
    listing = (await api.get("/files/storage/files")).json()
    assert listing == {"files": [], "total_count": 0}


async def test_upload_with_metadata_then_get(api: httpx.AsyncClient) -> None:
    metadata = {"description": "프로젝트 데이터", "tags": ["dataset", "training"], "version": "1.0"}
    rec = await upload_post(api, "data", b"x" * 1000, "projects/my-project", metadata)
    assert rec["metadata"] == metadata
    assert rec["filename"] == "data"
    assert rec["folder"] == "projects/my-project"
    assert rec["file_size"] == 1000
    assert rec["content_type"] == "application/octet-stream"
    assert rec["status"] == "uploaded"
    assert rec["is_public"] is False
    assert rec["public_url"] is None
    assert rec["checksum"] == hashlib.md5(b"x" * 1000).hexdigest()
    for key in ("uploaded_at", "expires_at", "file_url", "object_key"):
        assert rec[key]
    folders = (await api.get("/files/storage/folders")).json()["folders"]
    assert {f["path"] for f in folders} == {"projects", "projects/my-project"}
    mine = next(f for f in folders if f["path"] == "projects/my-project")
    assert mine == {
        "name": "my-project",
        "path": "projects/my-project",
        "file_count": 1,
        "total_size": 1000,
    }


async def test_image_dimensions_filled(api: httpx.AsyncClient) -> None:
    rec = await upload_post(api, "dot.png", PNG_1x1, "inputs")
    assert rec["metadata"]["width"] == 1
    assert rec["metadata"]["height"] == 1
    # A user's own value wins over the probed one.
    rec = await upload_post(api, "dot2.png", PNG_1x1, "inputs", {"width": 7})
    assert rec["metadata"]["width"] == 7


async def test_listing_pagination_and_folder_filter(api: httpx.AsyncClient) -> None:
    for i in range(5):
        await upload_post(api, f"f{i}.txt", b"%d" % i, "a")
    await upload_post(api, "root.txt", b"r")
    r = await api.get("/files/storage/files", params={"folder": "a", "limit": 2, "offset": 0})
    page1 = r.json()
    assert page1["total_count"] == 5
    assert len(page1["files"]) == 2
    r = await api.get("/files/storage/files", params={"folder": "a", "limit": 2, "offset": 4})
    assert len(r.json()["files"]) == 1
    names = set()
    for offset in range(0, 5, 2):
        r = await api.get(
            "/files/storage/files", params={"folder": "a", "limit": 2, "offset": offset}
        )
        names |= {f["filename"] for f in r.json()["files"]}
    assert names == {f"f{i}.txt" for i in range(5)}
    root = (await api.get("/files/storage/files", params={"folder": ""})).json()
    assert [f["filename"] for f in root["files"]] == ["root.txt"]
    everything = (await api.get("/files/storage/files")).json()
    assert everything["total_count"] == 6


async def test_two_objects_with_one_name(api: httpx.AsyncClient) -> None:
    a = await upload_post(api, "same.txt", b"one", "dup")
    b = await upload_post(api, "same.txt", b"two", "dup")
    assert a["object_key"] != b["object_key"]
    listing = (await api.get("/files/storage/files", params={"folder": "dup"})).json()
    assert listing["total_count"] == 2


async def test_url_expiration_bounds(api: httpx.AsyncClient) -> None:
    rec = await upload_post(api, "u.txt", b"u")
    key = rec["object_key"]
    for bad in (299, 15_552_001, -1):
        r = await api.get(f"/files/storage/file/{key}", params={"url_expiration": bad})
        assert r.status_code == 400
        assert error_code(r) == "INVALID_URL_EXPIRATION"
        r = await api.get("/files/storage/files", params={"url_expiration": bad})
        assert r.status_code == 400
    r = await api.get(f"/files/storage/file/{key}", params={"url_expiration": 300})
    assert r.status_code == 200
    r = await api.get(f"/files/storage/file/{key}", params={"url_expiration": 15_552_000})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"folder_name": ""},
        {"folder_name": "a/b"},
        {"folder_name": "bad\nname"},
        {"folder_name": ".."},
        {"folder_name": "ok", "parent_folder": "bad\x01parent"},
    ],
)
async def test_bad_folder_names(api: httpx.AsyncClient, body: dict[str, str]) -> None:
    r = await api.post("/files/storage/folder", json=body)
    assert r.status_code == 400
    assert error_code(r) == "INVALID_NAME"


async def test_folder_create_is_idempotent_and_nested(api: httpx.AsyncClient) -> None:
    r = await api.post("/files/storage/folder", json={"folder_name": "my-project"})
    assert r.json() == {"success": True, "folder_path": "my-project"}
    r = await api.post(
        "/files/storage/folder", json={"folder_name": "images", "parent_folder": "my-project"}
    )
    assert r.json() == {"success": True, "folder_path": "my-project/images"}
    r = await api.post("/files/storage/folder", json={"folder_name": "my-project"})
    assert r.status_code == 200
    folders = (await api.get("/files/storage/folders")).json()["folders"]
    assert [f["path"] for f in folders] == ["my-project", "my-project/images"]
    assert all(f["file_count"] == 0 for f in folders)
    children = (await api.get("/files/storage/folders", params={"parent": "my-project"})).json()
    assert [f["path"] for f in children["folders"]] == ["my-project/images"]


async def test_names_too_long(api: httpx.AsyncClient) -> None:
    """A name past 255 characters, or a folder whose whole path would pass 1,024 (each
    segment within bounds), is refused with its own code: a client says "name too long"."""
    parent = "/".join(["d" * 250] * 4)  # 1,003 characters: allowed
    r = await api.post(
        "/files/storage/folder", json={"folder_name": "x" * 20, "parent_folder": parent}
    )
    assert r.status_code == 200
    for body in (
        {"folder_name": "x" * 256},
        {"folder_name": "x" * 30, "parent_folder": parent},  # 1,034 with it
    ):
        r = await api.post("/files/storage/folder", json=body)
        assert r.status_code == 400, body
        assert error_code(r) == "NAME_TOO_LONG"
    r = await api.post("/files/upload-url", json={"filename": "é" * 128})  # 256 bytes
    assert error_code(r) == "NAME_TOO_LONG"
    folders = (await api.get("/files/storage/folders")).json()["folders"]
    assert max(len(f["path"]) for f in folders) == 1024


async def test_bad_filenames(api: httpx.AsyncClient) -> None:
    for name in ("", "a/b", "tab\there", ".."):
        r = await api.post("/files/upload-url", json={"filename": name})
        assert r.status_code == 400, name
        assert error_code(r) == "INVALID_NAME"


async def test_patch_merges_and_null_deletes(api: httpx.AsyncClient) -> None:
    rec = await upload_post(
        api, "photo.png", PNG_1x1, "inputs", {"project": "avatar-gen", "tags": ["portrait"]}
    )
    key = rec["object_key"]
    r = await api.patch(
        "/files/storage/file/metadata",
        json={
            "object_key": key,
            "metadata": {
                "tags": ["portrait", "approved"],
                "status": "reviewed",
                "reviewer": "u@example.com",
            },
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    assert body["object_key"] == key
    assert body["updated_fields"] == ["tags", "status", "reviewer"]
    assert body["updated_at"]
    got = (await api.get(f"/files/storage/file/{key}")).json()
    assert got["status"] == "reviewed"
    assert got["metadata"]["project"] == "avatar-gen"
    assert got["metadata"]["tags"] == ["portrait", "approved"]
    r = await api.patch(
        "/files/storage/file/metadata", json={"object_key": key, "metadata": {"reviewer": None}}
    )
    assert r.status_code == 200
    got = (await api.get(f"/files/storage/file/{key}")).json()
    assert "reviewer" not in got["metadata"]


@pytest.mark.parametrize(
    "field", ["file_id", "team_id", "created_at", "size", "checksum", "object_key"]
)
async def test_patch_system_field_is_refused(api: httpx.AsyncClient, field: str) -> None:
    rec = await upload_post(api, "s.txt", b"s")
    r = await api.patch(
        "/files/storage/file/metadata",
        json={"object_key": rec["object_key"], "metadata": {field: "x", "ok": 1}},
    )
    assert r.status_code == 400
    assert error_code(r) == "READ_ONLY_FIELD"
    assert field in r.json()["error"]["message"]
    got = (await api.get(f"/files/storage/file/{rec['object_key']}")).json()
    assert "ok" not in got["metadata"]


async def test_metadata_over_10kb(api: httpx.AsyncClient) -> None:
    big = {"notes": "n" * (10 * 1024)}
    r = await api.post("/files/upload-url", json={"filename": "m.txt", "metadata": big})
    assert r.status_code == 413
    assert error_code(r) == "METADATA_TOO_LARGE"
    rec = await upload_post(api, "m.txt", b"m", metadata={"notes": "n" * 9000})
    r = await api.patch(
        "/files/storage/file/metadata",
        json={"object_key": rec["object_key"], "metadata": {"more": "m" * 2000}},
    )
    assert r.status_code == 413
    got = (await api.get(f"/files/storage/file/{rec['object_key']}")).json()
    assert "more" not in got["metadata"]


async def test_metadata_types_of_indexed_fields(api: httpx.AsyncClient) -> None:
    r = await api.post("/files/upload-url", json={"filename": "t.txt", "metadata": {"seed": "abc"}})
    assert r.status_code == 400
    assert error_code(r) == "INVALID_METADATA"
    r = await api.post(
        "/files/upload-url",
        json={"filename": "t.txt", "metadata": {"seed": 12345, "cfg_scale": 7.5}},
    )
    assert r.status_code == 200


async def test_public_toggle(api: httpx.AsyncClient) -> None:
    rec = await upload_post(api, "pub.txt", b"public bytes")
    key = rec["object_key"]
    r = await api.post("/files/storage/file/public", json={"object_key": key, "is_public": True})
    assert r.status_code == 200
    public_url = r.json()["public_url"]
    assert public_url
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(public_url)).content == b"public bytes"
        r = await api.post(
            "/files/storage/file/public", json={"object_key": key, "is_public": False}
        )
        assert r.json()["public_url"] is None
        assert (await anon.get(public_url)).status_code == 404


async def test_delete_and_legal_hold(api: httpx.AsyncClient) -> None:
    rec = await upload_post(api, "d.txt", b"d")
    url = rec["file_url"]
    r = await api.delete("/files/storage/file", params={"object_key": rec["object_key"]})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    assert body["deleted_object_key"] == rec["object_key"]
    assert body["deleted_at"]
    assert (await api.get(f"/files/storage/file/{rec['object_key']}")).status_code == 404
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(url)).status_code == 404
    r = await api.delete("/files/storage/file", params={"object_key": rec["object_key"]})
    assert r.status_code == 404

    held = await upload_post(api, "h.txt", b"h", metadata={"legal_hold": True})
    r = await api.delete("/files/storage/file", params={"object_key": held["object_key"]})
    assert r.status_code == 409
    assert error_code(r) == "LEGAL_HOLD"
    await api.patch(
        "/files/storage/file/metadata",
        json={"object_key": held["object_key"], "metadata": {"legal_hold": None}},
    )
    r = await api.delete("/files/storage/file", params={"object_key": held["object_key"]})
    assert r.status_code == 200


async def test_usage_figures(api: httpx.AsyncClient) -> None:
    await upload_post(api, "a.png", PNG_1x1)
    await upload_post(api, "b.txt", b"12345")
    u = (await api.get("/files/storage")).json()
    assert u["total_bytes"] == len(PNG_1x1) + 5
    assert u["file_count"] == 2
    assert u["formatted_size"].endswith("B")
    assert {c["content_type"]: c["count"] for c in u["by_content_type"]} == {
        "image/png": 1,
        "text/plain": 1,
    }
    assert u["limit_bytes"] == 10 * 1024**3
    assert u["limit_files"] == 50_000


async def test_concurrent_uploads_land_with_distinct_keys(api: httpx.AsyncClient) -> None:
    results: list[dict[str, object]] = []

    async def one(i: int) -> None:
        results.append(await upload_post(api, "same.bin", bytes([i]) * (100 + i), "burst"))

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(one, i)
    keys = {r["object_key"] for r in results}
    assert len(keys) == 50
    usage = (await api.get("/files/storage")).json()
    assert usage["file_count"] == 50
    assert usage["total_bytes"] == sum(100 + i for i in range(50))
    listing = (
        await api.get("/files/storage/files", params={"folder": "burst", "limit": 100})
    ).json()
    assert listing["total_count"] == 50


async def test_move_and_change_feed(api: httpx.AsyncClient) -> None:
    start = (await api.get("/files/storage/changes", params={"cursor": "latest"})).json()
    rec = await upload_post(api, "old.txt", b"payload", "src")
    r = await api.post(
        "/files/storage/file/move",
        json={"object_key": rec["object_key"], "folder": "dst", "filename": "new.txt"},
    )
    assert r.status_code == 200
    moved = r.json()
    assert moved["folder"] == "dst"
    assert moved["filename"] == "new.txt"
    assert moved["object_key"] != rec["object_key"]
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(moved["file_url"])).content == b"payload"
    assert (await api.get(f"/files/storage/file/{rec['object_key']}")).status_code == 404
    feed = (await api.get("/files/storage/changes", params={"cursor": start["cursor"]})).json()
    ops = [(c["kind"], c["op"], c.get("object_key") or c.get("path")) for c in feed["changes"]]
    assert ops == [
        ("folder", "upsert", "src"),
        ("file", "upsert", rec["object_key"]),
        ("file", "delete", rec["object_key"]),
        ("folder", "upsert", "dst"),
        ("file", "upsert", moved["object_key"]),
    ]
    again = (await api.get("/files/storage/changes", params={"cursor": feed["cursor"]})).json()
    assert again["changes"] == []
    assert again["cursor"] == feed["cursor"]
    r = await api.get("/files/storage/changes", params={"cursor": "bogus"})
    assert r.status_code == 400


async def test_change_feed_pages(api: httpx.AsyncClient) -> None:
    start = (await api.get("/files/storage/changes", params={"cursor": "latest"})).json()["cursor"]
    for i in range(5):
        await api.post("/files/storage/folder", json={"folder_name": f"p{i}"})
    seen: list[str] = []
    cursor = start
    for _ in range(10):
        page = (
            await api.get("/files/storage/changes", params={"cursor": cursor, "limit": 2})
        ).json()
        seen += [c["path"] for c in page["changes"]]
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert seen == [f"p{i}" for i in range(5)]


async def test_folder_delete(api: httpx.AsyncClient) -> None:
    await api.post("/files/storage/folder", json={"folder_name": "empty"})
    r = await api.delete("/files/storage/folder", params={"folder": "empty"})
    assert r.status_code == 200
    rec = await upload_post(api, "x.txt", b"x", "full/sub")
    r = await api.delete("/files/storage/folder", params={"folder": "full"})
    assert r.status_code == 409
    assert error_code(r) == "FOLDER_NOT_EMPTY"
    r = await api.delete("/files/storage/folder", params={"folder": "full", "recursive": "true"})
    assert r.status_code == 200
    assert r.json()["deleted_files"] == 1
    assert (await api.get(f"/files/storage/file/{rec['object_key']}")).status_code == 404
    assert (await api.get("/files/storage/folders")).json()["folders"] == []
    r = await api.delete("/files/storage/folder", params={"folder": "nope"})
    assert r.status_code == 404


async def test_capabilities(api: httpx.AsyncClient) -> None:
    caps = (await api.get("/capabilities")).json()
    assert set(caps["dialects"]) == {"storage", "presign", "images"}
    assert {"changes", "move", "folder_delete", "usage_limits"} <= set(caps["extensions"])
    assert caps["limits"]["post_max_bytes"] == 50 * 1024 * 1024
    assert caps["limits"]["metadata_max_bytes"] == 10 * 1024
    assert set(caps["name_forbidden_chars"]) == {"/", "\\"}


async def test_auth_schemes(live_server: object, api_key: str) -> None:
    from tests.livesrv import LiveServer

    assert isinstance(live_server, LiveServer)
    async with httpx.AsyncClient(base_url=live_server.base_url) as client:
        r = await client.get("/files/storage")
        assert r.status_code == 401
        assert error_code(r) == "UNAUTHORIZED"
        r = await client.get("/files/storage", headers={"X-API-Key": "stk_wrong"})
        assert r.status_code == 401
        r = await client.get("/files/storage", headers={"Authorization": "Bearer stk_wrong"})
        assert r.status_code == 401
        r = await client.get("/files/storage", headers={"Authorization": f"Bearer {api_key}"})
        assert r.status_code == 200
        r = await client.get("/files/storage", headers={"X-API-Key": api_key})
        assert r.status_code == 200


async def test_unknown_routes_and_bad_bodies_answer_json(api: httpx.AsyncClient) -> None:
    r = await api.get("/nope")
    assert r.status_code == 404
    assert error_code(r) == "NOT_FOUND"
    r = await api.post(
        "/files/upload-url", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert error_code(r) == "INVALID_REQUEST"
    r = await api.post("/files/upload-url", json={"folder": "x"})
    assert r.status_code == 400
    r = await api.get("/files/storage/files", params={"limit": "abc"})
    assert r.status_code == 400
