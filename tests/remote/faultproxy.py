"""A loopback HTTP/1.1 proxy that injects faults, for the client tests.

Each connection carries one request (the proxy asks both sides for `Connection: close`),
so every request is matched against the rules on its own. A rule says what to do to
the next `times` requests whose method and path match:

- respond: answer it here (e.g. 503, 429 with Retry-After), never forward it;
- drop_request: close without forwarding (the server never sees it);
- drop_response: forward it, let the server finish, then close without answering
  (the request took effect but the answer is lost);
- cut_body: forward, then relay only `after_bytes` bytes of the response body;
- delay: forward, answer after `delay` seconds;
- tamper: forward with the URL signature altered (the server answers 403).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import trio

Action = Literal["respond", "drop_request", "drop_response", "cut_body", "delay", "tamper"]
_MAX_HEAD = 64 * 1024


@dataclass
class Rule:
    action: Action
    path: str = ""  # substring of the request path
    method: str | None = None
    times: int = 1
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"error": {"code": "UNAVAILABLE", "message": "injected"}}'
    after_bytes: int = 0
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and (self.method in (None, method)) and self.path in path


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    action: str  # the rule applied, or "forward"


def _split_head(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = data.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _join_head(first: str, headers: list[tuple[str, str]]) -> bytes:
    kept = [(n, v) for n, v in headers if n.lower() not in ("connection", "keep-alive")]
    kept.append(("Connection", "close"))
    return (first + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in kept) + "\r\n").encode("latin-1")


async def _read_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return b"", b""
        buf += chunk
        if len(buf) > _MAX_HEAD:
            raise ValueError("head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


async def _read_exact(stream: trio.SocketStream, have: bytes, size: int) -> bytes:
    parts = [have]
    got = len(have)
    while got < size:
        chunk = await stream.receive_some(min(1 << 20, size - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def _read_response(stream: trio.SocketStream, method: str) -> bytes:
    """One whole response, framed by Content-Length (the server does not always close
    after answering a `Connection: close` request, so EOF cannot mark the end)."""
    head, rest = await _read_head(stream)
    status_line, headers = _split_head(head)
    lower = {n.lower(): v for n, v in headers}
    status = int(status_line.split(" ")[1])
    if method == "HEAD" or status in (204, 304):
        size = 0
    elif "content-length" in lower:
        size = int(lower["content-length"])
    else:
        raise ValueError("responses without Content-Length are not supported")
    return head + b"\r\n\r\n" + await _read_exact(stream, rest, size)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.port = 0

    def add(self, action: Action, path: str = "", **kw: object) -> Rule:
        rule = Rule(action, path, **kw)  # type: ignore[arg-type]
        self.rules.append(rule)
        return rule

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if s.method == method and path in s.target)

    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    def _pick(self, method: str, path: str) -> Rule | None:
        for rule in self.rules:
            if rule.matches(method, path):
                rule.times -= 1
                return rule
        return None

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, ValueError
            ):
                await self._one(client)

    async def _one(self, client: trio.SocketStream) -> None:
        head, rest = await _read_head(client)
        if not head:
            return
        first, headers = _split_head(head)
        method, target, _ = first.split(" ", 2)
        lower = {n.lower(): v for n, v in headers}
        assert "chunked" not in lower.get("transfer-encoding", ""), "chunked bodies unsupported"
        body = await _read_exact(client, rest, int(lower.get("content-length", "0") or 0))
        rule = self._pick(method, target.split("?", 1)[0])
        self.seen.append(Seen(method, target, lower, rule.action if rule else "forward"))
        if rule is not None and rule.action == "respond":
            extra = {"Content-Type": "application/json", **rule.headers}
            extra["Content-Length"] = str(len(rule.body))
            out = _join_head(f"HTTP/1.1 {rule.status} Injected", list(extra.items()))
            await client.send_all(out + rule.body)
            return
        if rule is not None and rule.action == "drop_request":
            return
        if rule is not None and rule.action == "tamper":
            target = re.sub(
                r"(Signature=)([0-9a-f])", lambda m: m.group(1) + "0f"[m.group(2) == "0"], target
            )
            first = f"{method} {target} HTTP/1.1"
        upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        async with upstream:
            await upstream.send_all(_join_head(first, headers) + body)
            response = await _read_response(upstream, method)
        if rule is not None and rule.action == "drop_response":
            return
        if rule is not None and rule.action == "delay":
            await trio.sleep(rule.delay)
        resp_head, _, resp_body = response.partition(b"\r\n\r\n")
        status_line, resp_headers = _split_head(resp_head)
        out = _join_head(status_line, resp_headers)
        if rule is not None and rule.action == "cut_body":
            await client.send_all(out + resp_body[: rule.after_bytes])
            return
        await client.send_all(out + resp_body)


@contextlib.contextmanager
def proxy_in_thread(proxy: FaultProxy) -> Iterator[FaultProxy]:
    """Serve `proxy` from a thread of its own, for tests that drive a mount with blocking
    shell tools; rules may be added from the test meanwhile."""
    ready = threading.Event()
    holder: list[tuple[trio.lowlevel.TrioToken, trio.CancelScope]] = []

    async def serve() -> None:
        with trio.CancelScope() as scope:
            holder.append((trio.lowlevel.current_trio_token(), scope))
            async with trio.open_nursery() as nursery:
                await nursery.start(proxy.serve)
                ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield proxy
    finally:
        token, scope = holder[0]
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(10)
