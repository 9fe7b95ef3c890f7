"""`stowfs remote ...`: configured remotes (add, list, remove, test)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import trio

from . import config
from .cli import friendly
from .errors import ConfigError, Unavailable


@click.group("remote")
def remote() -> None:
    """Storage services to mount or sync (keys stay outside the config file)."""


@remote.command("add")
@click.argument("name")
@click.option("--url", required=True, help="Base URL of the API, e.g. https://host/v1.")
@click.option("--key-env", default=None, help="Environment variable holding the API key.")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the API key (mode 0600).",
)
@click.option("--credential", default=None, help="systemd credential name holding the key.")
@click.option(
    "--dialect",
    type=click.Choice(config.DIALECTS),
    default="storage",
    show_default=True,
    help="Protocol the service speaks.",
)
@friendly
def add(
    name: str,
    url: str,
    key_env: str | None,
    key_file: Path | None,
    credential: str | None,
    dialect: str,
) -> None:
    """Add remote NAME; give exactly one of --key-env, --key-file, --credential."""
    if sum(x is not None for x in (key_env, key_file, credential)) != 1:
        raise ConfigError("give exactly one of --key-env, --key-file or --credential")
    spec = config.RemoteSpec(
        name=config.check_name(name),
        url=url.rstrip("/"),
        dialect=dialect,
        key_env=key_env,
        key_file=key_file.expanduser().resolve() if key_file else None,
        credential=credential,
    )
    config.add_remote(spec)
    click.echo(
        f"added remote {name!r} ({dialect}, {spec.url}); check it with: stowfs remote test {name}"
    )


@remote.command("list")
@friendly
def list_remotes() -> None:
    """Show the configured remotes (and the embedded default)."""
    rows = [(config.LOCAL, "storage", "(embedded default)", "-")]
    rows += [(s.name, s.dialect, s.url, s.key_source) for s in config.load_remotes().values()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + row[3])


@remote.command("remove")
@click.argument("name")
@friendly
def remove(name: str) -> None:
    """Forget remote NAME (nothing on the service is touched)."""
    config.remove_remote(name)
    click.echo(f"removed remote {name!r}")


@remote.command("test")
@click.argument("name")
@click.option("--timeout", default=15.0, show_default=True, help="Seconds to keep retrying.")
@friendly
def test(name: str, timeout: float) -> None:
    """Check NAME's key and dialect; print its capabilities and usage."""
    spec = config.get_remote(name)
    key = spec.load_key()
    trio.run(_test, spec, key, timeout)


async def _test(spec: config.RemoteSpec, key: str, timeout: float) -> None:
    from .remote import RetryPolicy, open_remote

    policy = RetryPolicy(base_delay=0.5, max_elapsed=timeout, max_attempts=4)
    try:
        client = await open_remote(spec.url, key, spec.dialect, policy=policy)
    except Unavailable as exc:
        raise Unavailable(f"cannot reach {spec.url}: {exc.message}") from None
    try:
        await client.verify()
        caps = client.capabilities
        click.echo(f"{spec.name}: OK ({spec.dialect} dialect at {spec.url})")
        can = [f.name for f in dataclasses.fields(caps) if getattr(caps, f.name) is True]
        click.echo(f"  can: {', '.join(can) or 'upload only'}")
        click.echo(
            f"  single upload up to {_size(caps.single_upload_max)}"
            f"; largest file {_size(caps.max_file_size)}"
            f"; URL lifetime {caps.url_lifetime / 3600:g} h"
        )
        if caps.content_types:
            click.echo(f"  content types: {', '.join(sorted(caps.content_types))}")
        if caps.usage:
            use = await client.usage()
            limit = f" of {_size(use.limit_bytes)}" if use.limit_bytes else ""
            files = f" of {use.limit_files}" if use.limit_files else ""
            click.echo(f"  usage: {_size(use.total_bytes)}{limit}, {use.file_count}{files} files")
    finally:
        await client.aclose()


def _size(n: int | None) -> str:
    if n is None:
        return "no limit"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


COMMANDS: list[click.Command] = [remote]
