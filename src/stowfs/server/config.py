"""Server settings and the plans of protocol.md section 1."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

KB = 1024
MB = 1024 * KB
GB = 1024 * MB
TB = 1024 * GB

DAY = 86_400
URL_EXPIRATION_MIN = 300
URL_EXPIRATION_MAX = 15_552_000
URL_EXPIRATION_DEFAULT = 7 * DAY
UPLOAD_URL_LIFETIME = 7 * DAY
IMAGE_URL_LIFETIME = 72 * 3600
METADATA_MAX_BYTES = 10 * KB


@dataclass(frozen=True)
class Plan:
    name: str
    storage_bytes: int
    max_files: int
    db_bytes: int


PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        Plan("free", 1 * GB, 1_000, 100 * MB),
        Plan("pro", 10 * GB, 50_000, 5 * GB),
        Plan("business", 100 * GB, 500_000, 50 * GB),
        Plan("enterprise", 1 * TB, 10_000_000, 500 * GB),
    )
}


@dataclass(frozen=True)
class RateLimit:
    requests: int
    window_seconds: float


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    # None: URLs are built from the Host of each request (so proxies stay in the path).
    public_url: str | None = None
    rate_limit: RateLimit | None = None
    sweep_interval: float = 60.0
    post_max_bytes: int = 50 * MB  # `storage` dialect, presigned POST (seed 000)
    put_max_bytes: int = 500 * MB  # `presign` dialect, single PUT (seed 002)
    image_max_bytes: int = 20 * MB  # `images` dialect (seed 001)
    part_min_bytes: int = 5 * MB  # multipart: every part but the last
    part_max_bytes: int = 5 * GB
    max_parts: int = 10_000
    multipart_max_bytes: int = 5 * TB
    change_retention_days: int = 30
    download_chunk: int = 4 * MB
    extra_plans: dict[str, Plan] = field(default_factory=dict)
