"""HTTP for every dialect: one httpx.AsyncClient per remote, auth, retries, error mapping.

Retry rules (protocol.md 1, seed 003): 429, 5xx and connection failures are retried
with exponential backoff and jitter, honouring Retry-After / X-RateLimit-Reset, within a
total time budget. Other 4xx are never retried. A request that may have been processed
(a body went out and the answer was lost) is repeated only if it is idempotent;
otherwise the caller gets OutcomeUnknown and checks the state itself.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import trio

from .. import errors
from .errormap import error_for
from .redact import install_log_filter, redact, redact_url, register_secret

log = logging.getLogger("stowfs.remote")

Body = bytes | Callable[[], AsyncIterable[bytes]] | None

# Failures where the request certainly never reached the server: always safe to repeat.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Statuses where the server refused the request without doing it.
_REFUSED = frozenset({429, 503})
# The least wait for a connection or an answer granted to an attempt near the budget's end.
_MIN_WAIT = 1.0


# httpcore reads a response body 64 KiB at a time, which holds a download at about half
# of what curl gets on a fast link; 1 MiB reads close the gap. (A class constant of
# httpcore's HTTP/1.1 connection; left alone if a release renames it.)
_READ_SIZE = 1024 * 1024
if getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", _READ_SIZE) < _READ_SIZE:
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = _READ_SIZE


class OutcomeUnknown(errors.Unavailable):
    """A non-idempotent request may or may not have taken effect; check the state."""


@dataclass(frozen=True)
class RetryPolicy:
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_elapsed: float = 120.0  # budget for one call, waits included
    max_attempts: int = 12
    jitter: float = 0.5  # each wait is drawn from [(1 - jitter) * d, d]

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The wait before retry number `attempt` (0-based), without server hints."""
        delay = min(self.max_delay, self.base_delay * 2.0**attempt)
        return delay * (1.0 - self.jitter * rng.random())


def server_hint(headers: httpx.Headers, wall: float) -> float | None:
    """Seconds the server asks us to wait (Retry-After, else X-RateLimit-Reset)."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        if value.replace(".", "", 1).isdigit():
            return float(value)
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - wall)
        except (TypeError, ValueError):
            pass
    reset = headers.get("x-ratelimit-reset")
    remaining = headers.get("x-ratelimit-remaining")
    if reset and reset.strip().isdigit() and remaining in (None, "0"):
        return max(0.0, float(reset) - wall)
    return None


def document(response: httpx.Response) -> dict[str, Any]:
    """The JSON object a response carries; ProtocolError for anything else."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        what = describe(response.request.method, str(response.request.url))
        raise errors.ProtocolError(
            f"{what}: the answer is not a JSON object (wrong URL or dialect?)",
            status=response.status_code,
        )
    return doc


def describe(method: str, url: str) -> str:
    """`METHOD /path` for messages: never a query string, so never a signature."""
    return redact(f"{method} {urlsplit(url).path or url}")


