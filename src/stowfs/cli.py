"""The one `stowfs` command. Errors print one line and exit non-zero, never a traceback."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from . import paths
from .errors import ConfigError, StowfsError
from .logfile import LOG_FORMAT
from .sdnotify import notify
from .tasks import open_nursery

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn stowfs errors and OS errors into one line on stderr and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (StowfsError, OSError) as exc:
            click.echo(f"stowfs: {one_line(exc)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def one_line(exc: Exception) -> str:
    """`path: reason`, as Unix tools say it, for an OS error about a file."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="stowfs", prog_name="stowfs")
def main(verbose: int) -> None:
    """Mount and sync the file storage of AI generation platforms."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format=LOG_FORMAT)


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT (a port from 0 to 65535), got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parse_rate(value: str | None) -> Any:
    from .server.config import RateLimit

    if value is None:
        return None
    count, _, window = value.partition("/")
    try:
        limit = RateLimit(int(count), float(window or 60))
    except ValueError:
        limit = None
    if limit is None or limit.requests < 1 or not 0 < limit.window_seconds < math.inf:
        raise click.BadParameter(f"expected REQUESTS[/SECONDS], both above 0; got {value!r}")
    return limit


DATA_OPTION = click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Server data directory (default: the embedded store's, under the XDG data dir).",
)


@main.command()
@DATA_OPTION
@click.option(
    "--listen",
    default="127.0.0.1:8750",
    show_default=True,
    help="HOST:PORT; port 0 picks a free one.",
)
@click.option(
    "--public-url", default=None, help="Base URL for signed URLs (default: the request's Host)."
)
@click.option("--rate-limit", default=None, help="Per-key limit, REQUESTS/SECONDS (default: off).")
@click.option(
    "--sweep-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds between clean-ups.",
)
@friendly
def serve(
    data: Path | None,
    listen: str,
    public_url: str | None,
    rate_limit: str | None,
    sweep_interval: float,
) -> None:
    """Run the reference storage server; prints its base URL once it accepts connections."""
    from .server.config import ServerConfig
    from .server.serve import bind
    from .server.serve import serve as run_server

    host, port = _parse_listen(listen)
    config = ServerConfig(
        data_dir=(data or paths.local_server_dir()).resolve(),
        public_url=public_url.rstrip("/") if public_url else None,
        rate_limit=_parse_rate(rate_limit),
        sweep_interval=sweep_interval,
    )
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc

    async def run() -> None:
        async with open_nursery() as nursery:  # a failure to start reads as itself
            url = await nursery.start(run_server, config, sock)
            click.echo(url)
            sys.stdout.flush()
            notify(f"READY=1\nSTATUS=serving {url}")

    trio.run(run)


@main.group()
def keys() -> None:
    """API keys of the reference server."""


@keys.command("create")
@DATA_OPTION
@click.option("--team", required=True, help="Team name (created if new).")
@click.option(
    "--plan",
    type=click.Choice(["free", "pro", "business", "enterprise"]),
    default="free",
    show_default=True,
)
@click.option("--user", default=None, help="User id recorded with the key.")
@friendly
def keys_create(data: Path | None, team: str, plan: str, user: str | None) -> None:
    """Create a key for TEAM and print it (and nothing else) on stdout."""
    from .server.auth import create_key
    from .server.db import connect, init_schema, transaction

    root = (data or paths.local_server_dir()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    init_schema(root / "meta.db")
    conn = connect(root / "meta.db")
    try:
        key = transaction(conn, lambda c: create_key(c, team, plan, user))
    finally:
        conn.close()
    click.echo(key)


@keys.command("revoke")
@DATA_OPTION
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="File holding the key to revoke.",
)
@friendly
def keys_revoke(data: Path | None, key_file: Path) -> None:
    """Revoke a key: servers refuse it within seconds (they cache lookups briefly)."""
    from .server.auth import revoke_key
    from .server.db import connect, transaction

    database = (data or paths.local_server_dir()).resolve() / "meta.db"
    if not database.exists():
        raise ConfigError(f"no server data in {database.parent}")
    conn = connect(database)
    try:
        found = transaction(conn, lambda c: revoke_key(c, key_file.read_text().strip()))
    finally:
        conn.close()
    if not found:
        raise ConfigError(f"the key in {key_file} is not a key of this server")


def _register() -> None:
    """Subcommand groups live in their own modules (cli_*.py)."""
    from .cli_mount import COMMANDS as mount_commands
    from .cli_remote import COMMANDS as remote_commands

    for command in (*remote_commands, *mount_commands):
        main.add_command(command)


_register()
