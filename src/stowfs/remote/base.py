"""The one interface between stowfs (fs/, sync/) and a storage service.

Callers never see HTTP: they get these dataclasses and the exceptions of
`stowfs.errors`. A remote describes what it can do in `Capabilities`, and callers
adapt (a write-only dialect mounts as a drop folder; no change feed means a
listing diff; no server move means copy + delete, done here, not by the caller).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import Unsupported
from ..metadata import fits


@dataclass(frozen=True)
class Capabilities:
    dialect: Literal["storage", "presign", "images"]
    list: bool  # list_folder, list_folders, stat
    metadata: bool  # patch_metadata, set_public
    delete: bool
    mkdir: bool
    rmdir: bool  # remove an (empty) folder
    move: bool  # move at all (by the server, or copy + delete)
    server_move: bool  # move without copying bytes (extension)
    search: bool  # search, distinct, schema
    changes: bool  # a server change feed (extension); otherwise `changes` diffs listings
    usage: bool
    usage_limits: bool  # usage() knows the plan limits (extension), so df is true
    renewable_urls: bool  # a fresh download URL can be had at any time
    url_lifetime: float  # seconds a download URL stays valid (the longest granted)
    single_upload_max: int  # largest single-request upload; above it, multipart
    multipart: bool
    max_file_size: int | None  # None: no known limit
    metadata_max_bytes: int
    content_types: frozenset[str] | None = None  # None: any (images: JPEG/PNG/WebP/GIF)
    # Characters no file or folder name may hold, besides control characters (protocol.md:
    # folder names hold none; the reference server refuses them in filenames too).
    name_forbidden: str = "/"
    folder_path_max: int | None = None  # characters in a folder's whole path; None: unknown
    # An object is reached only by the URL its upload gave, and lives no longer (images).
    gone_with_url: bool = False

    def refuses_name(self, name: str) -> bool:
        return any(c in self.name_forbidden or ord(c) < 32 or ord(c) == 127 for c in name)


@dataclass(frozen=True)
class RemoteFile:
    key: str  # object_key / file_key: the identity of the object on the remote
    folder: str  # '' is the root
    name: str
    size: int
    content_type: str
    checksum: str | None  # MD5 hex of the bytes, when the service gives it
    created_at: float  # unix seconds
    updated_at: float
    metadata: Mapping[str, Any] = field(default_factory=dict)
    is_public: bool = False
    public_url: str | None = None
    # signed download URL, valid until url_expires; a credential, so kept out of repr()
    url: str | None = field(default=None, repr=False)
    url_expires: float | None = None

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.name}" if self.folder else self.name


@dataclass(frozen=True)
class RemoteFolder:
    path: str
    file_count: int = 0
    total_size: int = 0

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


@dataclass(frozen=True)
class Usage:
    total_bytes: int
    file_count: int
    limit_bytes: int | None  # None: unknown (a provider without the extension)
    limit_files: int | None
    by_content_type: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    op: Literal["upsert", "delete"]
    kind: Literal["file", "folder"]
    folder: str  # the folder of the file, or the folder itself
    key: str | None = None  # file changes
    file: RemoteFile | None = None  # upserts of files


@dataclass(frozen=True)
class ChangeBatch:
    changes: list[Change]
    cursor: str  # pass back to `changes` for what follows
    has_more: bool


@dataclass(frozen=True)
class SearchPage:
    files: list[RemoteFile]
    total: int
    page: int
    page_size: int
    total_pages: int


@dataclass(frozen=True)
class FieldInfo:
    """A metadata field of the service's schema: values of its type only."""

    name: str
    type: str  # keyword | text | date | long | double | boolean (others are not checked)
    searchable: bool = True
    array: bool = False
    writable: bool = True  # False: the service sets it (size, checksum...)

    def accepts(self, value: Any) -> bool:
        """Whether the service takes `value` for this field (None removes it)."""
        return value is None or (self.writable and fits(self.type, self.array, value))


