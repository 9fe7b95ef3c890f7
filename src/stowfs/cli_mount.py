"""`stowfs mount` / `stowfs unmount`.

`mount` validates what it can, then (unless -f) starts itself again as a background
process and returns once that process reports the mount ready, or prints the one line
it reported and exits non-zero.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import click
import trio
from platformdirs import user_cache_path

from . import config, paths
from .cli import friendly, one_line
from .errors import AuthFailed, ConfigError, Forbidden, StowfsError, Unavailable
from .logfile import log_to
from .mountinfo import mount_on

log = logging.getLogger("stowfs.mount")

SIZES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# mount(8)-style -o options passed through to the kernel as they are
FUSE_PASSTHROUGH = {"noatime", "nodev", "nosuid", "noexec", "default_permissions"}
# Options of mount(8) and fstab, not of the filesystem (and x-*): accepted and left
# alone, as mount.fuse3 does, so an fstab line's options can be given as they are.
MOUNT_ONLY = {"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group"}
MOUNT_ONLY |= {"_netdev", "nofail", "comment"}
OTHER_XATTRS = ("enodata", "enotsup")
READY = "ready"


def parse_size(text: str) -> int:
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in SIZES else ""
    number = value[: len(value) - len(unit)]
    try:
        size = int(float(number) * SIZES[unit])
    except (ValueError, OverflowError):  # (also "nan" and "inf")
        size = -1
    if size < 0:
        raise click.BadParameter(f"not a size: {text!r} (e.g. 512M, 2G)")
    return size


def parse_umask(text: str) -> int:
    try:
        mask = int(text, 8)
    except ValueError:
        mask = -1
    if not 0 <= mask <= 0o777:
        raise click.BadParameter(f"not an octal umask: {text!r} (e.g. 022)")
    return mask


@dataclass(frozen=True)
class Source:
    remote: str  # '' or 'local': the embedded default
    folder: str
    url: str | None
    key_file: Path | None
    dialect: str

    @property
    def embedded(self) -> bool:
        return self.url is None and self.remote in ("", config.LOCAL)

    @property
    def identity(self) -> str:
        """Names the cache dir: the same remote+folder finds its journal again."""
        where = self.url or f"remote:{self.remote or 'local'}"
        return f"{where}|{self.folder}"


@dataclass(frozen=True)
class Settings:
    read_only: bool = False
    write_back: float | None = None
    cache_dir: Path | None = None
    cache_max_size: int = 1024**3
    dir_cache_time: float = 30.0
    allow_other: bool = False
    uid: int = os.getuid()
    gid: int = os.getgid()
    umask: int = 0o022
    retry_time: float = 30.0  # a request's retry budget: how long a FUSE call may wait
    other_xattrs: str = "enodata"


def _choice(item: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise click.BadParameter(f"mount option {item!r}: expected one of {', '.join(choices)}")
    return value


def apply_o(settings: Settings, text: str) -> tuple[Settings, set[str]]:
    """mount(8)-style `-o a,b=c`: our own settings by name, a few kernel flags as is."""
    extra: set[str] = set()
    changes: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name = name.replace("-", "_")
        try:
            if name in ("ro", "read_only"):
                changes["read_only"] = True
            elif name == "rw":
                changes["read_only"] = False
            elif name == "allow_other":
                changes["allow_other"] = True
            elif name in ("uid", "gid"):
                changes[name] = int(value)
            elif name == "umask":
                changes["umask"] = parse_umask(value)
            elif name in ("write_back", "dir_cache_time", "retry_time"):
                changes[name] = float(value)
            elif name == "cache_dir":
                changes["cache_dir"] = Path(value)
            elif name == "cache_max_size":
                changes["cache_max_size"] = parse_size(value)
            elif name == "other_xattrs":
                changes["other_xattrs"] = _choice(item, value, OTHER_XATTRS)
            elif name in FUSE_PASSTHROUGH:
                extra.add(name)
            elif name in MOUNT_ONLY or item.startswith("x-"):
                continue
            else:
                raise click.BadParameter(f"unknown mount option {item!r}")
        except ValueError:
            raise click.BadParameter(f"bad value in mount option {item!r}") from None
    return replace(settings, **changes), extra


def check_settings(settings: Settings) -> Settings:
    """The values no option parser can judge alone (-o and the flags give them)."""
    for name in ("write_back", "dir_cache_time", "retry_time"):
        seconds = getattr(settings, name)
        if seconds is not None and not 0 <= seconds < math.inf:
            option = name.replace("_", "-")
            raise click.BadParameter(f"{option}: expected seconds, 0 or more; got {seconds:g}")
    for name in ("uid", "gid"):
        if not 0 <= getattr(settings, name) < 2**32 - 1:
            raise click.BadParameter(f"{name}: expected an id from 0 to 4294967294")
    return settings


def check_mountpoint(mountpoint: Path) -> None:
    try:
        os.statvfs(mountpoint)  # asks the filesystem: a stat may answer from the kernel's cache
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            _clear_dead_mount(mountpoint)
    if not mountpoint.exists():
        raise ConfigError(f"mountpoint {mountpoint} does not exist")
    if not mountpoint.is_dir():
        raise ConfigError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is busy (already mounted)")


def _clear_dead_mount(mountpoint: Path) -> None:
    """A stowfs mount whose process died (kill -9, a crash) is unmounted, so the next mount
    (a restart by systemd, say) takes its place and resumes its uploads; another
    filesystem's is left to its owner."""
    left = f"mountpoint {mountpoint} is left over from a mount that died"
    entry = mount_on(mountpoint)
    if entry is None or entry.fs_type != "fuse.stowfs":
        raise ConfigError(f"{left}; run: fusermount3 -u {mountpoint}")
    for lazy in ([], ["-z"]):  # -z: a program still in it (a shell's cwd) keeps it busy
        done = subprocess.run(
            ["fusermount3", "-u", *lazy, str(mountpoint)], capture_output=True, text=True
        )
        if done.returncode == 0:
            log.warning("%s: unmounted it", left)
            return
    why = done.stderr.strip().removeprefix("fusermount3: ")
    raise ConfigError(f"{left}, and could not be unmounted: {why}")


