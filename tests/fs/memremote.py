"""An in-memory `Remote` (storage dialect): the fs unit tests' server and the reference
model of the stateful test. Faults: `down` makes every call raise Unavailable;
`fail[method]` raises once; `calls` counts calls per method (to prove "no network")."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import trio

from stowfs.errors import (
    Conflict,
    MetadataTooLarge,
    NotFound,
    QuotaExceeded,
    RemoteError,
    TooLarge,
    Unavailable,
    Unsupported,
)
from stowfs.remote.base import (
    Capabilities,
    Change,
    ChangeBatch,
    CheckpointHook,
    FieldInfo,
    KeyHook,
    ProgressHook,
    Remote,
    RemoteFile,
    RemoteFolder,
    SearchPage,
    UploadCheckpoint,
    Usage,
)

CAPS = Capabilities(
    dialect="storage",
    list=True,
    metadata=True,
    delete=True,
    mkdir=True,
    rmdir=True,
    move=True,
    server_move=True,
    search=False,
    changes=True,
    usage=True,
    usage_limits=True,
    renewable_urls=True,
    url_lifetime=604800.0,
    single_upload_max=50 * 1024 * 1024,
    multipart=False,
    max_file_size=None,
    metadata_max_bytes=10 * 1024,
)


class MemRemote(Remote):
    def __init__(self, capabilities: Capabilities = CAPS) -> None:
        self.capabilities = capabilities
        self.files: dict[str, RemoteFile] = {}
        self.blobs: dict[str, bytes] = {}
        self.folders: set[str] = set()
        self.log: list[Change] = []
        self.calls: Counter[str] = Counter()
        self.uploaded_at: dict[str, float] = {}  # name -> trio time of its last upload
        self.served = 0  # bytes read
        self.fail: dict[str, RemoteError] = {}
        self.down = False
        self.limit_bytes: int | None = 10 * 1024 * 1024 * 1024
        self.max_file_size: int | None = None
        self.url_lifetime = 3600.0  # seconds the URL of an object stored from now on lasts
        self._last = 0.0

    # -- helpers -------------------------------------------------------------------
    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        if self.down:
            raise Unavailable("server down", status=503)
        if method in self.fail:
            raise self.fail.pop(method)

    def _now(self) -> float:
        """The wall clock, strictly increasing: 'newest' is never a tie."""
        self._last = max(time.time(), self._last + 0.002)  # keys hold the ms
        return self._last

    def _record(self, op: Literal["upsert", "delete"], f: RemoteFile) -> None:
        self.log.append(Change(op, "file", f.folder, f.key, f if op == "upsert" else None))

    def _get(self, key: str) -> RemoteFile:
        if key not in self.files:
            raise NotFound(f"no such file: {key}", status=404)
        return self.files[key]

    def _ensure(self, folder: str) -> None:
        parts = folder.split("/") if folder else []
        for i in range(1, len(parts) + 1):
            self.folders.add("/".join(parts[:i]))

    def new_key(self, folder: str, name: str) -> str:
        ms = int(self._now() * 1000)
        return f"{folder}/{ms}_{name}" if folder else f"{ms}_{name}"

    def put(
        self,
        folder: str,
        name: str,
        data: bytes,
        metadata: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> RemoteFile:
        """Store an object directly (as another client would), under `key` if given."""
        if self.limit_bytes is not None and self.used() + len(data) > self.limit_bytes:
            raise QuotaExceeded("quota", status=507)
        if self.max_file_size is not None and len(data) > self.max_file_size:
            raise TooLarge("file too large", status=413)
        key = key or self.new_key(folder, name)
        now = self._now()
        f = RemoteFile(
            key=key,
            folder=folder,
            name=name,
            size=len(data),
            content_type="application/octet-stream",
            checksum=hashlib.md5(data).hexdigest(),
            created_at=now,
            updated_at=now,
            metadata=dict(metadata or {}),
            url=f"mem://{key}",
            url_expires=now + self.url_lifetime,
        )
        self.files[key] = f
        self.blobs[key] = data
        self._ensure(folder)
        self._record("upsert", f)
        return f

    def used(self) -> int:
        return sum(f.size for f in self.files.values())

    def by_path(self, path: str) -> list[RemoteFile]:
        return [f for f in self.files.values() if f.path == path]

    # -- Remote ----------------------------------------------------------------------
    async def list_folder(self, folder: str) -> list[RemoteFile]:
        self._enter("list_folder")
        return [f for f in self.files.values() if f.folder == folder]

    async def list_folders(self, parent: str | None = None) -> list[RemoteFolder]:
        self._enter("list_folders")
        out = []
        for path in sorted(self.folders):
            head, _, _ = path.rpartition("/")
            if parent is None or head == parent:
                out.append(RemoteFolder(path))
        return out

    async def stat(self, key: str) -> RemoteFile:
        self._enter("stat")
        return self._get(key)

    async def mkdir(self, folder: str) -> None:
        self._enter("mkdir")
        self._ensure(folder)
        self.log.append(Change("upsert", "folder", folder))

    async def rmdir(self, folder: str) -> None:
        self._enter("rmdir")
        if not self.capabilities.rmdir:
            raise Unsupported("the service has no folder delete")
        if folder not in self.folders:
            raise NotFound("no such folder", status=404)
        if any(f.folder == folder for f in self.files.values()) or any(
            p.startswith(folder + "/") for p in self.folders
        ):
            raise Conflict("folder not empty", status=409)
        self.folders.discard(folder)
        self.log.append(Change("delete", "folder", folder))

    async def stream(
        self, file: RemoteFile, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        data = await self.read(file, offset, length if length is not None else file.size)
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    async def read(self, file: RemoteFile, offset: int, length: int) -> bytes:
        self._enter("read")
        self._get(file.key)
        data = self.blobs[file.key][offset : offset + length]
        self.served += len(data)
        return data

    async def fresh_url(self, file: RemoteFile, min_valid: float = 300.0) -> tuple[str, float]:
        self._enter("fresh_url")
        self._get(file.key)
        return f"mem://{file.key}?fresh", time.time() + 3600

    async def upload(
        self,
        source: Path,
        folder: str,
        name: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        checkpoint: UploadCheckpoint | None = None,
        on_checkpoint: CheckpointHook | None = None,
        progress: ProgressHook | None = None,
        on_key: KeyHook | None = None,
    ) -> RemoteFile:
        self._enter("upload")
        self.uploaded_at[name] = trio.current_time()
        key = self.new_key(folder, name)
        if on_key is not None:
            await on_key(key)
        return self.put(folder, name, source.read_bytes(), metadata, key)  # noqa: ASYNC240

    async def patch_metadata(self, key: str, patch: Mapping[str, Any]) -> RemoteFile:
        self._enter("patch_metadata")
        f = self._get(key)
        meta = dict(f.metadata)
        for k, v in patch.items():
            if v is None:
                meta.pop(k, None)
            else:
                meta[k] = v
        if len(json.dumps(meta).encode()) > self.capabilities.metadata_max_bytes:
            raise MetadataTooLarge("metadata too large", status=413)
        f = replace(f, metadata=meta, updated_at=self._now())
        self.files[key] = f
        self._record("upsert", f)
        return f

    async def set_public(self, key: str, public: bool) -> RemoteFile:
        self._enter("set_public")
        f = self._get(key)
        f = replace(f, is_public=public, public_url=f"mem://public/{key}" if public else None)
        self.files[key] = f
        self._record("upsert", f)
        return f

    async def delete(self, key: str) -> None:
        self._enter("delete")
        f = self._get(key)
        if f.metadata.get("legal_hold"):
            raise Conflict("legal hold", status=409)
        del self.files[key]
        del self.blobs[key]
        self._record("delete", f)

    async def move(self, file: RemoteFile, folder: str, name: str) -> RemoteFile:
        self._enter("move")
        old = self._get(file.key)
        key = self.new_key(folder, name)
        new = replace(old, key=key, folder=folder, name=name, updated_at=self._now())
        del self.files[old.key]
        self.files[key] = new
        self.blobs[key] = self.blobs.pop(old.key)
        self._ensure(folder)
        self._record("delete", old)
        self._record("upsert", new)
        return new

    async def usage(self) -> Usage:
        self._enter("usage")
        return Usage(self.used(), len(self.files), self.limit_bytes, 1000)

    async def search(
        self,
        filters: Mapping[str, Any],
        *,
        sort_by: str = "created_at",
        sort_order: Literal["asc", "desc"] = "desc",
        page: int = 1,
        page_size: int = 20,
    ) -> SearchPage:
        raise NotImplementedError

    async def distinct(self, field: str) -> list[Any]:
        raise NotImplementedError

    async def schema(self) -> list[FieldInfo]:
        raise NotImplementedError

    async def changes(self, cursor: str | None) -> ChangeBatch:
        self._enter("changes")
        start = len(self.log) if cursor is None else int(cursor)
        return ChangeBatch(self.log[start:], str(len(self.log)), False)

    async def aclose(self) -> None:
        pass
