"""Sizes and concurrency of transfers, chosen from the file size (overridable for tests)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Tuning:
    url_margin: float = 300.0  # renew a download URL this long before it expires
    read_split: int = 8 * MiB  # a read above this uses parallel sub-ranges
    read_parallel: int = 4
    io_chunk: int = 1 * MiB  # disk reads while uploading
    # Overrides of the size-based choices (None: automatic).
    single_upload_max: int | None = None  # multipart above this (capped by the dialect's)
    part_size: int | None = None
    part_parallel: int | None = None


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def plan_parts(
    size: int,
    *,
    min_part: int,
    max_part: int,
    max_parts: int,
    tuning: Tuning,
) -> tuple[int, int]:
    """(part size, parallel part uploads) for a multipart upload of `size` bytes.

    About 16 parts keep 8 connections busy; parts stay 8..128 MiB (so a retry costs
    little) unless the part-count limit forces them bigger; small files use fewer
    connections (a part each is enough)."""
    part = tuning.part_size or _clamp(-(-size // 16), 8 * MiB, 128 * MiB)
    part = max(part, -(-size // max_parts), min_part)
    part = min(-(-part // MiB) * MiB, max_part) if tuning.part_size is None else min(part, max_part)
    parts = max(1, -(-size // part))
    parallel = tuning.part_parallel or _clamp(size // (32 * MiB), 2, 8)
    return part, max(1, min(parallel, parts))