def cache_dir_for(source: Source, settings: Settings) -> Path:
    if settings.cache_dir is not None:
        return settings.cache_dir.resolve()
    slug = hashlib.sha1(source.identity.encode()).hexdigest()[:16]
    return user_cache_path("stowfs", appauthor=False) / "mounts" / slug


@contextlib.contextmanager
def cache_lock(cache_dir: Path, mountpoint: Path) -> Iterator[None]:
    """One mount per cache dir: its journal and staging files are that mount's. The lock
    file names the mount that holds it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "lock", "a+") as lock:  # (not "w": the holder's line stays)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another mount"
            raise ConfigError(
                f"cache dir {cache_dir} is used by the mount on {holder} (of the same"
                " storage folder): give this one a --cache-dir of its own"
            ) from None
        lock.truncate(0)
        lock.write(f"{mountpoint}\n")
        lock.flush()
        yield


def read_key(source: Source) -> str:
    if source.key_file is not None:
        key = source.key_file.read_text().strip()
        if not key:
            raise ConfigError(f"the key file {source.key_file} is empty")
        return key
    from_env = os.environ.get("STOWFS_KEY", "").strip()
    if not from_env:
        raise ConfigError("no API key: give --key-file or set STOWFS_KEY")
    return from_env


# -- the mount process ------------------------------------------------------------------
def run_foreground(
    source: Source, settings: Settings, mountpoint: Path, extra: set[str], report: TextIO | None
) -> None:
    """Mount and serve until unmounted. `report` gets READY or the one error line."""
    from .fs.mount import serve_mount
    from .fs.options import MountOptions

    def say(line: str) -> None:
        if report is not None and not report.closed:
            report.write(line + "\n")
            report.close()

    try:
        check_mountpoint(mountpoint)
        cache_dir = cache_dir_for(source, settings)
        options = MountOptions(
            cache_dir=cache_dir,
            folder=source.folder,
            read_only=settings.read_only,
            write_back=settings.write_back,
            cache_max_size=settings.cache_max_size,
            dir_cache_time=settings.dir_cache_time,
            allow_other=settings.allow_other,
            uid=settings.uid,
            gid=settings.gid,
            umask=settings.umask,
            other_xattrs=settings.other_xattrs,
        )
        with cache_lock(cache_dir, mountpoint), _remote_endpoint(source) as endpoint:

            async def main() -> None:
                remote = await _connect(endpoint, settings.retry_time)
                try:
                    also = [endpoint.keeper] if endpoint.keeper is not None else []
                    await serve_mount(remote, options, mountpoint, extra, lambda: say(READY), also)
                finally:
                    with trio.CancelScope(shield=True):
                        await remote.aclose()

            trio.run(main)
    except (StowfsError, OSError) as exc:
        say(f"stowfs: {one_line(exc)}")
        raise
    except RuntimeError as exc:  # pyfuse3.init: the kernel refused the mount
        say(f"stowfs: cannot mount on {mountpoint}: {exc}")
        raise ConfigError(f"cannot mount on {mountpoint}: {exc}") from exc


@dataclass(frozen=True)
class Endpoint:
    url: str
    dialect: str
    read_key: Callable[[], str]  # read again when the server refuses the key (rotated)
    keeper: Callable[[], Awaitable[None]] | None = None  # a task for the mount's nursery


@contextlib.contextmanager
def _remote_endpoint(source: Source) -> Iterator[Endpoint]:
    """From the options, a named remote, or the embedded default, whose keeper starts
    its server again if it exits."""
    if source.url is not None:
        yield Endpoint(source.url, source.dialect, partial(read_key, source))
        return
    if not source.embedded:
        spec = config.get_remote(source.remote)
        yield Endpoint(spec.url, spec.dialect, spec.load_key)
        return
    from .embedded import local_key, start_local_server

    data_dir = paths.local_server_dir()
    key = local_key(data_dir)
    server = start_local_server(data_dir)
    try:
        yield Endpoint(server.url, "storage", lambda: key, server.keep_up)
    finally:
        server.stop()


CHECK_TIME = 5.0  # retry budget of the checks before mounting: fail fast, in one line


async def _connect(endpoint: Endpoint, retry_time: float) -> Any:
    """A Remote for the mount, once a quick probe proved the server and the key."""
    from .remote import RetryPolicy, open_remote

    url = endpoint.url

    async def open_checked(budget: float) -> Any:
        try:
            remote = await open_remote(
                url,
                endpoint.read_key(),
                endpoint.dialect,
                policy=RetryPolicy(max_elapsed=budget),
                reload_key=endpoint.read_key,
            )
        except Unavailable as exc:
            raise Unavailable(f"cannot reach {url}: {exc}") from exc
        try:
            if remote.capabilities.list:
                await remote.list_folders("")
            elif remote.capabilities.usage:
                await remote.usage()
        except (AuthFailed, Forbidden) as exc:
            await remote.aclose()
            raise AuthFailed(f"the server refused the API key: {exc}") from exc
        except BaseException:
            await remote.aclose()
            raise
        return remote

    if retry_time > CHECK_TIME:
        await (await open_checked(CHECK_TIME)).aclose()
    return await open_checked(retry_time)


# -- background mode -------------------------------------------------------------------
def run_background(argv: list[str], log_file: Path, timeout: float = 120.0) -> None:
    """Start `argv` (a foreground mount) detached; return once it reports."""
    read_fd, write_fd = os.pipe()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as logf:
        proc = subprocess.Popen(
            [*argv, "--ready-fd", str(write_fd), "--log-file", str(log_file)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        answer = pipe.readline().strip()  # EOF if the child died without a word
    if answer == READY:
        return
    if not answer:
        code = _wait(proc, timeout)
        answer = f"stowfs: the mount process exited ({code}); see {log_file}"
    raise ConfigError(answer.removeprefix("stowfs: "))


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[REMOTE:FOLDER] MOUNTPOINT")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground.")
@click.option("--url", default=None, help="Base URL of the service (instead of a named remote).")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the API key (or set STOWFS_KEY).",
)
@click.option(
    "--dialect",
    type=click.Choice(["storage", "presign", "images"]),
    default="storage",
    show_default=True,
)
@click.option("--read-only", is_flag=True, default=None)
@click.option("--write-back", type=float, default=None, help="Upload SECONDS after close.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--cache-max-size", default=None, help="Block cache cap, e.g. 2G (default 1G).")
@click.option("--dir-cache-time", type=float, default=None, help="Seconds (default 30).")
@click.option("--allow-other", is_flag=True, default=None)
@click.option(
    "--retry-time", type=float, default=None, help="Seconds a request retries (default 30)."
)
@click.option("--uid", type=int, default=None)
@click.option("--gid", type=int, default=None)
@click.option("--umask", default=None, help="Octal, e.g. 022.")
@click.option(
    "--other-xattrs",
    type=click.Choice(OTHER_XATTRS),
    default=None,
    help="Answer for security.*, system.*, trusted.*: no such attribute (default) or"
    " not supported (ls -l then asks once per mount, not twice per file).",
)
@click.option("-o", "mount_options", multiple=True, help="mount(8)-style options, a,b=c.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.option("--log-file", type=click.Path(path_type=Path), default=None, hidden=True)
@friendly
def mount(
    args: tuple[str, ...],
    foreground: bool,
    url: str | None,
    key_file: Path | None,
    dialect: str,
    read_only: bool | None,
    write_back: float | None,
    cache_dir: Path | None,
    cache_max_size: str | None,
    dir_cache_time: float | None,
    allow_other: bool | None,
    retry_time: float | None,
    uid: int | None,
    gid: int | None,
    umask: str | None,
    other_xattrs: str | None,
    mount_options: tuple[str, ...],
    ready_fd: int | None,
    log_file: Path | None,
) -> None:
    """Mount [REMOTE:FOLDER] on MOUNTPOINT (the embedded local store by default).

    REMOTE is a name from `stowfs remote add` (or empty with --url); `local` is the
    embedded default.
    """
    if len(args) > 2:
        raise click.UsageError("expected [REMOTE:FOLDER] MOUNTPOINT")
    spec = args[0] if len(args) == 2 else ":"
    remote_name, sep, folder = spec.partition(":")
    if not sep:
        raise click.UsageError(f"expected REMOTE:FOLDER, got {spec!r}")
    source = Source(remote_name, folder.strip("/"), url, key_file, dialect)
    mountpoint = Path(args[-1]).absolute()

    settings, extra = Settings(), set[str]()
    for text in mount_options:
        settings, more = apply_o(settings, text)
        extra |= more
    given: dict[str, Any] = {
        "read_only": read_only,
        "write_back": write_back,
        "cache_dir": cache_dir,
        "cache_max_size": parse_size(cache_max_size) if cache_max_size else None,
        "dir_cache_time": dir_cache_time,
        "allow_other": allow_other,
        "retry_time": retry_time,
        "uid": uid,
        "gid": gid,
        "umask": parse_umask(umask) if umask else None,
        "other_xattrs": other_xattrs,
    }
    settings = check_settings(
        replace(settings, **{k: v for k, v in given.items() if v is not None})
    )

    if foreground:
        if log_file is not None:
            log_to(log_file)
        report = os.fdopen(ready_fd, "w") if ready_fd is not None else None
        run_foreground(source, settings, mountpoint, extra, report)
        return
    check_mountpoint(mountpoint)
    if source.url is not None:  # fail here, not in the background
        read_key(source)
    elif not source.embedded:
        config.get_remote(source.remote).load_key()
    argv = [sys.executable, "-m", "stowfs", *sys.argv[1:], "--foreground"]
    run_background(argv, cache_dir_for(source, settings) / "mount.log")


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds to wait for pending uploads.",
)
@friendly
def unmount(mountpoint: Path, timeout: float) -> None:
    """Upload what is pending, then unmount MOUNTPOINT."""
    import pyfuse3

    from .fs.xattrs import PID

    if not os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is not mounted")
    try:
        pid = int(pyfuse3.getxattr(str(mountpoint), PID))
    except (OSError, ValueError):
        pid = None  # not a stowfs mount, or an old one: plain unmount
    done = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        if "busy" in message:  # nothing was uploaded or lost: the mount goes on
            message += f" (a program uses it: see `fuser -vm {mountpoint}`)"
        raise ConfigError(f"cannot unmount {mountpoint}: {message}")
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ConfigError(
                f"unmounted, but uploads are still running (pid {pid}); they stay journaled"
            )
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"  # a zombie has finished its work
    return True


COMMANDS: list[click.Command] = [mount, unmount]
