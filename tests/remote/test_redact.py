"""No API key and no URL signature in any log line or exception text."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from stowfs import errors
from stowfs.remote.redact import redact, redact_url
from tests.livesrv import LiveServer
from tests.remote.conftest import Open
from tests.remote.faultproxy import FaultProxy

MakeFile = Callable[..., Path]


def test_redact_url_masks_signatures_only() -> None:
    url = (
        "https://b.s3.example/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&"
        "X-Amz-Signature=deadbeef&X-Amz-Security-Token=tok&X-Stowfs-Expires=17&"
        "X-Stowfs-Signature=cafe&Signature=abc&policy=eyJ4&object_key=a%2Fb"
    )
    query = parse_qs(urlsplit(redact_url(url)).query)
    for name in ("X-Amz-Credential", "X-Amz-Signature", "X-Amz-Security-Token"):
        assert query[name] == ["***"]
    assert query["X-Stowfs-Signature"] == query["Signature"] == query["policy"] == ["***"]
    assert query["X-Stowfs-Expires"] == ["17"]
    assert query["object_key"] == ["a/b"]


def test_redact_text() -> None:
    text = (
        "GET /dl/x?X-Stowfs-Signature=0123abcd&X-Stowfs-Expires=5 "
        "Authorization: Bearer sk-live-abcdefghijklmnop X-API-Key: stk_AAAAbbbbCCCCdddd1234"
    )
    clean = redact(text)
    for secret in ("0123abcd", "sk-live-abcdefghijklmnop", "stk_AAAAbbbbCCCCdddd1234"):
        assert secret not in clean
    assert "X-Stowfs-Expires=5" in clean


async def test_no_secret_in_logs_or_errors(
    open_client: Open,
    live_server: LiveServer,
    proxy: FaultProxy,
    folder: str,
    make_file: MakeFile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = live_server.new_key()
    client = await open_client(url=proxy.base_url(), key=key)
    presign = await open_client("presign", url=proxy.base_url(), key=key)
    source = make_file(50_000)
    failures: list[Exception] = []

    # Faults make the client log retries and resumes with URLs in hand.
    proxy.add("respond", "/v1/upload", status=503)
    proxy.add("cut_body", "/dl/", after_bytes=1000)
    proxy.add("tamper", "/dl/")
    file = await client.upload(source, folder, "s.bin")
    assert await client.read(file, 0, file.size) == source.read_bytes()
    await presign.upload(source, folder, "p.bin")
    proxy.add("tamper", "/dl/", times=2)
    proxy.add("respond", "/v1/put/", status=403, times=5)
    for action in (
        client.read(file, 0, 10),
        presign.upload(source, folder, "q.bin"),
        (await open_client(key=key + "x")).verify(),
    ):
        try:
            await action
        except errors.StowfsError as exc:
            failures.append(exc)
    assert [type(e) for e in failures] == [errors.Forbidden, errors.Forbidden, errors.AuthFailed]

    signatures = {
        value
        for seen in proxy.seen
        for name, values in parse_qs(urlsplit(seen.target).query).items()
        if "signature" in name.lower()
        for value in values
    }
    assert file.url
    assert signatures
    shown = caplog.text + "\n".join(str(e) + repr(e) for e in failures) + repr(file)
    assert "/dl/" in caplog.text  # the URLs were logged, masked
    assert key not in shown
    for signature in signatures:
        assert signature not in shown
    assert not re.search(r"Signature=[0-9a-f]{6}", shown)
