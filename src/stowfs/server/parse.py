"""Parsing of untrusted numeric text (str.isdigit accepts '²', which int() refuses)."""

from __future__ import annotations


def parse_uint(text: str | None, max_digits: int = 18) -> int | None:
    """A non-negative int that fits SQLite's 64 bits, or None."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > max_digits:
        return None
    return int(text)
