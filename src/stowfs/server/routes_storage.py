"""Dialect `storage` (seed 000): upload URLs, listing, files, folders, metadata, delete."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from . import files
from .config import UPLOAD_URL_LIFETIME
from .names import check_filename, check_folder, check_segment, join
from .records import file_record
from .state import LifetimeDep, PrincipalDep, StateDep, UrlsDep, client_ip
from .timeutil import iso

router = APIRouter(prefix="/v1")


class UploadUrlRequest(BaseModel):
    filename: str
    folder: str | None = None
    metadata: dict[str, Any] | None = None


@router.post("/files/upload-url")
async def upload_url(
    body: UploadUrlRequest, who: PrincipalDep, state: StateDep, urls: UrlsDep, request: Request
) -> dict[str, Any]:
    filename = check_filename(body.filename)
    folder = check_folder(body.folder)
    limit = state.config.post_max_bytes
    row = await state.db.write(
        lambda c: files.insert_pending(
            c,
            who,
            folder=folder,
            filename=filename,
            metadata=body.metadata or {},
            upload_kind="post",
            max_size=limit,
            upload_ip=client_ip(request),
        )
    )
    key = row["object_key"]
    date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    policy = {
        "expiration": iso(time.time() + UPLOAD_URL_LIFETIME),
        "conditions": [
            {"key": key},
            {"Content-Type": row["content_type"]},
            {"x-stowfs-date": date},
            ["content-length-range", 0, limit],
        ],
    }
    encoded, signature = state.signer.encode_policy(policy)
    file_url, _ = urls.file_url(key, row["file_id"], UPLOAD_URL_LIFETIME)
    return {
        "upload_url": urls.upload_url(),
        "upload_fields": {
            "Content-Type": row["content_type"],
            "key": key,
            "x-stowfs-algorithm": "HMAC-SHA256",
            "x-stowfs-date": date,
            "policy": encoded,
            "x-stowfs-signature": signature,
        },
        "file_url": file_url,
        "object_key": key,
        "folder": folder,
    }


@router.get("/files/storage")
async def storage_usage(who: PrincipalDep, state: StateDep) -> dict[str, Any]:
    return await state.db.read(lambda c: files.usage(c, who))


@router.get("/files/storage/files")
async def list_files(
    who: PrincipalDep,
    state: StateDep,
    urls: UrlsDep,
    lifetime: LifetimeDep,
    folder: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    path = None if folder is None else check_folder(folder)
    rows, total = await state.db.read(
        lambda c: files.list_files(c, who.team_id, path, limit, offset)
    )
    return {"files": [file_record(r, urls, lifetime) for r in rows], "total_count": total}


@router.get("/files/storage/file/{object_key:path}")
async def get_file(
    object_key: str, who: PrincipalDep, state: StateDep, urls: UrlsDep, lifetime: LifetimeDep
) -> dict[str, Any]:
    row = await state.db.read(lambda c: files.get_row(c, who.team_id, object_key))
    return file_record(row, urls, lifetime)


@router.get("/files/storage/folders")
async def list_folders(
    who: PrincipalDep, state: StateDep, parent: str | None = None
) -> dict[str, Any]:
    parent_path = None if parent is None else check_folder(parent)
    folders = await state.db.read(lambda c: files.list_folders(c, who.team_id, parent_path))
    return {"folders": folders}


class FolderRequest(BaseModel):
    folder_name: str
    parent_folder: str | None = None


@router.post("/files/storage/folder")
async def create_folder(body: FolderRequest, who: PrincipalDep, state: StateDep) -> dict[str, Any]:
    name = check_segment(body.folder_name)
    path = check_folder(join(check_folder(body.parent_folder), name))  # the whole path too
    await state.db.write(lambda c: files.create_folder(c, who.team_id, path))
    return {"success": True, "folder_path": path}


class PatchRequest(BaseModel):
    object_key: str
    metadata: dict[str, Any]


@router.patch("/files/storage/file/metadata")
async def patch_metadata(body: PatchRequest, who: PrincipalDep, state: StateDep) -> dict[str, Any]:
    row = await state.db.write(
        lambda c: files.patch_metadata(c, who, body.object_key, body.metadata)
    )
    return {
        "success": True,
        "object_key": row["object_key"],
        "updated_fields": list(body.metadata),
        "updated_at": row["updated_at"],
    }


class PublicRequest(BaseModel):
    object_key: str
    is_public: bool


@router.post("/files/storage/file/public")
async def set_public(
    body: PublicRequest, who: PrincipalDep, state: StateDep, urls: UrlsDep
) -> dict[str, Any]:
    row = await state.db.write(lambda c: files.set_public(c, who, body.object_key, body.is_public))
    return {
        "success": True,
        "object_key": row["object_key"],
        "is_public": bool(row["is_public"]),
        "public_url": urls.public_url(row["object_key"]) if row["is_public"] else None,
    }


@router.delete("/files/storage/file")
async def delete_file(
    who: PrincipalDep, state: StateDep, object_key: Annotated[str, Query(min_length=1)]
) -> dict[str, Any]:
    row = await state.db.write(lambda c: files.delete_file(c, who, object_key))
    state.blobs.remove(row["file_id"])
    return {"success": True, "deleted_object_key": object_key, "deleted_at": iso(time.time())}


class MoveRequest(BaseModel):
    object_key: str
    folder: str | None = Field(default=None, description="target folder; omitted: unchanged")
    filename: str | None = Field(default=None, description="new filename; omitted: unchanged")


@router.post("/files/storage/file/move")
async def move_file(
    body: MoveRequest, who: PrincipalDep, state: StateDep, urls: UrlsDep, lifetime: LifetimeDep
) -> dict[str, Any]:
    def run(c: Any) -> Any:
        row = files.get_row(c, who.team_id, body.object_key)
        folder = row["folder"] if body.folder is None else check_folder(body.folder)
        name = row["filename"] if body.filename is None else check_filename(body.filename)
        return files.move(c, who, body.object_key, folder, name)

    row = await state.db.write(run)
    return {"success": True, "old_object_key": body.object_key, **file_record(row, urls, lifetime)}


@router.delete("/files/storage/folder")
async def delete_folder(
    who: PrincipalDep,
    state: StateDep,
    folder: Annotated[str, Query(min_length=1)],
    recursive: bool = False,
) -> dict[str, Any]:
    path = check_folder(folder)
    removed = await state.write_then_remove(
        lambda c: files.delete_folder(c, who.team_id, path, recursive)
    )
    return {"success": True, "deleted_folder": path, "deleted_files": len(removed)}


@router.get("/files/storage/changes")
async def changes(
    who: PrincipalDep,
    state: StateDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, Any]:
    return await state.db.read(lambda c: files.changes(c, who.team_id, cursor, limit))
