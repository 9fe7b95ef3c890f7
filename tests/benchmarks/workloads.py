"""The mount workloads, written once and run on any mounted directory: stowfs's and
rclone's. Each fresh mount starts with empty caches (cold); "warm" repeats on it."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks.peers import FsTarget, Mounted, peak_rss_mb, reset_peak_rss
from tests.fs.mountfix import wait_for

Record = Callable[[str, float], None]  # (measure, value) for the target being run
CHUNK = 1024 * 1024
PAGE = 4096
DURABLE_TIMEOUT = 300.0
CLEAN_UP = "clean-up"  # a phase that is not measured


@dataclass(frozen=True)
class Layout:
    """What the server side holds for both targets, and the local files copied in."""

    big: str  # relative path of the 1 GiB file
    big_size: int
    many: str  # the folder of many small files
    many_names: list[str]
    source_big: Path
    source_small: Path  # a folder of small files
    random_reads: int


def seq_read(path: Path) -> tuple[float, float]:
    """(seconds to the first 4 KiB, seconds for the whole file), from open()."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, PAGE)
        first = time.perf_counter() - start
        while os.read(fd, CHUNK):
            pass
    finally:
        os.close(fd)
    return first, time.perf_counter() - start


def random_reads(path: Path, size: int, count: int, seed: int) -> float:
    """Seconds for `count` 4 KiB reads at random aligned offsets, read-ahead off (as a
    database or an image viewer seeking around would ask)."""
    rng = random.Random(seed)
    offsets = [rng.randrange(size // PAGE) * PAGE for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        start = time.perf_counter()
        for offset in offsets:
            os.pread(fd, PAGE, offset)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def timed_run(*cmd: str | Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def stat_all(folder: Path, names: list[str]) -> float:
    start = time.perf_counter()
    for name in names:
        os.stat(folder / name)
    return time.perf_counter() - start


def read_all(folder: Path) -> tuple[int, float]:
    """(files, seconds) to read every file of `folder` (listing included)."""
    start = time.perf_counter()
    count = 0
    for entry in os.scandir(folder):
        with open(entry.path, "rb") as f:
            f.read()
        count += 1
    return count, time.perf_counter() - start


def copy_in(src: Path, dst: Path, durable: Callable[[], bool]) -> float:
    """Seconds from the start of `cp -r` until the server holds every byte.

    The check lists the folder through the API: asked every few milliseconds while
    uploads still run (a mount whose close returns at once), it would take the
    server's time from them, so it is asked less and less often (up to every 0.2 s)."""
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    wait_for(durable, DURABLE_TIMEOUT, f"{dst.name} on the server", max_pause=0.2)
    return time.perf_counter() - start


def fresh(target: FsTarget, phase: str, write: bool = False) -> AbstractContextManager[Mounted]:
    """A fresh mount of `target`, once the kernel has written out what earlier phases left
    dirty (gigabytes of uploads): its writeback would slow whatever runs next."""
    os.sync()
    return target.mount(phase, write)


def run_target(target: FsTarget, layout: Layout, record: Record, seed: int) -> None:
    """One round of every workload on fresh mounts of `target`."""
    peak = 0.0
    with fresh(target, "sequential read") as m:
        first, whole = seq_read(m.path / layout.big)
        record("ttfb", first * 1000)
        record("seq_read_cold", layout.big_size / whole / 1e6)
        record("seq_read_warm", layout.big_size / seq_read(m.path / layout.big)[1] / 1e6)
        peak = max(peak, peak_rss_mb(m.pid))
    with fresh(target, "random reads") as m:
        seconds = random_reads(m.path / layout.big, layout.big_size, layout.random_reads, seed)
        record("random_4k", layout.random_reads / seconds)
        peak = max(peak, peak_rss_mb(m.pid))
    with fresh(target, "stat") as m:
        record("stat_many", stat_all(m.path / layout.many, layout.many_names))
        peak = max(peak, peak_rss_mb(m.pid))
    peak = max(peak, ls_phase(target, layout, record))
    with fresh(target, "cp big file in", write=True) as m:
        (m.path / "in").mkdir()
        reset_peak_rss(m.pid)
        big = {layout.source_big.name: layout.big_size}
        seconds = copy_in(layout.source_big, m.path / "in", lambda: target.stored("in") == big)
        record("cp_in", layout.big_size / seconds / 1e6)
        record("rss_cp", peak_rss_mb(m.pid))
        peak = max(peak, peak_rss_mb(m.pid))
    peak = max(peak, small_in_phase(target, layout, record))
    with fresh(target, "small files out") as m:
        count, seconds = read_all(m.path / "in" / layout.source_small.name)
        assert count == len(small_sources(layout)), count
        record("small_out", count / seconds)
        peak = max(peak, peak_rss_mb(m.pid))
    record("rss_mount", peak)
    clean_up(target)


def run_opt_in(target: FsTarget, layout: Layout, record: Record) -> None:
    """The workloads stowfs's opt-in modes change, on fresh mounts of `target`."""
    ls_phase(target, layout, record)
    small_in_phase(target, layout, record)
    clean_up(target)


def ls_phase(target: FsTarget, layout: Layout, record: Record) -> float:
    """`ls -l` of the folder of many files, cold then warm; the mount's peak RSS."""
    with fresh(target, "ls -l") as m:
        record("ls_cold", timed_run("ls", "-l", m.path / layout.many))
        record("ls_warm", timed_run("ls", "-l", m.path / layout.many))
        return peak_rss_mb(m.pid)


def small_sources(layout: Layout) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in layout.source_small.iterdir()}


def small_in_phase(target: FsTarget, layout: Layout, record: Record) -> float:
    """cp -r of the small files into in/, until the server holds them; the peak RSS."""
    small = small_sources(layout)
    folder = f"in/{layout.source_small.name}"
    with fresh(target, "small files in", write=True) as m:
        (m.path / "in").mkdir(exist_ok=True)
        seconds = copy_in(
            layout.source_small, m.path / "in", lambda: target.stored(folder) == small
        )
        record("small_in", len(small) / seconds)
        return peak_rss_mb(m.pid)


def clean_up(target: FsTarget) -> None:
    with fresh(target, CLEAN_UP) as m:  # the next round starts from the same state
        shutil.rmtree(m.path / "in")
