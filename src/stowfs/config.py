"""Configured remotes: `remotes.toml` in the XDG config dir; secrets never in it.

A remote's key comes from an environment variable, a file only its owner can read,
or a systemd credential ($CREDENTIALS_DIRECTORY/<name>). The name `local` is the
embedded default and needs no entry.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from . import paths
from .errors import ConfigError

LOCAL = "local"
DIALECTS = ("storage", "presign", "images")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def config_file() -> Path:
    return paths.config_dir() / "remotes.toml"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid remote name {name!r}: use letters, digits, '.', '_' or '-' (max 64)"
        )
    return name


@dataclass(frozen=True)
class RemoteSpec:
    name: str
    url: str
    dialect: str = "storage"
    key_env: str | None = None
    key_file: Path | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"remote {self.name!r}: the URL must start with http:// or https://")
        if self.dialect not in DIALECTS:
            raise ConfigError(
                f"remote {self.name!r}: unknown dialect {self.dialect!r}"
                f" (choose from {', '.join(DIALECTS)})"
            )
        sources = [s for s in (self.key_env, self.key_file, self.credential) if s]
        if len(sources) != 1:
            raise ConfigError(
                f"remote {self.name!r}: give exactly one of key_env, key_file, credential"
            )

    @property
    def key_source(self) -> str:
        if self.key_env:
            return f"env:{self.key_env}"
        if self.key_file:
            return f"file:{self.key_file}"
        return f"credential:{self.credential}"

    def load_key(self) -> str:
        """The API key, from wherever the spec says; ConfigError with the fix if absent."""
        if self.key_env:
            value = os.environ.get(self.key_env, "").strip()
            if not value:
                raise ConfigError(
                    f"remote {self.name!r}: the environment variable {self.key_env} is not set"
                )
            return value
        if self.key_file:
            return _read_secret_file(self.key_file, self.name)
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"remote {self.name!r}: the key is the systemd credential {self.credential!r},"
                " but CREDENTIALS_DIRECTORY is not set (run it from a unit with LoadCredential=)"
            )
        return _read_secret_file(Path(directory) / str(self.credential), self.name, owner=False)

    def to_toml(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"url": self.url, "dialect": self.dialect}
        if self.key_env:
            entry["key_env"] = self.key_env
        if self.key_file:
            entry["key_file"] = str(self.key_file)
        if self.credential:
            entry["credential"] = self.credential
        return entry

    @classmethod
    def from_toml(cls, name: str, entry: Any) -> RemoteSpec:
        if not isinstance(entry, dict):
            raise ConfigError(f"{config_file()}: [remotes.{name}] must be a table")
        unknown = set(entry) - {"url", "dialect", "key_env", "key_file", "credential"}
        if unknown:
            raise ConfigError(
                f"{config_file()}: [remotes.{name}] has unknown keys: {', '.join(sorted(unknown))}"
            )
        key_file = entry.get("key_file")
        return cls(
            name=name,
            url=str(entry.get("url", "")),
            dialect=str(entry.get("dialect", "storage")),
            key_env=entry.get("key_env"),
            key_file=Path(key_file).expanduser() if key_file else None,
            credential=entry.get("credential"),
        )


def _read_secret_file(path: Path, remote: str, owner: bool = True) -> str:
    """A key file must not be readable by group or others (systemd credentials are
    protected by their directory, so only `owner` files are checked)."""
    try:
        info = path.stat()
        if owner and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"remote {remote!r}: the key file {path} is readable by others"
                f" (mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"remote {remote!r}: the key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"remote {remote!r}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"remote {remote!r}: the key file {path} is empty")
    return value


def load_remotes() -> dict[str, RemoteSpec]:
    path = config_file()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    remotes = doc.get("remotes", {})
    if not isinstance(remotes, dict):
        raise ConfigError(f"{path}: `remotes` must be a table")
    return {name: RemoteSpec.from_toml(name, entry) for name, entry in remotes.items()}


def get_remote(name: str) -> RemoteSpec:
    remotes = load_remotes()
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none configured"
        raise ConfigError(f"no remote named {name!r} ({known}); add one with `stowfs remote add`")
    return remotes[name]


def save_remotes(remotes: dict[str, RemoteSpec]) -> None:
    """Write atomically (temp file + rename); the file holds no secret, but 0600 anyway."""
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"remotes": {name: spec.to_toml() for name, spec in sorted(remotes.items())}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_remote(spec: RemoteSpec, *, replace: bool = False) -> None:
    if spec.name == LOCAL:
        raise ConfigError("the name 'local' is reserved for the embedded default store")
    remotes = load_remotes()
    if spec.name in remotes and not replace:
        raise ConfigError(f"a remote named {spec.name!r} exists; remove it first")
    remotes[spec.name] = spec
    save_remotes(remotes)


def remove_remote(name: str) -> None:
    remotes = load_remotes()
    if name not in remotes:
        raise ConfigError(f"no remote named {name!r}")
    del remotes[name]
    save_remotes(remotes)
