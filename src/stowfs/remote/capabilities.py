"""Feature detection: the server's `/capabilities` document (an extension) -> Capabilities.

Real providers have no such document; then only what the seeds promise is assumed,
and the client falls back (listing diff, copy + delete, no rmdir).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import errors
from .base import Capabilities
from .transport import Transport

log = logging.getLogger("stowfs.remote")

MB = 1024 * 1024
DAY = 86_400.0
Dialect = Literal["storage", "presign", "images"]
DIALECTS: tuple[Dialect, ...] = ("storage", "presign", "images")
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})

# What the seeds state, for a provider that does not describe itself.
SEED_LIMITS: Mapping[str, int] = {
    "post_max_bytes": 50 * MB,
    "put_max_bytes": 500 * MB,
    "image_max_bytes": 20 * MB,
    "multipart_part_min_bytes": 5 * MB,
    "multipart_part_max_bytes": 5 * 1024 * MB,
    "multipart_max_parts": 10_000,
    "multipart_max_bytes": 5 * 1024 * 1024 * MB,
    "metadata_max_bytes": 10 * 1024,
    "list_limit_max": 100,
    "url_expiration_default": int(7 * DAY),
    "url_expiration_max": 15_552_000,
    "image_url_lifetime": 72 * 3600,
}


@dataclass(frozen=True)
class ServerInfo:
    """The parsed capabilities document; `described` is False for a plain provider."""

    described: bool = False
    dialects: frozenset[str] = frozenset()
    extensions: frozenset[str] = frozenset()
    limits: Mapping[str, int] = field(default_factory=dict)
    name_forbidden: str = "/"  # characters no name may hold, besides control characters

    def limit(self, name: str) -> int:
        value = self.limits.get(name)
        return int(value) if isinstance(value, int) and value > 0 else SEED_LIMITS[name]

    def has(self, extension: str) -> bool:
        return extension in self.extensions

    @property
    def multipart(self) -> bool:
        """Whether the presign dialect's multipart endpoints are served."""
        return "presign" in self.dialects or self.has("multipart")


def parse_info(doc: Any) -> ServerInfo:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("dialects"), list):
        return ServerInfo()
    limits = doc.get("limits")
    forbidden = doc.get("name_forbidden_chars")
    return ServerInfo(
        described=True,
        name_forbidden="".join(sorted({"/", *forbidden})) if isinstance(forbidden, str) else "/",
        dialects=frozenset(str(d) for d in doc["dialects"]),
        extensions=frozenset(str(e) for e in doc.get("extensions") or []),
        limits={
            str(k): v
            for k, v in (limits.items() if isinstance(limits, Mapping) else [])
            if isinstance(v, int) and not isinstance(v, bool)
        },
    )


async def probe(transport: Transport) -> ServerInfo:
    """GET /capabilities; any refusal or a non-document means a plain provider."""
    try:
        response = await transport.request("GET", "capabilities")
    except (errors.Unavailable, errors.RateLimited):
        raise
    except errors.RemoteError as exc:
        log.debug("no capabilities document (%s): assuming a plain provider", exc)
        return ServerInfo()
    try:
        return parse_info(response.json())
    except ValueError:
        return ServerInfo()


def check_dialect(dialect: str, info: ServerInfo) -> Dialect:
    if dialect not in DIALECTS:
        raise errors.ConfigError(f"unknown dialect {dialect!r} (choose from {', '.join(DIALECTS)})")
    if info.described and dialect not in info.dialects:
        raise errors.ProtocolError(
            f"the server does not speak the {dialect!r} dialect"
            f" (it serves: {', '.join(sorted(info.dialects)) or 'none'})"
        )
    return dialect


def capabilities(dialect: Dialect, info: ServerInfo) -> Capabilities:
    metadata_max = info.limit("metadata_max_bytes")
    if dialect == "storage":
        post_max = info.limit("post_max_bytes")
        multipart = info.multipart
        return Capabilities(
            dialect="storage",
            list=True,
            metadata=True,
            delete=True,
            mkdir=True,
            rmdir=info.has("folder_delete"),
            move=True,
            server_move=info.has("move"),
            search=True,
            changes=info.has("changes"),
            usage=True,
            usage_limits=info.has("usage_limits"),
            renewable_urls=True,
            url_lifetime=float(info.limit("url_expiration_default")),
            single_upload_max=post_max,
            multipart=multipart,
            max_file_size=info.limit("multipart_max_bytes") if multipart else post_max,
            metadata_max_bytes=metadata_max,
            name_forbidden=info.name_forbidden,
            folder_path_max=info.limits.get("folder_path_max_chars"),
        )
    nothing: dict[str, Any] = {
        "list": False,
        "metadata": False,
        "delete": False,
        "mkdir": False,
        "rmdir": False,
        "move": False,
        "server_move": False,
        "search": False,
        "changes": False,
        "usage": False,
        "usage_limits": False,
        "renewable_urls": False,
        "metadata_max_bytes": metadata_max,
        "name_forbidden": info.name_forbidden,
    }
    if dialect == "presign":
        return Capabilities(
            dialect="presign",
            url_lifetime=0.0,
            single_upload_max=info.limit("put_max_bytes"),
            multipart=True,
            max_file_size=info.limit("multipart_max_bytes"),
            **nothing,
        )
    image_max = info.limit("image_max_bytes")
    return Capabilities(
        dialect="images",
        url_lifetime=float(info.limit("image_url_lifetime")),
        single_upload_max=image_max,
        multipart=False,
        max_file_size=image_max,
        content_types=IMAGE_TYPES,
        gone_with_url=True,
        **nothing,
    )
