"""py-spy on the stowfs mount, phase by phase: where its time goes when it is slower."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.benchmarks.peers import FsTarget, Mounted, stop
from tests.benchmarks.workloads import CLEAN_UP

PY_SPY = Path(sys.executable).parent / "py-spy"
TOP = 6
SKIP = ("<module> ", "mount (", "run_foreground (", "main (")
RATE = 100  # py-spy record's default samples per second


def is_ours(frame: str) -> bool:
    """A stowfs function that does work: not the entry point nor a decorator's wrapper,
    which are under every sample of the main thread."""
    return "(stowfs/" in frame and not frame.startswith(SKIP) and "wrapper (" not in frame


def summarize(raw: Path, seconds: float) -> dict[str, Any]:
    """Where the samples are: the functions most often on top of the stack (self time),
    stowfs's own functions most often anywhere in it (inclusive), and how many threads
    were on CPU on average over the phase's wall time."""
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        leaves[frames[-1]] += int(count)
        for frame in {f for f in frames if is_ours(f)}:
            ours[frame] += int(count)
    total = sum(leaves.values()) or 1
    return {
        "seconds": seconds,
        "threads_on_cpu": sum(leaves.values()) / RATE / seconds if seconds else 0.0,
        "top": [(name, n / total) for name, n in leaves.most_common(TOP)],
        "ours": [(name, n / total) for name, n in ours.most_common(TOP)],
    }


class Profiled:
    """Wraps a target: each mount is sampled by py-spy while its workloads run."""

    def __init__(self, inner: FsTarget, work: Path) -> None:
        self.inner, self.work = inner, work
        self.name = inner.name
        self.summaries: dict[str, dict[str, Any]] = {}
        work.mkdir()

    @contextmanager
    def mount(self, phase: str, write: bool = False) -> Iterator[Mounted]:
        with self.inner.mount(phase, write) as m:
            if phase == CLEAN_UP:
                yield m
                return
            raw = self.work / f"{len(self.summaries)}.txt"
            spy = subprocess.Popen(
                [PY_SPY, "record", "-p", str(m.pid), "-o", raw, "--format", "raw", "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            start = time.perf_counter()
            try:
                yield m
            finally:
                seconds = time.perf_counter() - start
                spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
                try:
                    spy.wait(60)
                except subprocess.TimeoutExpired:
                    stop(spy)
                if raw.exists():
                    self.summaries[phase] = summarize(raw, seconds)

    def stored(self, folder: str) -> dict[str, int]:
        return self.inner.stored(folder)
