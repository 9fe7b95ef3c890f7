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
            return isinstance(value, str) and _is_date(value)
    return True


def type_name(kind: str, array: bool) -> str:
    """How a refusal names the type a field takes."""
    return f"{kind} array" if array else kind


def iso_datetime(text: str) -> datetime:
    """An ISO 8601 date, or date and time (a trailing Z is UTC); ValueError if not."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def _is_date(text: str) -> bool:
    try:
        iso_datetime(text)
    except ValueError:
        return False
    return True
