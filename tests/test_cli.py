"""Bad option values: one clear line and exit 2 before anything starts (no mount, no
server, no traceback)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stowfs.cli import main
from stowfs.cli_mount import Settings, apply_o

REFUSED = [
    ("mount", "--umask 8", "not an octal umask: '8'"),
    ("mount", "--umask 1000", "not an octal umask: '1000'"),
    ("mount", "-o umask=999", "not an octal umask: '999'"),
    ("mount", "--write-back -1", "write-back: expected seconds, 0 or more; got -1"),
    ("mount", "-o write_back=-2", "write-back: expected seconds, 0 or more; got -2"),
    ("mount", "--write-back inf", "write-back: expected seconds, 0 or more; got inf"),
    ("mount", "--dir-cache-time nan", "dir-cache-time: expected seconds, 0 or more; got nan"),
    ("mount", "--retry-time -0.5", "retry-time: expected seconds, 0 or more; got -0.5"),
    ("mount", "--uid -3", "uid: expected an id from 0 to 4294967294"),
    ("mount", "-o gid=4294967295", "gid: expected an id from 0 to 4294967294"),
    ("mount", "--cache-max-size -5G", "not a size: '-5G'"),
    ("mount", "--cache-max-size inf", "not a size: 'inf'"),
    ("serve", "--sweep-interval 0", "0.0 is not in the range x>0"),
    ("serve", "--listen 127.0.0.1:99999", "a port from 0 to 65535"),
    ("serve", "--rate-limit 0/60", "both above 0; got '0/60'"),
    ("serve", "--rate-limit 5/0", "both above 0; got '5/0'"),
    ("serve", "--rate-limit -5/10", "both above 0; got '-5/10'"),
]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("command", "args", "message"), REFUSED)
def test_bad_option_values(
    tmp_path: Path, taken_port: int, command: str, args: str, message: str
) -> None:
    # Were the value taken, each would still fail at once: the mountpoint is missing,
    # the port taken.
    if command == "mount":
        argv = ["mount", *args.split(), str(tmp_path / "missing")]
    else:
        argv = ["serve", "--data", str(tmp_path), "--listen", f"127.0.0.1:{taken_port}"]
        argv += args.split()
    done = CliRunner().invoke(main, argv)
    assert done.exit_code == 2
    assert message in done.output
    assert "Traceback" not in done.output


def test_a_server_that_cannot_start_says_why_in_one_line(tmp_path: Path, taken_port: int) -> None:
    (tmp_path / "a-file").write_text("")
    cases = [
        (["--listen", f"127.0.0.1:{taken_port}"], f"cannot listen on 127.0.0.1:{taken_port}:"),
        (["--data", str(tmp_path / "a-file" / "data")], "a-file/data: Not a directory"),
    ]
    for args, message in cases:
        base = ["serve", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0"]
        done = CliRunner().invoke(main, [*base, *args])  # (the last of a flag given twice)
        assert done.exit_code == 1
        assert message in done.output
        assert "Errno" not in done.output
        assert len(done.output.strip().splitlines()) == 1


def test_keys_revoke(tmp_path: Path) -> None:
    data = ["--data", str(tmp_path / "srv")]
    created = CliRunner().invoke(main, ["keys", "create", *data, "--team", "t"])
    assert created.exit_code == 0
    key_file = tmp_path / "key"
    key_file.write_text(created.output)
    revoke = ["keys", "revoke", *data, "--key-file", str(key_file)]
    assert CliRunner().invoke(main, revoke).exit_code == 0
    again = CliRunner().invoke(main, revoke)
    assert again.exit_code == 1
    assert f"the key in {key_file} is not a key of this server" in again.output
    elsewhere = CliRunner().invoke(main, [*revoke[:2], "--data", str(tmp_path), *revoke[4:]])
    assert elsewhere.exit_code == 1
    assert f"no server data in {tmp_path}" in elsewhere.output


def test_fstab_options_for_mount_itself_are_accepted_and_left_alone() -> None:
    line = "defaults,_netdev,nofail,noauto,user,x-systemd.automount,comment=stowfs,ro,noatime"
    settings, extra = apply_o(Settings(), line)
    assert settings == replace(Settings(), read_only=True)
    assert extra == {"noatime"}
    with pytest.raises(click.BadParameter, match="unknown mount option 'bogus'"):
        apply_o(Settings(), "defaults,bogus")


def test_version() -> None:
    done = CliRunner().invoke(main, ["--version"])
    assert done.exit_code == 0
    assert done.output.startswith("stowfs, version ")
