"""Retry timing on trio's MockClock: the service is an in-process httpx handler, so the
clock can jump through every wait without real sockets timing out."""

from __future__ import annotations

import random
from collections.abc import Callable
from email.utils import formatdate

import httpx
import pytest
import trio
import trio.testing

from stowfs import errors
from stowfs.remote.transport import OutcomeUnknown, RetryPolicy, Transport

Handler = Callable[[httpx.Request], httpx.Response]
EPOCH = 1_800_000_000.0  # the fake wall clock at MockClock time 0


def _transport(handler: Handler, policy: RetryPolicy | None = None) -> Transport:
    return Transport(
        "http://svc.test/v1",
        "stk_transport-test-key-000000",
        policy=policy or RetryPolicy(base_delay=1.0, max_delay=8.0, max_elapsed=120.0),
        wall_clock=lambda: EPOCH + trio.current_time(),
        rng=random.Random(7),
        http_transport=httpx.MockTransport(handler),
    )


class Script:
    """Answers from a list (the last one repeats) and notes when each request came."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(trio.current_time())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def _error(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"error": {"code": "X", "message": "m"}})


OK = httpx.Response(200, json={"ok": True})


async def test_retry_after_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(_error(429, **{"Retry-After": "7"}), _error(429, **{"Retry-After": "7"}), OK)
    response = await _transport(script).request("GET", "x")
    assert response.json() == {"ok": True}
    assert script.gaps == [pytest.approx(7.0), pytest.approx(7.0)]


async def test_retry_after_as_a_date(autojump_clock: trio.testing.MockClock) -> None:
    when = formatdate(EPOCH + 20, usegmt=True)
    script = Script(_error(503, **{"Retry-After": when}), OK)
    await _transport(script).request("GET", "x")
    assert script.gaps == [pytest.approx(20.0, abs=1.0)]


async def test_rate_limit_reset_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    reset = str(int(EPOCH + 12))
    limited = _error(429, **{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    script = Script(limited, OK)
    await _transport(script).request("GET", "x")
    assert script.gaps == [pytest.approx(12.0)]


async def test_exponential_backoff_with_jitter(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(*[_error(502)] * 6, OK)
    await _transport(script).request("GET", "x")
    assert len(script.gaps) == 6
    for attempt, gap in enumerate(script.gaps):
        ceiling = min(8.0, 2.0**attempt)
        assert ceiling / 2 - 1e-9 <= gap <= ceiling + 1e-9
    assert len(set(script.gaps)) > 3  # jittered, not a fixed ladder


async def test_total_time_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, max_elapsed=30.0, max_attempts=100)
    script = Script(_error(503))
    with pytest.raises(errors.Unavailable):
        await _transport(script, policy).request("GET", "x")
    assert trio.current_time() <= 30.0
    assert len(script.times) > 4
    long_wait = Script(_error(429, **{"Retry-After": "3600"}))
    start = trio.current_time()
    with pytest.raises(errors.RateLimited) as limited:
        await _transport(long_wait, policy).request("GET", "x")
    assert limited.value.retry_after == 3600
    assert trio.current_time() == start
    assert len(long_wait.times) == 1


async def test_other_4xx_are_never_retried(autojump_clock: trio.testing.MockClock) -> None:
    for status, kind in [
        (400, errors.InvalidRequest),
        (404, errors.NotFound),
        (409, errors.Conflict),
    ]:
        script = Script(_error(status), OK)
        with pytest.raises(kind):
            await _transport(script).request("GET", "x")
        assert len(script.times) == 1


async def test_unsafe_calls_are_not_repeated_blindly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server may have done it: no repeat, the caller is told to check.
    ambiguous: list[httpx.Response | Exception] = [_error(500), httpx.ReadError("reset")]
    for failure in ambiguous:
        script = Script(failure, OK)
        with pytest.raises(OutcomeUnknown):
            await _transport(script).request("POST", "x", json={})
        assert len(script.times) == 1
    # Refused (503, 429) or never sent (connect error): safe to repeat.
    refusals: list[httpx.Response | Exception] = [_error(503), _error(429), httpx.ConnectError("x")]
    for failure in refusals:
        script = Script(failure, OK)
        await _transport(script).request("POST", "x", json={})
        assert len(script.times) == 2
    # Idempotent calls are repeated after any of these.
    script = Script(httpx.ReadError("reset"), _error(500), OK)
    await _transport(script).request("GET", "x")
    assert len(script.times) == 3


async def test_accept_on_retry_only_after_an_ambiguous_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script(httpx.ReadError("reset"), _error(404))
    response = await _transport(script).request("DELETE", "x", accept_on_retry=frozenset({404}))
    assert response.status_code == 404
    first = Script(_error(404))
    with pytest.raises(errors.NotFound):
        await _transport(first).request("DELETE", "x", accept_on_retry=frozenset({404}))


async def test_key_goes_only_to_the_api(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return OK

    transport = _transport(handler)
    await transport.request("GET", "files/storage")
    await transport.request("GET", "https://bucket.example/obj?X-Amz-Signature=abc")
    assert seen[0].headers.get("x-api-key") == "stk_transport-test-key-000000"
    assert "x-api-key" not in seen[1].headers
    bearer = Transport(
        "http://svc.test/v1",
        "sk-bearer-key",
        bearer=True,
        http_transport=httpx.MockTransport(handler),
    )
    await bearer.request("GET", "uploads/images")
    assert seen[2].headers.get("authorization") == "Bearer sk-bearer-key"
    assert "x-api-key" not in seen[2].headers


class Silent(httpx.AsyncBaseTransport):
    """A server that accepts every request and never answers: each attempt waits for the
    read timeout it was given, as httpcore does, and notes it."""

    def __init__(self) -> None:
        self.read_timeouts: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        read = request.extensions["timeout"]["read"]
        self.read_timeouts.append(read)
        await trio.sleep(read)
        raise httpx.ReadTimeout("no answer", request=request)


async def test_a_server_that_never_answers_holds_a_call_within_its_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    silent = Silent()
    transport = Transport(
        "http://svc.test/v1",
        "stk_transport-test-key-000000",
        policy=RetryPolicy(base_delay=1.0, max_delay=8.0, max_elapsed=30.0, max_attempts=100),
        rng=random.Random(7),
        http_transport=silent,
    )
    with pytest.raises(errors.Unavailable):
        await transport.request("GET", "x")
    assert trio.current_time() <= 31.0  # not the two minutes of the read timeout
    assert silent.read_timeouts[0] == 30.0
    with pytest.raises(OutcomeUnknown):  # it may have been done: not repeated blindly
        await transport.request("POST", "x", json={})
    silent.read_timeouts.clear()
    with pytest.raises(OutcomeUnknown):  # joining a big upload's parts: the wait is its own
        await transport.request("POST", "x", json={}, slow=True)
    assert silent.read_timeouts == [transport.client.timeout.read]
    assert silent.read_timeouts[0] > 30.0  # two minutes, not the budget


async def test_a_refused_key_is_read_again_from_its_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A key rotated in its file is taken up on the first 401; a source holding the same
    key leaves the 401 as it is."""
    source = {"key": "stk_old-key-0000000000"}
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-api-key"))
        ok = request.headers.get("x-api-key") == "stk_new-key-0000000000"
        return OK if ok or "://bucket" in str(request.url) else _error(401)

    def reload() -> str:
        return source["key"]

    transport = Transport(
        "http://svc.test/v1",
        source["key"],
        reload_key=reload,
        http_transport=httpx.MockTransport(handler),
    )
    with pytest.raises(errors.AuthFailed):
        await transport.request("GET", "files/storage")  # the source has nothing new
    source["key"] = "stk_new-key-0000000000"
    await transport.request("POST", "files/upload-url", json={})  # not idempotent: still fine
    await transport.request("GET", "files/storage")
    assert seen == [
        "stk_old-key-0000000000",
        "stk_old-key-0000000000",
        "stk_new-key-0000000000",
        "stk_new-key-0000000000",
    ]
    await transport.aclose()
