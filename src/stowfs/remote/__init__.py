"""The only code that speaks HTTP to a storage service: `connect` gives a `Remote`."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from .base import (
    Capabilities,
    Change,
    ChangeBatch,
    FieldInfo,
    Remote,
    RemoteFile,
    RemoteFolder,
    SearchPage,
    UploadCheckpoint,
    Usage,
)
from .capabilities import DIALECTS, check_dialect, probe
from .common import HttpRemote
from .images import ImagesRemote
from .presign import PresignRemote
from .storage import StorageRemote
from .transport import RetryPolicy, Transport
from .tuning import Tuning

__all__ = [
    "DIALECTS",
    "Capabilities",
    "Change",
    "ChangeBatch",
    "FieldInfo",
    "HttpRemote",
    "Remote",
    "RemoteFile",
    "RemoteFolder",
    "RetryPolicy",
    "SearchPage",
    "Tuning",
    "UploadCheckpoint",
    "Usage",
    "connect",
    "open_remote",
]

_KINDS: dict[str, type[HttpRemote]] = {
    "storage": StorageRemote,
    "presign": PresignRemote,
    "images": ImagesRemote,
}


async def open_remote(
    url: str,
    key: str,
    dialect: str = "storage",
    *,
    policy: RetryPolicy | None = None,
    tuning: Tuning | None = None,
    timeout: httpx.Timeout | None = None,
    wall_clock: Callable[[], float] = time.time,
    http_transport: httpx.AsyncBaseTransport | None = None,
    reload_key: Callable[[], str] | None = None,
) -> HttpRemote:
    """`connect`, typed as the concrete class (for `verify` and the tests' knobs).
    `reload_key` reads the key again from its source, when the server refuses it."""
    transport = Transport(
        url,
        key,
        bearer=dialect != "storage",
        policy=policy,
        timeout=timeout,
        wall_clock=wall_clock,
        http_transport=http_transport,
        reload_key=reload_key,
    )
    try:
        info = await probe(transport)
        kind = check_dialect(dialect, info)
    except BaseException:
        await transport.aclose()
        raise
    return _KINDS[kind](transport, info, tuning or Tuning())


async def connect(url: str, key: str, dialect: str = "storage") -> Remote:
    """A Remote for the service at `url` (e.g. http://host:8750/v1) speaking `dialect`;
    probes the capabilities document. Close it with `aclose()`."""
    return await open_remote(url, key, dialect)
