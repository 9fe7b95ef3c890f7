"""Signed URLs: downloads (`/dl`), public downloads, presigned PUTs and multipart parts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

from .parse import parse_uint
from .signing import Signer

EXPIRES = "X-Stowfs-Expires"
SIGNATURE = "X-Stowfs-Signature"


@dataclass(frozen=True)
class Urls:
    base: str  # e.g. http://127.0.0.1:8750/v1
    signer: Signer

    def file_url(self, object_key: str, file_id: str, lifetime: int) -> tuple[str, int]:
        expires = int(time.time()) + lifetime
        sig = self.signer.sign("GET", object_key, file_id, expires)
        url = f"{self.base}/dl/{quote(object_key)}?{EXPIRES}={expires}&{SIGNATURE}={sig}"
        return url, expires

    def public_url(self, object_key: str) -> str:
        return f"{self.base}/public/{quote(object_key)}"

    def put_url(self, object_key: str, file_id: str, size: int, lifetime: int) -> str:
        expires = int(time.time()) + lifetime
        sig = self.signer.sign("PUT", object_key, file_id, size, expires)
        return f"{self.base}/put/{quote(object_key)}?{EXPIRES}={expires}&{SIGNATURE}={sig}"

    def part_url(self, upload_id: str, part_number: int, lifetime: int) -> str:
        expires = int(time.time()) + lifetime
        sig = self.signer.sign("PART", upload_id, part_number, expires)
        return f"{self.base}/part/{upload_id}/{part_number}?{EXPIRES}={expires}&{SIGNATURE}={sig}"

    def upload_url(self) -> str:
        return f"{self.base}/upload"


def check_expiry(expires: str | None) -> int | None:
    """The expiry as an int if it is well-formed and in the future, else None."""
    value = parse_uint(expires)
    return value if value is not None and value >= time.time() else None