@dataclass
class UploadCheckpoint:
    """State of an interrupted multipart upload; JSON-safe via to_dict/from_dict.

    The caller persists it (journal, sync index) whenever `on_checkpoint` fires,
    and passes it back to `upload` to resume instead of restarting.
    """

    upload_id: str
    key: str
    size: int
    part_size: int
    parts: dict[int, str] = field(default_factory=dict)  # part number -> ETag
    mtime_ns: int = 0  # of the source when the upload began: a changed source restarts
    # Begun by `begin_upload` while the source was still being written: its size and
    # mtime are not known yet, and the caller vouches that the parts sent still match.
    growing: bool = False
    md5: str | None = None  # of the whole source, where the caller hashed it as it wrote

    def to_dict(self) -> dict[str, Any]:
        return {
            "upload_id": self.upload_id,
            "key": self.key,
            "size": self.size,
            "part_size": self.part_size,
            "parts": {str(k): v for k, v in self.parts.items()},
            "mtime_ns": self.mtime_ns,
            "growing": self.growing,
            "md5": self.md5,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UploadCheckpoint:
        return cls(
            upload_id=str(data["upload_id"]),
            key=str(data["key"]),
            size=int(data["size"]),
            part_size=int(data["part_size"]),
            parts={int(k): str(v) for k, v in dict(data.get("parts", {})).items()},
            mtime_ns=int(data.get("mtime_ns", 0)),
            growing=bool(data.get("growing", False)),
            md5=str(data["md5"]) if data.get("md5") else None,
        )


CheckpointHook = Callable[[UploadCheckpoint], Awaitable[None]]
KeyHook = Callable[[str], Awaitable[None]]  # the key an upload's object will have
ProgressHook = Callable[[int], None]  # bytes just transferred


class Remote(abc.ABC):
    """A storage service. Every method may raise stowfs.errors.RemoteError subclasses;
    methods a dialect cannot do raise Unsupported (check `capabilities` first)."""

    capabilities: Capabilities

    # -- listing ----------------------------------------------------------------
    @abc.abstractmethod
    async def list_folder(self, folder: str) -> list[RemoteFile]:
        """Every file directly in `folder` ('' = root), all pages, with fresh URLs."""

    @abc.abstractmethod
    async def list_folders(self, parent: str | None = None) -> list[RemoteFolder]:
        """Folders directly under `parent` ('' = root); None: every folder."""

    @abc.abstractmethod
    async def stat(self, key: str) -> RemoteFile:
        """One file, with a fresh URL. NotFound if it is gone."""

    # -- folders ----------------------------------------------------------------
    @abc.abstractmethod
    async def mkdir(self, folder: str) -> None:
        """Create a folder (and its parents); existing is fine."""

    @abc.abstractmethod
    async def rmdir(self, folder: str) -> None:
        """Remove an empty folder. Conflict if not empty; Unsupported if impossible."""

    # -- bytes --------------------------------------------------------------------
    @abc.abstractmethod
    def stream(
        self, file: RemoteFile, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes [offset, offset+length) as they arrive. The signed URL is renewed
        before expiry and on 403; a broken body resumes with Range where it stopped."""

    @abc.abstractmethod
    async def read(self, file: RemoteFile, offset: int, length: int) -> bytes:
        """One range, whole (parallel sub-ranges for big lengths). Short only at EOF."""

    @abc.abstractmethod
    async def fresh_url(self, file: RemoteFile, min_valid: float = 300.0) -> tuple[str, float]:
        """A download URL valid for at least `min_valid` more seconds: (url, expires)."""

    @abc.abstractmethod
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
        """Upload a local file as a NEW object (the old one, if any, stays until the
        caller deletes it). Single request up to `single_upload_max`, else multipart
        with parallel parts, resumable via `checkpoint`. The checksum is verified.
        A retried upload never leaves two objects. `on_key` gets the new object's key
        before the bytes go, where the service names it then (not the images dialect):
        a caller that dies before the answer can still tell that object later."""

    async def begin_upload(
        self, folder: str, name: str, metadata: Mapping[str, Any] | None = None
    ) -> UploadCheckpoint | None:
        """Start a multipart upload of a file that is still being written (size unknown).
        The caller sends each part with `upload_part` once the file holds it whole, and
        keeps those bytes unchanged; then `upload(..., checkpoint=...)` sends the rest
        and completes. None: this remote has no multipart upload."""
        return None

    async def upload_part(self, checkpoint: UploadCheckpoint, number: int, source: Path) -> None:
        """Send part `number` (1-based, `checkpoint.part_size` bytes) of `source`; its
        ETag lands in `checkpoint.parts`."""
        raise Unsupported("this remote has no multipart upload")

    async def abort_upload(self, checkpoint: UploadCheckpoint) -> None:
        """Best effort: release the parts of an upload that will not be completed."""
        return  # no multipart, no parts

    # -- metadata and lifecycle --------------------------------------------------
    @abc.abstractmethod
    async def patch_metadata(self, key: str, patch: Mapping[str, Any]) -> RemoteFile:
        """JSON merge-patch (None deletes a key); returns the updated file."""

    @abc.abstractmethod
    async def set_public(self, key: str, public: bool) -> RemoteFile: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete permanently. NotFound if already gone; Conflict on legal hold."""

    @abc.abstractmethod
    async def move(self, file: RemoteFile, folder: str, name: str) -> RemoteFile:
        """Rename/move; by the server where it can, else copy + delete."""

    @abc.abstractmethod
    async def usage(self) -> Usage: ...

    # -- search ------------------------------------------------------------------
    @abc.abstractmethod
    async def search(
        self,
        filters: Mapping[str, Any],
        *,
        sort_by: str = "created_at",
        sort_order: Literal["asc", "desc"] = "desc",
        page: int = 1,
        page_size: int = 20,
    ) -> SearchPage: ...

    @abc.abstractmethod
    async def distinct(self, field: str) -> list[Any]: ...

    @abc.abstractmethod
    async def schema(self) -> list[FieldInfo]: ...

    # -- changes -----------------------------------------------------------------
    @abc.abstractmethod
    async def changes(self, cursor: str | None) -> ChangeBatch:
        """Changes after `cursor`; None: start now (an empty batch with the current
        cursor). Without a server feed this diffs listings against the last call."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
