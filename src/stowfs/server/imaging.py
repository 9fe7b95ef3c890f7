"""Image facts judged by content (Pillow reads only the header)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from PIL import Image, UnidentifiedImageError

# Pillow format -> MIME type, for the `images` dialect (seed 001).
WEB_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


def _probe(path: Path) -> tuple[str, int, int] | None:
    try:
        with Image.open(path) as img:
            return str(img.format), int(img.width), int(img.height)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


async def probe(path: Path) -> tuple[str, int, int] | None:
    """(format, width, height) if the file is an image Pillow knows, else None."""
    return await trio.to_thread.run_sync(_probe, path)


async def facts(path: Path, content_type: str) -> dict[str, Any]:
    """width/height for image uploads, to fill metadata the user did not set."""
    if not content_type.startswith("image/"):
        return {}
    found = await probe(path)
    if found is None:
        return {}
    return {"width": found[1], "height": found[2]}
