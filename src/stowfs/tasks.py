"""A nursery whose failure reads as one error: the client's parallel transfers, the
mount's paired listings, the server's receive-while-writing.

Trio wraps a child's exception in an ExceptionGroup; callers expect the error itself
(a Remote's callers the errors of stowfs.errors), so the first real failure is raised
on its own (the others are its consequences: siblings cancelled, or the same outage
seen twice)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from . import errors


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        real = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if not real:
            raise  # only cancellation: let the cancelling scope see it as it is
        first = next((e for e in real if isinstance(e, errors.StowfsError)), real[0])
        raise first from None
