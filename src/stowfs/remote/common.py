"""What every dialect shares: the transport, downloads, size checks; the rest is Unsupported
until a dialect overrides it."""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn

import trio

from .. import errors
from .base import (
    ChangeBatch,
    FieldInfo,
    Remote,
    RemoteFile,
    RemoteFolder,
    SearchPage,
    UploadCheckpoint,
    Usage,
)
from .capabilities import Dialect, ServerInfo, capabilities
from .download import Downloader
from .transport import Transport
from .tuning import Tuning
from .upload import Multipart, NewObject, guess_type


class HttpRemote(Remote):
    dialect: ClassVar[Dialect]
    multipart: Multipart | None = None  # the dialects that upload in parts set it

    def __init__(self, transport: Transport, info: ServerInfo, tuning: Tuning) -> None:
        self.transport = transport
        self.info = info
        self.tuning = tuning
        self.capabilities = capabilities(self.dialect, info)
        self.downloads = Downloader(
            transport, self._renew if self.capabilities.renewable_urls else None, tuning
        )

    def _unsupported(self, what: str) -> NoReturn:
        raise errors.Unsupported(f"the {self.dialect} dialect cannot {what}")

    @abc.abstractmethod
    async def verify(self) -> None:
        """Check the key (and that the service speaks this dialect) with a harmless call."""

    async def _renew(self, file: RemoteFile) -> RemoteFile:
        return await self.stat(file.key)

    async def _prepare(self, source: Path, name: str) -> tuple[int, str]:
        """(size, content type) of a file to upload; TooLarge before sending a byte."""
        size = (await trio.to_thread.run_sync(os.stat, source)).st_size
        limit = self.capabilities.max_file_size
        if limit is not None and size > limit:
            why = "" if self.capabilities.multipart else ", which offers no multipart upload"
            raise errors.TooLarge(
                f"{name}: {size} bytes is over the {limit}-byte upload limit of this remote"
                f" ({self.dialect} dialect{why})"
            )
        return size, guess_type(name)

    def _single_max(self) -> int:
        limit = self.capabilities.single_upload_max
        return min(limit, self.tuning.single_upload_max or limit)

    async def begin_upload(
        self, folder: str, name: str, metadata: Mapping[str, Any] | None = None
    ) -> UploadCheckpoint | None:
        if self.multipart is None:
            return None
        target = NewObject(folder.strip("/"), name, guess_type(name), metadata)
        return await self.multipart.begin(target)

    async def upload_part(self, checkpoint: UploadCheckpoint, number: int, source: Path) -> None:
        if self.multipart is None:
            self._unsupported("upload in parts")
        await self.multipart.send_part(checkpoint, number, source)

    async def abort_upload(self, checkpoint: UploadCheckpoint) -> None:
        if self.multipart is not None:
            await self.multipart.abort(checkpoint.upload_id)

    # -- shared read path -------------------------------------------------------
    def stream(
        self, file: RemoteFile, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.downloads.stream(file, offset, length)

    async def read(self, file: RemoteFile, offset: int, length: int) -> bytes:
        return await self.downloads.read(file, offset, length)

    async def fresh_url(self, file: RemoteFile, min_valid: float = 300.0) -> tuple[str, float]:
        return await self.downloads.fresh_url(file, min_valid)

    async def aclose(self) -> None:
        await self.transport.aclose()

    # -- not in every dialect ------------------------------------------------------
    async def list_folder(self, folder: str) -> list[RemoteFile]:
        self._unsupported("list files (keep your own record of uploads)")

    async def list_folders(self, parent: str | None = None) -> list[RemoteFolder]:
        self._unsupported("list folders")

    async def stat(self, key: str) -> RemoteFile:
        self._unsupported("look up a file (keep your own record of uploads)")

    async def mkdir(self, folder: str) -> None:
        self._unsupported("create folders")

    async def rmdir(self, folder: str) -> None:
        self._unsupported("remove folders")

    async def patch_metadata(self, key: str, patch: Mapping[str, Any]) -> RemoteFile:
        self._unsupported("change metadata")

    async def set_public(self, key: str, public: bool) -> RemoteFile:
        self._unsupported("make files public or private")

    async def delete(self, key: str) -> None:
        self._unsupported("delete files")

    async def move(self, file: RemoteFile, folder: str, name: str) -> RemoteFile:
        self._unsupported("move or rename files")

    async def usage(self) -> Usage:
        self._unsupported("report usage")

    async def search(
        self,
        filters: Mapping[str, Any],
        *,
        sort_by: str = "created_at",
        sort_order: Literal["asc", "desc"] = "desc",
        page: int = 1,
        page_size: int = 20,
    ) -> SearchPage:
        self._unsupported("search")

    async def distinct(self, field: str) -> list[Any]:
        self._unsupported("list distinct values")

    async def schema(self) -> list[FieldInfo]:
        self._unsupported("describe its fields")

    async def changes(self, cursor: str | None) -> ChangeBatch:
        self._unsupported("report changes")
