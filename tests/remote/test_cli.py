"""`stowfs remote ...` as a user runs it (subprocesses, XDG_CONFIG_HOME in tmp), and the
key sources of config.RemoteSpec."""

from __future__ import annotations

import os
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from stowfs import config
from stowfs.errors import ConfigError
from tests.livesrv import LiveServer, stowfs_cmd


class Cli:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            stowfs_cmd("remote", *args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert done.returncode == 0, done.stderr
        return done


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    return Cli(tmp_path, env)


def _one_error_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("stowfs: ")
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_add_list_test_remove(cli: Cli, live_server: LiveServer, shared_key: str) -> None:
    cli.env["MY_STOW_KEY"] = shared_key
    cli("add", "main", "--url", live_server.base_url, "--key-env", "MY_STOW_KEY")
    stored = (cli.home / "config" / "stowfs" / "remotes.toml").read_text()
    assert shared_key not in stored
    assert tomllib.loads(stored)["remotes"]["main"]["key_env"] == "MY_STOW_KEY"
    listing = cli("list").stdout
    assert "main" in listing
    assert "env:MY_STOW_KEY" in listing
    assert "local" in listing
    out = cli("test", "main").stdout
    assert "OK" in out
    assert "usage:" in out
    assert "server_move" in out
    assert shared_key not in out
    _one_error_line(
        cli("add", "main", "--url", "http://x/v1", "--key-env", "K", ok=False), "exists"
    )
    cli("remove", "main")
    assert "main" not in cli("list").stdout
    _one_error_line(cli("test", "main", ok=False), "no remote named 'main'")


def test_local_is_reserved(cli: Cli) -> None:
    done = cli("add", "local", "--url", "http://x/v1", "--key-env", "K", ok=False)
    _one_error_line(done, "reserved")


def test_key_file_must_be_private(cli: Cli, live_server: LiveServer, shared_key: str) -> None:
    key_file = cli.home / "key"
    key_file.write_text(shared_key + "\n")
    key_file.chmod(0o644)
    cli("add", "filed", "--url", live_server.base_url, "--key-file", str(key_file))
    _one_error_line(cli("test", "filed", ok=False), "readable by others", "chmod 600")
    key_file.chmod(0o600)
    assert "OK" in cli("test", "filed").stdout


def test_each_dialect_tests_ok(cli: Cli, live_server: LiveServer, shared_key: str) -> None:
    cli.env["K"] = shared_key
    for dialect in ("presign", "images"):
        cli("add", dialect, "--url", live_server.base_url, "--key-env", "K", "--dialect", dialect)
        out = cli("test", dialect).stdout
        assert f"OK ({dialect} dialect" in out


def test_bad_key_unreachable_and_wrong_dialect(cli: Cli, live_server: LiveServer) -> None:
    cli.env["BAD"] = "stk_wrong-key-0123456789abcdef"
    cli("add", "bad", "--url", live_server.base_url, "--key-env", "BAD")
    done = cli("test", "bad", ok=False)
    _one_error_line(done, "invalid API key")
    assert "stk_wrong-key-0123456789abcdef" not in done.stderr + done.stdout

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli("add", "gone", "--url", f"http://127.0.0.1:{port}/v1", "--key-env", "BAD")
    _one_error_line(cli("test", "gone", "--timeout", "2", ok=False), "cannot reach")

    # The server root is not an API base: no capabilities, no storage endpoints.
    root = live_server.base_url.removesuffix("/v1")
    cli("add", "wrong", "--url", root, "--key-env", "BAD")
    _one_error_line(cli("test", "wrong", ok=False), "dialect")

    cli("add", "nokey", "--url", live_server.base_url, "--key-env", "UNSET_VAR_XYZ")
    _one_error_line(cli("test", "nokey", ok=False), "UNSET_VAR_XYZ is not set")


def test_spec_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "stow-key").write_text("stk_from-credential\n")
    spec = config.RemoteSpec("c", "https://h/v1", credential="stow-key")
    assert spec.load_key() == "stk_from-credential"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        spec.load_key()
    with pytest.raises(ConfigError, match="exactly one"):
        config.RemoteSpec("x", "https://h/v1", key_env="A", credential="b")
    with pytest.raises(ConfigError, match="dialect"):
        config.RemoteSpec("x", "https://h/v1", dialect="ftp", key_env="A")
    with pytest.raises(ConfigError, match="invalid remote name"):
        config.RemoteSpec("a b", "https://h/v1", key_env="A")
    with pytest.raises(ConfigError, match="does not exist"):
        config.RemoteSpec("f", "https://h/v1", key_file=tmp_path / "nope").load_key()


def test_config_file_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    spec = config.RemoteSpec("r1", "https://h/v1", "presign", key_file=tmp_path / "k")
    config.add_remote(spec)
    assert config.config_file().is_relative_to(tmp_path)
    assert config.load_remotes() == {"r1": spec}
    assert config.get_remote("r1") == spec
    config.config_file().write_text(
        "[remotes.r1]\nurl = 'https://h'\nkey_env = 'K'\npassword = 1\n"
    )
    with pytest.raises(ConfigError, match="unknown keys: password"):
        config.load_remotes()
