"""The capabilities document (extension): dialects, extensions and limits served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .config import (
    IMAGE_URL_LIFETIME,
    METADATA_MAX_BYTES,
    UPLOAD_URL_LIFETIME,
    URL_EXPIRATION_DEFAULT,
    URL_EXPIRATION_MAX,
    URL_EXPIRATION_MIN,
)
from .names import FORBIDDEN_CHARS, MAX_FOLDER_PATH, MAX_NAME
from .state import StateDep

router = APIRouter(prefix="/v1")

PROTOCOL_VERSION = 1


@router.get("/capabilities")
async def capabilities(state: StateDep) -> dict[str, Any]:
    cfg = state.config
    return {
        "server": "stowfs",
        "version": PROTOCOL_VERSION,
        "dialects": ["storage", "presign", "images"],
        "extensions": ["changes", "move", "folder_delete", "usage_limits", "capabilities"],
        "name_forbidden_chars": FORBIDDEN_CHARS,  # besides control characters
        "limits": {
            "post_max_bytes": cfg.post_max_bytes,
            "put_max_bytes": cfg.put_max_bytes,
            "image_max_bytes": cfg.image_max_bytes,
            "multipart_part_min_bytes": cfg.part_min_bytes,
            "multipart_part_max_bytes": cfg.part_max_bytes,
            "multipart_max_parts": cfg.max_parts,
            "multipart_max_bytes": cfg.multipart_max_bytes,
            "metadata_max_bytes": METADATA_MAX_BYTES,
            "name_max_chars": MAX_NAME,
            "folder_path_max_chars": MAX_FOLDER_PATH,
            "page_size_max": 100,
            "list_limit_max": 1000,
            "url_expiration_min": URL_EXPIRATION_MIN,
            "url_expiration_max": URL_EXPIRATION_MAX,
            "url_expiration_default": URL_EXPIRATION_DEFAULT,
            "upload_url_lifetime": UPLOAD_URL_LIFETIME,
            "image_url_lifetime": IMAGE_URL_LIFETIME,
        },
        "rate_limit": (
            {"requests": cfg.rate_limit.requests, "window_seconds": cfg.rate_limit.window_seconds}
            if cfg.rate_limit
            else None
        ),
    }
