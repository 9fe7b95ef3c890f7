"""Measure stowfs side by side with the physical limits and with rclone mount, on 127.0.0.1.

    .venv/bin/python -m tests.benchmarks [--quick] [--runs N] [--no-profile]

Sets up its own reference server, nginx, rclone serve webdav and the mounts, runs every
measure `--runs` times (alternating the sides), profiles the stowfs mount in one extra
round, stops everything it started, and writes tests/benchmarks/RESULTS.md, its charts
and results/bench.json. `--report-only` renders RESULTS.md again from that JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import trio

from stowfs.remote import HttpRemote, open_remote
from tests.benchmarks import report, workloads
from tests.benchmarks.bench_server import NGINX, bench_search, bench_upload_urls, nginx
from tests.benchmarks.limits import Record, disk, null_fs, page_fill, transfers
from tests.benchmarks.peers import (
    RCLONE,
    STOWFS_OPT_IN,
    FsTarget,
    RcloneTarget,
    StowfsTarget,
    children,
    peak_rss_mb,
    rclone_serve,
    rclone_version,
)
from tests.benchmarks.spy import PY_SPY, Profiled
from tests.benchmarks.stage import FULL, QUICK, Plan, Stage, populate
from tests.livesrv import LiveServer, start_server


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def fs_recorder(results: report.Results, round_: int, system: str) -> workloads.Record:
    def record(measure: str, value: float) -> None:
        results.add(round_, measure, system, value)

    return record


def guarded(results: report.Results, what: str, fn: Callable[[], None]) -> None:
    """Run one part; a failure is reported in RESULTS.md and the rest goes on."""
    try:
        fn()
    except Exception as exc:
        traceback.print_exc()
        results.failures.append(f"{what}: {exc!r}")


def limits_round(stage: Stage, server: LiveServer, nginx_url: str, work: Path, rec: Record) -> None:
    page_fill(stage.layout.big_size, rec)
    disk(stage.layout.source_big, rec)
    null_fs(stage.layout, work, rec)

    async def run() -> None:
        client = await open_remote(server.base_url, stage.keys["fs"])
        assert isinstance(client, HttpRemote)
        try:
            file = await client.stat(stage.big_key)
            await transfers(client, file, stage.layout.source_big, nginx_url, work, rec)
        finally:
            await client.aclose()

    trio.run(run)
    urls = trio.run(bench_upload_urls, server.base_url, stage.keys["upload"])
    rec("upload_url", "server", urls["requests_per_s"])
    searches = trio.run(bench_search, server.base_url, stage.keys["search"])
    rec("search_p95", "server", searches["p95_ms"])


def run_all(
    plan: Plan, work: Path, stack: ExitStack, results: report.Results, profile: bool
) -> None:
    log(f"populating {work}")
    stage = populate(work, plan)
    server = start_server(stage.data)
    stack.callback(server.stop)
    nginx_url = stack.enter_context(nginx(stage.www, work / "nginx"))
    nginx_pid = int((work / "nginx" / "nginx.pid").read_text())
    webdav_url, serve_pid = stack.enter_context(rclone_serve(stage.peer, work))
    targets: list[FsTarget] = [
        StowfsTarget(work / "stowfs", server.base_url, stage.keys["fs"]),
        RcloneTarget(work / "rclone", webdav_url, stage.peer),
    ]
    opt_in = StowfsTarget(
        work / "stowfs-opt-in", server.base_url, stage.keys["fs"], report.OPT_IN, STOWFS_OPT_IN
    )
    for r in range(plan.runs):
        log(f"round {r + 1}/{plan.runs}: limits and server")
        limits = partial(limits_round, stage, server, nginx_url, work, partial(results.add, r))
        guarded(results, f"round {r + 1}, limits", limits)
        for target in targets if r % 2 == 0 else targets[::-1]:
            log(f"round {r + 1}/{plan.runs}: {target.name}")
            rec = fs_recorder(results, r, target.name)
            fs = partial(workloads.run_target, target, stage.layout, rec, r)
            guarded(results, f"round {r + 1}, {target.name}", fs)
        log(f"round {r + 1}/{plan.runs}: {opt_in.name}")
        rec = fs_recorder(results, r, opt_in.name)
        fs = partial(workloads.run_opt_in, opt_in, stage.layout, rec)
        guarded(results, f"round {r + 1}, {opt_in.name}", fs)

    pids = {
        "reference server": [server.proc.pid],
        "nginx": [nginx_pid, *children(nginx_pid)],
        "rclone serve webdav": [serve_pid],
    }
    for name, group in pids.items():
        results.add(0, "rss", name, max(peak_rss_mb(pid) for pid in group))
    for target in targets:
        peaks = results.values("rss_mount", target.name).values()
        if peaks:
            results.add(0, "rss", f"{target.name} mount", max(peaks))

    if profile:
        log("profiling the stowfs mount (one more round, not recorded)")
        profiled = Profiled(targets[0], work / "spy")
        guarded(
            results,
            "profiled round",
            partial(workloads.run_target, profiled, stage.layout, lambda m, v: None, plan.runs),
        )
        results.profiles = profiled.summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--runs", type=int, default=None, help="runs of every measure")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy round")
    parser.add_argument("--report-only", action="store_true", help="re-render from JSON")
    args = parser.parse_args()
    if args.report_only:
        report.write(report.Results.load())
        return
    missing = [str(p) for p in (RCLONE, PY_SPY, Path(NGINX)) if not p.exists()]
    if missing:
        sys.exit(
            f"missing {', '.join(missing)}: apt-get install nginx;"
            " .venv/bin/pip install -e '.[test,bench]'"
        )
    plan = QUICK if args.quick else FULL
    if args.runs is not None:
        plan = replace(plan, runs=args.runs)
    results = report.Results(
        meta={
            "command": " ".join(["python -m tests.benchmarks", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
            "rclone": rclone_version(),
            "runs": plan.runs,
            "sizes": asdict(plan),
        }
    )
    work = Path(tempfile.mkdtemp(prefix="stowfs-bench-"))
    work.chmod(0o755)  # nginx's workers drop root and must read what it serves
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            run_all(plan, work, stack, results, profile=not args.no_profile)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.meta["minutes"] = round((time.monotonic() - started) / 60, 1)
    results.save()
    report.write(results)
    log(f"wrote {report.RESULTS_MD}")


if __name__ == "__main__":
    main()
