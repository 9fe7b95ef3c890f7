"""The ONE place where stowfs errors become errno values for FUSE."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from ..errors import (
    AlreadyExists,
    AuthFailed,
    Conflict,
    Forbidden,
    InvalidRequest,
    MetadataTooLarge,
    NameTooLong,
    NotFound,
    QuotaExceeded,
    RateLimited,
    StowfsError,
    TooLarge,
    Unsupported,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

# Most specific first: MetadataTooLarge is a TooLarge.
_TABLE: list[tuple[type[BaseException], int]] = [
    (NotFound, errno.ENOENT),
    (AuthFailed, errno.EACCES),
    (Forbidden, errno.EACCES),
    (AlreadyExists, errno.EEXIST),
    (MetadataTooLarge, errno.E2BIG),
    (TooLarge, errno.EFBIG),
    (QuotaExceeded, errno.ENOSPC),
    (Conflict, errno.EPERM),
    (Unsupported, errno.ENOTSUP),
    (UnsupportedMediaType, errno.EINVAL),
    (NameTooLong, errno.ENAMETOOLONG),
    (InvalidRequest, errno.EINVAL),
    (RateLimited, errno.EAGAIN),
]


def errno_for(exc: BaseException, *, folder: bool = False, opened: bool = False) -> int:
    """errno for an exception; `folder`: a Conflict on a folder means "not empty";
    `opened`: an object gone under an open file is a stale handle, as on NFS."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, Conflict) and folder:
        return errno.ENOTEMPTY
    if isinstance(exc, NotFound) and opened:
        return errno.ESTALE
    for kind, code in _TABLE:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO  # Unavailable, ProtocolError and anything unforeseen


def fuse_error(
    exc: BaseException, *, folder: bool = False, opened: bool = False
) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno_for(exc, folder=folder, opened=opened))


P = ParamSpec("P")
R = TypeVar("R")


def handler(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Wrap a FUSE handler: stowfs and OS errors leave as FUSEError with the mapped errno."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except (StowfsError, OSError) as exc:
            code = errno_for(exc)
            log.log(
                logging.DEBUG if code == errno.ENOENT else logging.WARNING,
                "%s: %s -> %s",
                fn.__name__,
                exc,
                errno.errorcode.get(code, code),
            )
            raise pyfuse3.FUSEError(code) from exc

    return wrapper
