"""Where stowfs keeps things: the XDG directories (platformdirs honours XDG_*_HOME)."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_config_path, user_data_path

APP = "stowfs"


def data_dir() -> Path:
    return user_data_path(APP, appauthor=False)


def config_dir() -> Path:
    return user_config_path(APP, appauthor=False)


def local_server_dir() -> Path:
    """The embedded default's data directory."""
    return data_dir() / "local"
