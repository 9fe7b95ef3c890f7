"""Visible names in a folder: nothing is ever hidden.

Several objects may share one filename in a folder (and a file may share a folder's
name). The newest object (by updated_at, then created_at, then key) keeps the plain
name; every other one is shown as `<stem>~<8 hex><ext>`, the hex being the start of the
SHA-1 of its object key, so the name is stable for as long as the object exists.
Example: `cat.png` and `cat~3f2a9c01.png`. A folder wins its name over files. The stem
is shortened (whole characters) where the name would pass NAME_MAX bytes: a name the
kernel could list but not look up could not be opened or removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ..remote.base import RemoteFile

NAME_MAX = 255  # bytes of one name, as Linux has it


def disambiguated(name: str, key: str, length: int = 8) -> str:
    digest = hashlib.sha1(key.encode()).hexdigest()[:length]
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    room = NAME_MAX - len(f"~{digest}{ext}".encode())
    if room < 1:  # an extension as long as a name: not one
        stem, ext, room = name, "", NAME_MAX - 1 - len(digest)
    stem = stem.encode()[:room].decode("utf-8", "ignore")
    return f"{stem}~{digest}{ext}"


def visible_names(files: Iterable[RemoteFile], taken: Iterable[str] = ()) -> dict[str, RemoteFile]:
    """name -> file for one folder's files; `taken`: names already used (folders)."""
    reserved = set(taken)
    ordered = sorted(files, key=lambda f: (f.updated_at, f.created_at, f.key), reverse=True)
    out: dict[str, RemoteFile] = {}
    for f in ordered:
        name = f.name
        length = 8
        while name in reserved or name in out:
            name = disambiguated(f.name, f.key, length)
            length += 4
        out[name] = f
    return out
