"""Per-key fixed-window rate limiting with the X-RateLimit-* headers of seed 003."""

from __future__ import annotations

import json
import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import extract_key, hash_key
from .config import RateLimit
from .errors import error_body


class RateLimiter:
    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, key: str, now: float) -> tuple[bool, int, float]:
        """Count one request; returns (allowed, remaining, window reset as unix time)."""
        size = self.limit.window_seconds
        start = math.floor(now / size) * size
        window, count = self._windows.get(key, (start, 0))
        if window != start:
            count = 0
            if len(self._windows) > 100_000:
                self._windows.clear()
        count += 1
        self._windows[key] = (start, count)
        remaining = max(0, self.limit.requests - count)
        return count <= self.limit.requests, remaining, start + size


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = extract_key(headers.get("x-api-key"), headers.get("authorization"))
        if key is None:
            await self.app(scope, receive, send)
            return
        now = time.time()
        allowed, remaining, reset = self.limiter.hit(hash_key(key), now)
        extra = [
            (b"x-ratelimit-limit", str(self.limiter.limit.requests).encode()),
            (b"x-ratelimit-remaining", str(remaining).encode()),
            (b"x-ratelimit-reset", str(math.ceil(reset)).encode()),
        ]
        if not allowed:
            retry = max(1, math.ceil(reset - now))
            body = json.dumps(
                error_body(
                    "RATE_LIMITED", f"rate limit exceeded; retry in {retry} s", retry_after=retry
                )
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(retry).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
