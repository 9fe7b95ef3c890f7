"""Dialect `storage` (seed 000): the full Storage API, plus the server's extensions."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import trio

from .. import errors
from ..checksum import md5_file
from ..tasks import open_nursery
from . import records
from .base import (
    ChangeBatch,
    CheckpointHook,
    FieldInfo,
    KeyHook,
    ProgressHook,
    RemoteFile,
    RemoteFolder,
    SearchPage,
    UploadCheckpoint,
    Usage,
)
from .capabilities import ServerInfo
from .common import HttpRemote
from .listdiff import ListingDiff
from .transport import OutcomeUnknown, Transport, document
from .tuning import Tuning
from .upload import Multipart, NewObject, Uploaded, etag_md5, form_body

log = logging.getLogger("stowfs.remote")

# Repeats of the final POST after its answer was lost and the object is not there.
_POST_REPEATS = 3


class StorageRemote(HttpRemote):
    dialect = "storage"

    def __init__(self, transport: Transport, info: ServerInfo, tuning: Tuning) -> None:
        super().__init__(transport, info, tuning)
        self.multipart = Multipart(transport, info, tuning) if info.multipart else None
        self._page = min(1000, info.limit("list_limit_max"))
        self._diff = ListingDiff(self._list_everything)

    async def verify(self) -> None:
        try:
            doc = await self.transport.call("GET", "files/storage")
        except errors.NotFound:
            raise errors.ProtocolError(
                "the service does not answer the storage dialect's usage endpoint"
                " (wrong URL or dialect?)",
                status=404,
            ) from None
        if "total_bytes" not in doc:
            raise errors.ProtocolError(
                "the service's usage answer is not the storage dialect's (wrong URL or dialect?)"
            )

    # -- listing ----------------------------------------------------------------
    async def _list_files(self, folder: str | None) -> list[RemoteFile]:
        """Every page. Once the first tells how many there are, two are asked for at a
        time: the server builds one while the one before is decoded here."""
        pages: dict[int, tuple[list[RemoteFile], int]] = {}  # offset -> files, total then

        async def fetch(offset: int) -> None:
            params: dict[str, Any] = {"limit": self._page, "offset": offset}
            if folder is not None:
                params["folder"] = folder
            doc = await self.transport.call("GET", "files/storage/files", params=params)
            page = [records.remote_file(item) for item in doc.get("files") or []]
            pages[offset] = page, int(doc.get("total_count", 0) or 0)

        await fetch(0)
        step = len(pages[0][0])
        limiter = trio.CapacityLimiter(2)

        async def paired(offset: int) -> None:
            async with limiter:
                await fetch(offset)

        if step:  # (an empty first page: nothing more to ask for)
            async with open_nursery() as nursery:  # a failed page raises its own error
                for offset in range(step, pages[0][1], step):
                    nursery.start_soon(paired, offset)
        while True:  # then on while the folder grew meanwhile
            last = max(pages)
            page, total = pages[last]
            offset = last + len(page)
            if not page or offset >= total:
                break
            await fetch(offset)
        found: dict[str, RemoteFile] = {}
        for key in sorted(pages):
            for file in pages[key][0]:
                self.downloads.remember(file)
                found.setdefault(file.key, file)
        return list(found.values())

    async def list_folder(self, folder: str) -> list[RemoteFile]:
        path = folder.strip("/")
        return [f for f in await self._list_files(path) if f.folder == path]

    async def list_folders(self, parent: str | None = None) -> list[RemoteFolder]:
        params = {} if parent is None else {"parent": parent.strip("/")}
        doc = await self.transport.call("GET", "files/storage/folders", params=params)
        folders = [records.remote_folder(f) for f in doc.get("folders") or []]
        if parent is None:
            return folders
        # A provider that ignores `parent` returns every folder: keep the direct children.
        head = parent.strip("/")
        return [f for f in folders if f.path.rpartition("/")[0] == head and f.path]

    async def stat(self, key: str) -> RemoteFile:
        response = await self.transport.request("GET", f"files/storage/file/{quote(key)}")
        file = records.remote_file(document(response))
        self.downloads.remember(file)
        return file

    # -- folders ----------------------------------------------------------------
    async def mkdir(self, folder: str) -> None:
        path = folder.strip("/")
        if not path:
            return
        parent, _, name = path.rpartition("/")
        body = {"folder_name": name, "parent_folder": parent or None}
        await self.transport.request("POST", "files/storage/folder", json=body, idempotent=True)

    async def rmdir(self, folder: str) -> None:
        if not self.capabilities.rmdir:
            self._unsupported("remove folders (the service has no folder delete)")
        await self.transport.request(
            "DELETE", "files/storage/folder", params={"folder": folder.strip("/")}
        )

    # -- upload -----------------------------------------------------------------
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
        size, content_type = await self._prepare(source, name)
        target = NewObject(folder.strip("/"), name, content_type, metadata)
        # Without multipart, _prepare has checked that a single POST can take it.
        if self.multipart is None or (size <= self._single_max() and checkpoint is None):
            done = await self._post(source, size, target, progress, on_key)
        else:
            done = await self.multipart.upload(
                source,
                target,
                checkpoint=checkpoint,
                on_checkpoint=on_checkpoint,
                progress=progress,
                on_key=on_key,
            )
        return await self._confirm(done, size)

    async def _post(
        self,
        source: Path,
        size: int,
        target: NewObject,
        progress: ProgressHook | None,
        on_key: KeyHook | None,
    ) -> Uploaded:
        """upload-url, then the presigned POST. A lost answer is settled by looking."""
        request: dict[str, Any] = {"filename": target.name, "folder": target.folder}
        if target.metadata:
            request["metadata"] = dict(target.metadata)
        # Repeating upload-url is harmless: an unused grant never becomes an object.
        grant = await self.transport.call("POST", "files/upload-url", json=request, idempotent=True)
        key = str(grant["object_key"])
        if on_key is not None:
            await on_key(key)
        fields = {str(k): str(v) for k, v in (grant.get("upload_fields") or {}).items()}
        content_type = fields.get("Content-Type", target.content_type)
        body, headers = form_body(
            fields, target.name, content_type, source, size, self.tuning, progress
        )
        answer: Mapping[str, Any] = {}
        for _ in range(_POST_REPEATS):
            try:
                response = await self.transport.request(
                    "POST", str(grant["upload_url"]), body=body, headers=headers
                )
            except OutcomeUnknown as exc:
                if await self._exists(key):
                    log.info("upload of %s: the answer was lost but the object is there", key)
                    break
                log.info("upload of %s did not land (%s); sending again", key, exc)
                continue
            sent = etag_md5(response.headers.get("etag"))
            if sent is not None and body.md5 is not None and sent != body.md5:
                raise errors.ProtocolError(f"{target.name}: the service stored different bytes")
            if response.content and "json" in response.headers.get("content-type", ""):
                answer = document(response)  # the reference server answers with the object
            break
        else:
            raise errors.Unavailable(f"{target.name}: the upload kept failing; nothing was stored")
        return Uploaded(key, body.md5 or await md5_file(source), answer, confirmed=True)

    async def _exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except errors.NotFound:
            return False
        return True

    async def _confirm(self, done: Uploaded, size: int) -> RemoteFile:
        """The stored object, after checking it holds exactly the bytes we sent: from the
        upload's own answer where it is the object's whole record, else a stat."""
        answered = _stored_record(done)
        if answered is not None and answered.checksum == done.md5 and answered.size == size:
            self.downloads.remember(answered)
            return answered
        try:
            file = await self.stat(done.key)
        except errors.NotFound:
            if done.confirmed:
                raise
            raise errors.Unavailable(
                f"the upload of {done.key} was not completed (its last answer was lost)"
            ) from None
        if (file.checksum and file.checksum.lower() != done.md5) or file.size != size:
            with contextlib.suppress(errors.RemoteError):
                await self.delete(file.key)
            raise errors.ProtocolError(
                f"{file.path}: checksum mismatch after upload; the bad copy was deleted"
            )
        return file

    # -- metadata and lifecycle ----------------------------------------------------
    async def patch_metadata(self, key: str, patch: Mapping[str, Any]) -> RemoteFile:
        # A merge-patch applied twice gives the same result: safe to repeat.
        await self.transport.request(
            "PATCH",
            "files/storage/file/metadata",
            json={"object_key": key, "metadata": dict(patch)},
            idempotent=True,
        )
        return await self.stat(key)

    async def set_public(self, key: str, public: bool) -> RemoteFile:
        await self.transport.request(
            "POST",
            "files/storage/file/public",
            json={"object_key": key, "is_public": public},
            idempotent=True,
        )
        return await self.stat(key)

    async def delete(self, key: str) -> None:
        self.downloads.forget(key)
        await self.transport.request(
            "DELETE",
            "files/storage/file",
            params={"object_key": key},
            accept_on_retry=frozenset({404}),
        )

    async def move(self, file: RemoteFile, folder: str, name: str) -> RemoteFile:
        folder = folder.strip("/")
        if not self.capabilities.server_move:
            return await self._copy_move(file, folder, name)
        body = {"object_key": file.key, "folder": folder, "filename": name}
        for _ in range(2):
            try:
                response = await self.transport.request(
                    "POST", "files/storage/file/move", json=body
                )
            except OutcomeUnknown:
                if await self._exists(file.key):
                    continue  # it did not happen: ask again
                return await self._find_moved(file, folder, name)
            moved = records.remote_file(document(response))
            self.downloads.forget(file.key)
            self.downloads.remember(moved)
            return moved
        raise errors.Unavailable(f"moving {file.path!r} kept failing; it was not moved")

    async def _find_moved(self, file: RemoteFile, folder: str, name: str) -> RemoteFile:
        """After a lost answer to a move that happened: the object under its new name."""
        candidates = [
            f
            for f in await self.list_folder(folder)
            if f.name == name and f.size == file.size and f.checksum == file.checksum
        ]
        if not candidates:
            raise errors.Unavailable(f"moving {file.path!r}: the outcome could not be found")
        return max(candidates, key=lambda f: f.updated_at)

    async def _copy_move(self, file: RemoteFile, folder: str, name: str) -> RemoteFile:
        """No server move: download to a temp file, upload under the new name, delete."""
        with tempfile.TemporaryDirectory(prefix="stowfs-move-") as tmp:
            local = Path(tmp) / "data"
            async with await trio.open_file(local, "wb") as out:
                async for chunk in self.stream(file):
                    await out.write(chunk)
            copy = await self.upload(local, folder, name, dict(file.metadata))
        try:
            if file.is_public:
                copy = await self.set_public(copy.key, True)
            await self.delete(file.key)
        except errors.RemoteError:
            await self.delete(copy.key)  # keep exactly one: the original
            raise
        return copy

    async def usage(self) -> Usage:
        return records.usage(await self.transport.call("GET", "files/storage"))

    # -- search -----------------------------------------------------------------
    async def search(
        self,
        filters: Mapping[str, Any],
        *,
        sort_by: str = "created_at",
        sort_order: Literal["asc", "desc"] = "desc",
        page: int = 1,
        page_size: int = 20,
    ) -> SearchPage:
        body = {
            "filters": dict(filters),
            "sort_by": sort_by,
            "sort_order": sort_order,
            "page": page,
            "page_size": page_size,
        }
        response = await self.transport.request(
            "POST", "files/storage/search", json=body, idempotent=True
        )
        found = records.search_page(document(response))
        for file in found.files:
            self.downloads.remember(file)
        return found

    async def distinct(self, field: str) -> list[Any]:
        response = await self.transport.request(
            "GET", f"files/storage/distinct/{quote(field, safe='')}"
        )
        return list(document(response).get("values") or [])

    async def schema(self) -> list[FieldInfo]:
        response = await self.transport.request("GET", "files/storage/schema/fields")
        return [records.field_info(f) for f in document(response).get("fields") or []]

    # -- changes ------------------------------------------------------------------
    async def changes(self, cursor: str | None) -> ChangeBatch:
        if not self.capabilities.changes:
            return await self._diff.changes(cursor)
        response = await self.transport.request(
            "GET", "files/storage/changes", params={"cursor": cursor or "latest"}
        )
        doc = document(response)
        return ChangeBatch(
            changes=[records.change(item) for item in doc.get("changes") or []],
            cursor=str(doc.get("cursor") or cursor or ""),
            has_more=bool(doc.get("has_more", False)),
        )

    async def _list_everything(self) -> tuple[list[RemoteFile], list[RemoteFolder]]:
        return await self._list_files(None), await self.list_folders(None)


def _stored_record(done: Uploaded) -> RemoteFile | None:
    """The file record an upload's last answer carries, if it is a whole one (provider
    answers are often bare: a status, a key, an ETag)."""
    doc = done.response
    if doc.get("object_key") != done.key or not all(
        doc.get(field) for field in ("filename", "checksum", "created_at")
    ):
        return None
    file = records.remote_file(doc)
    return dataclasses.replace(file, checksum=(file.checksum or "").lower())
