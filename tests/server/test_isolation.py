"""Two teams never see or touch each other's files, folders, searches, feeds or URLs."""

from __future__ import annotations

import httpx

from tests.livesrv import LiveServer
from tests.server.flows import upload_post


async def test_teams_are_isolated(live_server: LiveServer, api: httpx.AsyncClient) -> None:
    rec = await upload_post(api, "secret.txt", b"team A only", "private", {"project": "a-proj"})
    key = rec["object_key"]
    start_a = (await api.get("/files/storage/changes")).json()
    assert any(c.get("object_key") == key for c in start_a["changes"])
    async with httpx.AsyncClient(
        base_url=live_server.base_url, headers={"X-API-Key": live_server.new_key()}
    ) as b:
        assert (await b.get(f"/files/storage/file/{key}")).status_code == 404
        assert (await b.get("/files/storage/files")).json()["total_count"] == 0
        assert (await b.get("/files/storage/files", params={"folder": "private"})).json()[
            "files"
        ] == []
        assert (await b.get("/files/storage/folders")).json()["folders"] == []
        assert (await b.get("/files/storage")).json()["file_count"] == 0
        feed = (await b.get("/files/storage/changes")).json()
        assert feed["changes"] == []
        r = await b.patch(
            "/files/storage/file/metadata", json={"object_key": key, "metadata": {"x": 1}}
        )
        assert r.status_code == 404
        r = await b.post("/files/storage/file/public", json={"object_key": key, "is_public": True})
        assert r.status_code == 404
        r = await b.post("/files/storage/file/move", json={"object_key": key, "folder": "mine"})
        assert r.status_code == 404
        assert (
            await b.delete("/files/storage/file", params={"object_key": key})
        ).status_code == 404
        r = await b.delete(
            "/files/storage/folder", params={"folder": "private", "recursive": "true"}
        )
        assert r.status_code == 404
        r = await b.post("/files/storage/search", json={"filters": {"project": "a-proj"}})
        if r.status_code == 200:
            assert r.json()["total"] == 0
        else:
            assert r.status_code in (400, 404)
        # B's own folder of the same name is B's alone.
        await b.post("/files/storage/folder", json={"folder_name": "private"})
        b_rec = await upload_post(b, "secret.txt", b"team B", "private")
        assert b_rec["object_key"].split("/")[0] != key.split("/")[0]
    got = (await api.get(f"/files/storage/file/{key}")).json()
    assert got["metadata"] == {"project": "a-proj"}
    assert got["is_public"] is False
    assert (await api.get("/files/storage")).json()["file_count"] == 1
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(got["file_url"])).content == b"team A only"
