"""The value types of the storage dialect's metadata schema (seed 000), judged in one
place: the reference server refuses other values, and a mount checks a value against
the schema before the upload that would carry it."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def fits(kind: str, array: bool, value: Any) -> bool:
    """Whether `value` is one of a field of type `kind` (an array field: also a list of
    strings). A type not named here is not judged."""
    if array and isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    match kind:
        case "keyword" | "text":
            return isinstance(value, str)
        case "long":
            return isinstance(value, int) and not isinstance(value, bool)
        case "double":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "date":
            return isinstance(value, str) and is_date(value)
    return True


def is_date(text: str) -> bool:
    """ISO 8601, a date or a date and time (a trailing Z is UTC)."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True
