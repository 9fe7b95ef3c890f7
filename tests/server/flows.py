"""The seed upload flows, as a client would run them, for the server tests."""

from __future__ import annotations

from typing import Any

import httpx


async def upload_post(
    api: httpx.AsyncClient,
    filename: str,
    data: bytes,
    folder: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Storage dialect: upload-url, then the presigned POST with `file` last."""
    body: dict[str, Any] = {"filename": filename}
    if folder is not None:
        body["folder"] = folder
    if metadata is not None:
        body["metadata"] = metadata
    r = await api.post("/files/upload-url", json=body)
    assert r.status_code == 200, r.text
    grant = r.json()
    r = await api.post(
        grant["upload_url"],
        data=grant["upload_fields"],
        files={"file": (filename, data)},
        headers={"X-API-Key": ""},
    )
    assert r.status_code == 201, r.text
    answered = r.json()  # the stored object, as GET gives it (but for a newer URL)
    assert r.headers["etag"] == f'"{answered["checksum"]}"'
    r = await api.get(f"/files/storage/file/{grant['object_key']}")
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    urls = ("file_url", "url", "expires_at")
    assert {k: v for k, v in answered.items() if k not in urls} == {
        k: v for k, v in record.items() if k not in urls
    }
    return record