class Transport:
    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        policy: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
        bearer: bool = False,
        max_connections: int = 32,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        reload_key: Callable[[], str] | None = None,
    ) -> None:
        install_log_filter()
        self.base_url = base_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self._bearer = bearer
        self._use_key(key)
        # Where the key came from, read again when the server refuses it: a key rotated in
        # its file is taken up by a running mount.
        self._reload_key = reload_key
        self.client = httpx.AsyncClient(
            timeout=timeout or httpx.Timeout(30.0, read=120.0),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=60.0,
            ),
            follow_redirects=False,
            transport=http_transport,
        )

    def _use_key(self, key: str) -> None:
        register_secret(key)
        self._key = key
        # Seed 000 sends X-API-Key; seeds 001/002 (presign, images) a Bearer token.
        self._auth = {"Authorization": f"Bearer {key}"} if self._bearer else {"X-API-Key": key}

    async def _key_changed(self) -> bool:
        """Whether the key's source now holds another key (then in use)."""
        if self._reload_key is None:
            return False
        try:
            key = await trio.to_thread.run_sync(self._reload_key)
        except (errors.StowfsError, OSError) as exc:
            log.info("the API key could not be read again: %s", exc)
            return False
        if key == self._key:
            return False
        self._use_key(key)
        log.warning("the server refused the API key, and its source holds a new one: using it")
        return True

    def url(self, path: str) -> str:
        return path if "://" in path else f"{self.base_url}/{path.lstrip('/')}"

    async def aclose(self) -> None:
        await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        accept: frozenset[int] = frozenset(),
        accept_on_retry: frozenset[int] = frozenset(),
        slow: bool = False,
    ) -> httpx.Response:
        """One call with retries; returns a 2xx response (or one in `accept`), else raises.

        `accept_on_retry`: statuses that mean success when an earlier attempt may have
        been processed (412 after a lost answer to an If-None-Match PUT, 404 after a lost
        answer to a DELETE); the caller sees the status and confirms the state.
        `slow`: the server works a while before it answers (it joins and hashes a big
        upload's parts): the wait for the answer is not cut to the retry budget."""
        async with self._send(
            method, path, params, json, body, headers, idempotent, accept, accept_on_retry, slow
        ) as response:
            return response

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """`request` for the API's JSON answers."""
        return document(await self.request(method, path, **kw))

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A response whose body is read by the caller; 403 and 416 are handed back, not
        raised, so the download path can renew its URL or stop at EOF."""
        async with self._send(
            method,
            url,
            None,
            None,
            None,
            headers,
            True,
            frozenset({403, 416}),
            frozenset(),
            False,
            streamed=True,
        ) as response:
            yield response

    @asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        body: Body,
        headers: Mapping[str, str] | None,
        idempotent: bool | None,
        accept: frozenset[int],
        accept_on_retry: frozenset[int],
        slow: bool,
        *,
        streamed: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """Send with retries. Unless `streamed` (the caller reads the body, and resumes
        it), the body is read here: a connection broken in the middle of it is one broken
        before the answer, retried where that is safe."""
        url = self.url(path)
        what = describe(method, url)
        safe = idempotent if idempotent is not None else method in ("GET", "HEAD", "PUT", "DELETE")
        api = "://" not in path  # the key goes only to the API, never to a signed URL's host
        all_headers = dict(headers or {})
        start = trio.current_time()
        maybe_done = False  # an earlier attempt may have been processed
        attempt = 0
        rekeyed = False
        while True:
            if api:
                all_headers.update(self._auth)
            request = self.client.build_request(
                method,
                url,
                params=params,
                json=json,
                content=_content(body),
                headers=all_headers,
                timeout=self._timeout(
                    self.policy.max_elapsed - (trio.current_time() - start), slow
                ),
            )
            failure: errors.RemoteError
            hint: float | None = None
            try:
                response = await self.client.send(request, stream=streamed)
            except _NOT_SENT as exc:
                failure = errors.Unavailable(f"{what}: cannot connect ({type(exc).__name__})")
            except httpx.TransportError as exc:
                failure = errors.Unavailable(f"{what}: connection failed ({type(exc).__name__})")
                if not safe:
                    raise OutcomeUnknown(
                        f"{what}: the connection broke before the answer "
                        f"({type(exc).__name__}); the outcome is unknown"
                    ) from None
                maybe_done = True
            else:
                status = response.status_code
                log.debug("%s %s -> %d", method, redact_url(url), status)
                ok = status < 300 or status in accept or (maybe_done and status in accept_on_retry)
                if ok:
                    try:
                        yield response
                    finally:
                        await response.aclose()
                    return
                content = await _read_error(response)
                hint = server_hint(response.headers, self.wall_clock())
                failure = error_for(status, content, what, retry_after=hint)
                if status == 401 and api and not rekeyed and await self._key_changed():
                    rekeyed = True  # refused without being done: the same request again
                    continue
                if status != 429 and status < 500:
                    raise failure
                if status not in _REFUSED:
                    if not safe:
                        raise OutcomeUnknown(
                            f"{failure.message}; the outcome is unknown", status=status
                        )
                    maybe_done = True
            wait = self.policy.backoff(attempt, self.rng)
            if hint is not None:
                wait = max(wait, hint)
            attempt += 1
            elapsed = trio.current_time() - start
            if attempt >= self.policy.max_attempts or elapsed + wait > self.policy.max_elapsed:
                log.info("giving up after %d attempts: %s", attempt, failure)
                raise failure
            log.info("%s; retry %d in %.1f s", failure, attempt, wait)
            await trio.sleep(wait)

    def _timeout(self, left: float, slow: bool) -> httpx.Timeout:
        """The client's timeouts, those for a connection and (unless `slow`) for an
        answer cut to what is left of the call's budget: a server that accepts and never
        answers holds a call no longer than failing ones would (the read timeout alone is
        two minutes)."""
        base = self.client.timeout
        cap = max(left, _MIN_WAIT)

        def cut(seconds: float | None) -> float:
            return cap if seconds is None else min(seconds, cap)

        read = base.read if slow else cut(base.read)
        return httpx.Timeout(connect=cut(base.connect), read=read, write=base.write, pool=base.pool)


def _content(body: Body) -> bytes | AsyncIterable[bytes] | None:
    """A fresh body for each attempt (an async iterator can be consumed only once)."""
    if body is None or isinstance(body, bytes):
        return body
    return body()


async def _read_error(response: httpx.Response) -> bytes:
    try:
        return await response.aread()
    except httpx.TransportError:
        return b""
    finally:
        await response.aclose()
