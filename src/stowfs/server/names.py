"""Validation of folder paths and filenames (protocol.md section 1)."""

from __future__ import annotations

from .errors import bad_request

MAX_NAME = 255
MAX_FOLDER_PATH = 1024
FORBIDDEN_CHARS = "/\\"  # in a folder name or filename, besides control characters


def _bad_chars(name: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in name)


def check_segment(name: str, what: str = "folder name") -> str:
    if not name:
        raise bad_request(f"{what} must not be empty", code="INVALID_NAME")
    if len(name) > MAX_NAME:
        raise bad_request(f"{what} exceeds {MAX_NAME} characters", code="NAME_TOO_LONG")
    if any(c in FORBIDDEN_CHARS for c in name) or _bad_chars(name) or name in (".", ".."):
        raise bad_request(
            f"{what} {name!r} may not contain '/', '\\' or control characters",
            code="INVALID_NAME",
        )
    return name


def check_folder(path: str | None) -> str:
    """Normalize a folder path ('' is the root); every segment is checked."""
    if path is None:
        return ""
    text = path.strip("/")
    if not text:
        return ""
    if len(text) > MAX_FOLDER_PATH:
        raise bad_request(f"folder path exceeds {MAX_FOLDER_PATH} characters", code="NAME_TOO_LONG")
    for segment in text.split("/"):
        check_segment(segment)
    return text


def check_filename(name: str) -> str:
    if len(name.encode()) > MAX_NAME:
        raise bad_request(f"filename exceeds {MAX_NAME} bytes", code="NAME_TOO_LONG")
    return check_segment(name, "filename")


def join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def ancestors(folder: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b', 'a/b/c']."""
    if not folder:
        return []
    parts = folder.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def subtree_bounds(folder: str) -> tuple[str, str]:
    """Half-open text range of every path strictly under `folder` ('/' < '0')."""
    return folder + "/", folder + "0"
