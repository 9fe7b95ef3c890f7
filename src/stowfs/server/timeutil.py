"""One timestamp format everywhere: ISO 8601 UTC with microseconds, so text order is time order."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from ..metadata import iso_datetime


@lru_cache(maxsize=256)  # the records of a page share their URLs' expiry
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> float:
    """Parse an ISO 8601 date or datetime; naive values are UTC. Raises ValueError."""
    dt = iso_datetime(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def normalize_iso(value: str) -> str:
    return iso(parse_iso(value))
