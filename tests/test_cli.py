"""Bad option values: one clear line and exit 2 before anything starts (no mount, no
server, no traceback)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stowfs.cli import main

MOUNT_REFUSED = [
    (["--umask", "8"], "not an octal umask: '8'"),
    (["--umask", "1000"], "not an octal umask: '1000'"),
    (["-o", "umask=999"], "not an octal umask: '999'"),
    (["--write-back", "-1"], "write-back: expected seconds, 0 or more; got -1"),
    (["-o", "write_back=-2"], "write-back: expected seconds, 0 or more; got -2"),
    (["--write-back", "inf"], "write-back: expected seconds, 0 or more; got inf"),
    (["--dir-cache-time", "nan"], "dir-cache-time: expected seconds, 0 or more; got nan"),
    (["--retry-time", "-0.5"], "retry-time: expected seconds, 0 or more; got -0.5"),
    (["--uid", "-3"], "uid: expected an id from 0 to 4294967294"),
    (["-o", "gid=4294967295"], "gid: expected an id from 0 to 4294967294"),
    (["--cache-max-size", "-5G"], "not a size: '-5G'"),
    (["--cache-max-size", "inf"], "not a size: 'inf'"),
]


def assert_refused(argv: list[str], message: str) -> None:
    done = CliRunner().invoke(main, argv)
    assert done.exit_code == 2
    assert message in done.output
    assert "Traceback" not in done.output


@pytest.mark.parametrize(("args", "message"), MOUNT_REFUSED)
def test_bad_mount_option_values(tmp_path: Path, args: list[str], message: str) -> None:
    missing = tmp_path / "missing"  # were the value taken, this would fail at once
    assert_refused(["mount", *args, str(missing)], message)


SERVE_REFUSED = [
    (["--sweep-interval", "0"], "0.0 is not in the range x>0"),
    (["--listen", "127.0.0.1:99999"], "a port from 0 to 65535"),
    (["--rate-limit", "0/60"], "both above 0; got '0/60'"),
    (["--rate-limit", "5/0"], "both above 0; got '5/0'"),
    (["--rate-limit", "-5/10"], "both above 0; got '-5/10'"),
]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("args", "message"), SERVE_REFUSED)
def test_bad_serve_option_values(
    tmp_path: Path, taken_port: int, args: list[str], message: str
) -> None:
    listen = ["--listen", f"127.0.0.1:{taken_port}"]  # were the value taken: fails at once
    assert_refused(["serve", "--data", str(tmp_path), *listen, *args], message)
