"""The figures of a run (kept as JSON) and what is made of them: RESULTS.md with medians,
min/max and pair-by-pair ratios, the targets met or not, and PNG charts."""

from __future__ import annotations

import json
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_JSON = HERE / "results" / "bench.json"
FS_SYSTEMS = ("stowfs", "rclone")
OPT_IN = "stowfs, opt-in"  # with peers.STOWFS_OPT_IN, on the workloads those change
ON_PAR = 0.95  # a ratio this close to 1 is within the noise of a shared machine
# Why stowfs is slower where it is: read from the profiles below and from probes of the
# mount (shown only where a run finds it slower).
WHY: dict[str, str] = {
    "upload": "The client hashes the whole file (MD5, to check the stored object's checksum)"
    " beside sending the parts, on the 2 cores the CPU-bound reference server also needs;"
    " curl sends the same parts and checks nothing. Across the full runs so far the"
    " ratio landed between 0.83 and 1.15.",
    "seq_read_cold": "A read through the mount fills the kernel's page cache with the file (warm"
    " reads then come from memory); curl writes to /dev/null and fills nothing. On this VM the fill"
    " itself varies: the guest reports free memory to its host, which must hand it back before it"
    " is filled. A tmpfs file as big as the read was written at {fill_idle_range} MB/s after {idle}"
    " s idle and at {fill_again_range} MB/s at once again in this run (Physical limits); in probes,"
    " after 6–8 s idle, at 620–680 MB/s four times out of four, and at 3.0–3.3 GB/s at once again."
    " The mount pays the fill in pyfuse3's replies, which hold its one Python thread (pyfuse3 calls"
    " fuse_reply_buf with the GIL held): meanwhile nothing is received. The pyfuse3 null fs, which"
    " fetches nothing and only fills, varies as much ({null_read_range} MB/s across the rounds of"
    " this run). Into memory just freed (probes: a fresh mount right after another read) the mount"
    " reads at 0.65–0.77 GB/s, about 0.5× curl: every byte is received by Python's HTTP stack and"
    " then handed to the kernel by pyfuse3, in turn on that one thread. This run's two floors in"
    " series (stowfs's client receiving, the null fs replying, the fastest round of each) come to"
    " {series}× curl's median. Round by round this run read {cold_rounds} MB/s. In every full"
    " run so far the mount's second round, which comes right after rclone's workloads, read 1.1"
    " to 4.1 times (mostly over 2) as fast as its first and third, which come right after the"
    " round of limits; in a diagnostic run (2026-12-04) the mount then spent up to 5× the CPU"
    " time on the same read, with no steal time, reclaim or compaction reported: the host"
    " handing memory back shows as the guest's own CPU time. On top come the mount's own"
    " copies: a kernel read is seldom"
    " block-aligned, so most join the ends of two blocks (`Reader.read`'s own time in the profile"
    " below). Ruled out: the kernel's read size (1 MiB, logged per read), block-cache writes and"
    " the kernel's read-ahead (two causes found and fixed on the way: blocks a sequential reader"
    " fetched itself went to the disk cache, and a file opened before the mount raised its"
    " read-ahead kept 128 KiB), other processes, memory pressure. rclone with `--vfs-cache-mode"
    " off` streams the GET to the kernel from Go.",
    "ttfb": "On a fresh mount the first read lists the folders on its path (each folder's"
    " files and subfolders, asked for at once) and then fetches the bytes asked for (not"
    " the whole 1 MiB block) with one signed GET of the Python server; rclone lists"
    " with one PROPFIND per folder from Go and returns its first buffer of the stream.",
    "random_4k": "A random read's first miss in a block fetches only the bytes asked for, a"
    " second miss there the whole 1 MiB block (kept in the on-disk cache): one signed GET"
    " of the Python server each, issued and awaited from Python; rclone opens a ranged GET"
    " at the offset from Go.",
    "ls_cold": "`ls -l` asks every entry for two extended attributes (`security.selinux`,"
    " `system.posix_acl_access`) and the kernel caches no xattr answer for FUSE: two round"
    " trips into Python per file. The pyfuse3 null fs above, which answers them at once,"
    " takes {null_ls} s for a warm `ls -l` of as many entries: that is the floor of any"
    " pyfuse3 + trio filesystem here. rclone mount has no extended attributes: its first"
    " getxattr answers ENOSYS, after which the kernel stops asking (strace shows no"
    " per-file getxattr under rclone); stowfs keeps xattrs, its point. Cold, listing the"
    " folder comes on top: 10 pages of 1,000 records, asked for two at a time once the"
    " first gives the total, so the server builds one while the one before is decoded"
    " (more at once was slower: the server builds one at a time; one at a time, the run"
    " of 2026-12-02 14:19 took 3.07 s cold). GNU ls"
    ' stops asking a device whose answer is "not supported": with `--other-xattrs'
    " enotsup` (opt-in; design.md asks for ENODATA) probes took 0.70–0.76 s cold and"
    " 0.11–0.15 s warm for the same folder.",
    "ls_warm": "The same two getxattr round trips per entry as cold: the kernel keeps the"
    " entries and attributes for `--dir-cache-time`, but no xattr answer; the pyfuse3 null"
    " fs takes {null_ls} s for the same `ls -l`. rclone's kernel asks none after its ENOSYS."
    " With `--other-xattrs enotsup` ls asks once per mount: 0.11–0.15 s in probes.",
    "stat_many": "One LOOKUP per file on a fresh mount, each a round trip into Python (pyfuse3"
    " and trio), after the folder's listing is fetched and decoded in Python.",
    "cp_in": "The upload is bounded by the reference server: Python receives every byte and"
    " hashes it twice (each part's MD5 for its ETag, the whole object's at complete, both"
    " required by the protocol), on the core the mount and cp leave; rclone serve writes"
    " the stream to disk in Go and hashes nothing. The mount streams the parts while cp"
    " writes and hashes the file beside the writes, so close only waits for the last parts"
    " and the complete.",
    "small_in": "Uploads happen on close, one file at a time: two HTTP requests per file"
    " (the upload URL, then the POST, whose answer is the stored record) to the Python"
    " reference server (FastAPI on hypercorn: ~1.9 ms for the upload URL, ~3.7 ms for the"
    " POST, ~1.3 ms for a GET of usage, one at a time). The server is the limit: stowfs's"
    " own client, with no mount and 8 uploads in parallel, reaches ~170 uploads/s against"
    " it (each upload is two write transactions, and one SQLite writer runs them in turn:"
    " ~2.2 ms each under load). With `--write-back 0` (the opt-in column) close returns at"
    " once and 8 uploads run at a time, as rclone's `--vfs-write-back 0s` does: the same"
    " server limit. rclone PUTs to `rclone serve`, which answers in Go.",
    "small_out": "`cp -r` reads the folder in inode order: after two files in that order"
    " the next ones (up to 16, 6 GETs at once) are fetched ahead (sibling prefetch; one"
    " signed GET awaited per file before it, 0.11x rclone in the run of 2026-12-02 12:58)."
    " The Python reference server then sets the pace: a signed GET of a 4 KiB object costs"
    " it ~5 ms of CPU in probes, of which ~2.5 ms is what FastAPI and hypercorn take for"
    " any request, against Go on both sides for rclone.",
    "rss_mount": "Most likely the sequential read: its read-ahead window grows to 64 blocks"
    " of 1 MiB in flight, and the last 80 blocks stay in memory, on top of the Python"
    " runtime.",
}
NULL_FS = "pyfuse3 null fs"  # the floor measured beside stowfs (limits.null_fs)
IDLE = 5.0  # seconds idle before the page cache fill (limits.page_fill)
FILL_IDLE, FILL_AGAIN = f"tmpfs write, after {IDLE:g} s idle", "tmpfs write, at once again"


@dataclass(frozen=True)
class Measure:
    label: str  # may name the plan's sizes: {big}, {many}, {small}, {files}
    unit: str
    higher: bool  # higher is better
    section: str  # limits | server | fs | memory
    base: str | None = None  # system the others are compared with, pair by pair


MEASURES: dict[str, Measure] = {
    "download": Measure("Download {big}", "MB/s", True, "limits", "curl → server"),
    "upload": Measure("Upload {big} (parallel parts)", "MB/s", True, "limits", "curl → server"),
    "disk_read": Measure("Local disk read {big}", "MB/s", True, "limits"),
    "null_read": Measure("Sequential read {big}, fresh mount", "MB/s", True, "limits"),
    "page_fill": Measure("Page cache fill {big}", "MB/s", True, "limits"),
    "null_ls": Measure("ls -l of {many} entries, warm", "s", False, "limits"),
    "upload_url": Measure("upload-url, 16 connections", "req/s", True, "server"),
    "search_p95": Measure("search p95 at {files} files", "ms", False, "server"),
    "seq_read_cold": Measure("Sequential read {big}, cold", "MB/s", True, "fs"),
    "seq_read_warm": Measure("Sequential read {big}, warm", "MB/s", True, "fs"),
    "ttfb": Measure("Time to first byte (fresh mount)", "ms", False, "fs"),
    "random_4k": Measure("Random 4 KiB reads in {big}", "reads/s", True, "fs"),
    "stat_many": Measure("stat of {many} files (fresh mount)", "s", False, "fs"),
    "ls_cold": Measure("ls -l of {many} files, cold", "s", False, "fs"),
    "ls_warm": Measure("ls -l of {many} files, warm", "s", False, "fs"),
    "cp_in": Measure("cp {big} in, until durable", "MB/s", True, "fs"),
    "small_in": Measure("{small} × 4 KiB in, until durable", "files/s", True, "fs"),
    "small_out": Measure("{small} × 4 KiB out (fresh mount)", "files/s", True, "fs"),
    "rss_cp": Measure("Peak RSS of the mount while copying {big} in", "MB", False, "fs"),
    "rss_mount": Measure("Peak RSS of the mount, whole round", "MB", False, "fs"),
    "rss": Measure("Peak RSS over the whole run", "MB", False, "memory"),
}


@dataclass(frozen=True)
class Target:
    issue: str
    text: str
    measure: str
    system: str
    bound: float
    base: tuple[str, str] | None = None  # (measure, system): the bound is a ratio to it
    below: bool = False  # the figure must be < bound (else >= bound)


TARGETS = [
    Target(
        "server",
        "download ≥ 0.6 × nginx",
        "download",
        "curl → server",
        0.6,
        ("download", "curl → nginx"),
    ),
    Target(
        "client",
        "download ≥ 0.9 × curl",
        "download",
        "stowfs client",
        0.9,
        ("download", "curl → server"),
    ),
    Target(
        "client", "upload ≥ 0.9 × curl", "upload", "stowfs client", 0.9, ("upload", "curl → server")
    ),
    Target(
        "fs",
        "sequential read (cold) ≥ 0.75 × curl download",
        "seq_read_cold",
        "stowfs",
        0.75,
        ("download", "curl → server"),
    ),
    Target(
        "fs", "cp {big} in ≥ 0.5 × curl upload", "cp_in", "stowfs", 0.5, ("upload", "curl → server")
    ),
    Target("fs", "ls -l {many}, cold < 1 s", "ls_cold", "stowfs", 1.0, below=True),
    Target("fs", "ls -l {many}, warm < 0.3 s", "ls_warm", "stowfs", 0.3, below=True),
    Target("fs", "ls -l {many}, cold < 1 s", "ls_cold", OPT_IN, 1.0, below=True),
    Target("fs", "ls -l {many}, warm < 0.3 s", "ls_warm", OPT_IN, 0.3, below=True),
    Target(
        "fs",
        "{small} × 4 KiB in ≥ the peer's rate",
        "small_in",
        "stowfs",
        1.0,
        ("small_in", "rclone"),
    ),
    Target(
        "fs",
        "{small} × 4 KiB in ≥ the peer's rate",
        "small_in",
        OPT_IN,
        1.0,
        ("small_in", "rclone"),
    ),
    Target(
        "fs",
        "peak RSS of the mount while copying {big} in < 200 MB",
        "rss_cp",
        "stowfs",
        200.0,
        below=True,
    ),
]


@dataclass
class Results:
    meta: dict[str, Any]
    # measure -> system -> round -> value
    samples: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> summary
    failures: list[str] = field(default_factory=list)

    def add(self, round_: int, measure: str, system: str, value: float) -> None:
        assert measure in MEASURES, measure
        self.samples.setdefault(measure, {}).setdefault(system, {})[round_] = value

    def values(self, measure: str, system: str) -> dict[int, float]:
        return self.samples.get(measure, {}).get(system, {})

    def save(self, path: Path = RESULTS_JSON) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "meta": self.meta,
            "samples": self.samples,
            "profiles": self.profiles,
            "failures": self.failures,
        }
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Path = RESULTS_JSON) -> Results:
        doc = json.loads(path.read_text())
        samples = {
            m: {s: {int(r): v for r, v in runs.items()} for s, runs in systems.items()}
            for m, systems in doc["samples"].items()
        }
        return cls(doc["meta"], samples, doc["profiles"], doc["failures"])

    # -- statistics -------------------------------------------------------------------
    def ratios(self, a: tuple[str, str], b: tuple[str, str]) -> list[float]:
        """a ÷ b round by round, as speed: above 1 when `a` is better."""
        va, vb = self.values(*a), self.values(*b)
        higher = MEASURES[a[0]].higher
        return [va[r] / vb[r] if higher else vb[r] / va[r] for r in sorted(va) if r in vb]


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self) -> str:
        if self.n == 1:
            return num(self.median)
        return f"**{num(self.median)}** ({num(self.low)}–{num(self.high)})"


def num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def label(text: str, meta: dict[str, Any]) -> str:
    sizes = meta["sizes"]
    return text.format(
        big=f"{sizes['big_mib']} MiB" if sizes["big_mib"] != 1024 else "1 GiB",
        many=f"{sizes['many']:,}",
        small=f"{sizes['small']:,}",
        files=f"{sizes['search_files']:,}",
    )


def spread_cell(results: Results, measure: str, system: str) -> str:
    spread = Spread.of(list(results.values(measure, system).values()))
    return spread.text() if spread else "not measured"


# -- RESULTS.md ---------------------------------------------------------------------------
def targets_table(results: Results) -> list[str]:
    meta = results.meta
    unmet: list[str] = []
    lines = [
        "| issue | target | figure | median (min–max) | met? |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in TARGETS:
        m = MEASURES[t.measure]
        if t.base is None:
            values = list(results.values(t.measure, t.system).values())
            figure = f"{t.system}: {label(m.label, meta)}, {m.unit}"
        else:
            values = results.ratios((t.measure, t.system), t.base)
            figure = f"{t.system} ÷ {t.base[1]}, {label(m.label, meta)}"
        spread = Spread.of(values)
        if spread is None:
            cell, met = "not measured", "—"
        else:
            ok = spread.median < t.bound if t.below else spread.median >= t.bound
            cell, met = spread.text(), "met" if ok else "**not met**"
            if not ok and t.measure in WHY and t.measure not in slower_measures(results):
                unmet.append(f"- **{label(t.text, meta)}**: {why(results, t.measure)}")
        lines.append(f"| {t.issue} | {label(t.text, meta)} | {figure} | {cell} | {met} |")
    if unmet:
        lines += ["", "Why the targets not met (and not explained below) are not:", "", *unmet]
    return lines


def systems_table(results: Results, section: str) -> list[str]:
    lines = [
        "| measure | system | median (min–max) | ÷ base, pair by pair |",
        "| --- | --- | --- | --- |",
    ]
    for key, m in MEASURES.items():
        if m.section != section or key not in results.samples:
            continue
        for system in results.samples[key]:
            ratio = "—"
            if m.base is not None and system != m.base:
                spread = Spread.of(results.ratios((key, system), (key, m.base)))
                ratio = f"{spread.text()} × {m.base}" if spread else "—"
            name = f"{label(m.label, results.meta)}, {m.unit}"
            lines.append(f"| {name} | {system} | {spread_cell(results, key, system)} | {ratio} |")
    return lines


def fs_table(results: Results) -> list[str]:
    lines = [
        "| workload | stowfs | rclone mount | stowfs ÷ rclone (speed, pair by pair) | stowfs,"
        " opt-in |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, m in MEASURES.items():
        if m.section != "fs":
            continue
        spread = Spread.of(results.ratios((key, "stowfs"), (key, "rclone")))
        cells = [spread_cell(results, key, s) for s in FS_SYSTEMS]
        ratio = spread.text() if spread else "—"
        name = f"{label(m.label, results.meta)}, {m.unit}"
        opt_in = (
            spread_cell(results, key, OPT_IN) if OPT_IN in results.samples.get(key, {}) else "—"
        )
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} | {opt_in} |")
    return lines


def why(results: Results, measure: str) -> str:
    """WHY[measure], with the floor figures of this run put in."""
    floor: dict[str, str] = {}
    for key, system in (
        ("null_read", NULL_FS),
        ("null_ls", NULL_FS),
        ("fill_idle", FILL_IDLE),
        ("fill_again", FILL_AGAIN),
    ):
        source = "page_fill" if key.startswith("fill") else key
        spread = Spread.of(list(results.values(source, system).values()))
        floor[key] = num(spread.median) if spread else "(not measured)"
        floor[f"{key}_range"] = (
            f"{num(spread.low)}–{num(spread.high)}" if spread else "(not measured)"
        )
    floor["idle"] = f"{IDLE:g}"
    cold = results.values("seq_read_cold", FS_SYSTEMS[0])
    floor["cold_rounds"] = ", ".join(num(cold[r]) for r in sorted(cold)) or "(not measured)"
    floor["series"] = series_limit(results)
    return WHY[measure].format_map(floor)


def series_limit(results: Results) -> str:
    """The best ratio to curl's median of one thread that receives like stowfs's client
    and replies like the pyfuse3 null fs, one after the other (their fastest rounds)."""
    curl, client, null = (
        Spread.of(list(results.values(measure, system).values()))
        for measure, system in (
            ("download", "curl → server"),
            ("download", "stowfs client"),
            ("null_read", NULL_FS),
        )
    )
    if curl is None or client is None or null is None:
        return "(not measured)"
    return num(1 / (1 / client.high + 1 / null.high) / curl.median)


def slower_measures(results: Results) -> dict[str, float]:
    """The fs measures where stowfs is slower than rclone: the median speed ratio."""
    slower = {}
    for key, m in MEASURES.items():
        spread = Spread.of(results.ratios((key, "stowfs"), (key, "rclone")))
        if m.section == "fs" and spread is not None and spread.median < ON_PAR:
            slower[key] = spread.median
    return slower


def slower_section(results: Results) -> list[str]:
    lines = []
    for key, ratio in slower_measures(results).items():
        m = MEASURES[key]
        if m.unit == "MB":
            by = f"uses {1 / ratio:.2g}× rclone mount's memory"
        elif m.higher:
            by = f"{ratio:.2g}× rclone mount's rate ({(1 - ratio) * 100:.0f}% slower)"
        else:
            by = f"takes {1 / ratio:.2g}× rclone mount's time"
        reason = f" {why(results, key)}" if key in WHY else ""
        lines.append(f"- **{label(m.label, results.meta)}**: {by}.{reason}")
    return lines or ["- none: stowfs is on par with rclone mount or faster everywhere."]


def profile_section(results: Results) -> list[str]:
    def shares(items: list[tuple[str, float]]) -> str:
        return "; ".join(f"`{name}` {share * 100:.0f}%" for name, share in items)

    lines: list[str] = []
    for phase, summary in results.profiles.items():
        lines += [
            f"- **{phase}** ({summary['seconds']:.1f} s; on average"
            f" {summary['threads_on_cpu']:.2f} of the mount's threads on CPU)",
            f"  - self: {shares(summary['top'])}",
            f"  - stowfs, inclusive: {shares(summary['ours'])}",
        ]
    return lines or ["Not profiled in this run."]


def render(results: Results, charts: list[str]) -> str:
    meta = results.meta
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}: {meta['machine']}; {meta['rclone']};"
        f" {meta['runs']} run(s) of every measure, alternating the sides. Everything runs on"
        " 127.0.0.1 on the same machine, shared with other work: figures are noisy, so each"
        " cell gives the median and, in brackets, the min and max. Ratios are computed run by"
        " run (pair by pair) and then summarized the same way. MB = 10⁶ bytes.",
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        "## Physical limits",
        "",
        "curl and stowfs's own client against the reference server and against nginx serving"
        " the same file (one inode, hard-linked, warm in the page cache); uploads split into the"
        " client's part size and parallelism, PUT by `curl --parallel` (nginx: WebDAV PUT)."
        " The pyfuse3 null fs (`tests/benchmarks/nullfs.py`) is a mount that does no work: its"
        " reads return one constant buffer, its xattrs answer at once; it is the floor of any"
        " pyfuse3 + trio filesystem on this machine, page cache filling included.",
        "",
        *systems_table(results, "limits"),
        "",
        "## Server",
        "",
        *systems_table(results, "server"),
        "",
        "## The mount: stowfs and rclone mount, the same workloads",
        "",
        "rclone: `rclone serve webdav` over the same files (hard link of the big file; the"
        " folder of many files as sparse files of the same names and sizes), mounted with"
        " `rclone mount :webdav: --webdav-vendor rclone --webdav-pacer-min-sleep 0`,"
        " `--vfs-cache-mode off` for reading and `--vfs-cache-mode full --vfs-write-back 0s`"
        " for writing. stowfs: `stowfs mount` on the reference server, uploads on close,"
        " a 2 GiB block cache. Every workload starts on a fresh mount with empty caches"
        " (cold); warm repeats it at once on the same mount; writes count until the server"
        " holds every byte. For scale, the issue measured rclone elsewhere with this setup:"
        " 1 GiB read ~650 MB/s, written ~290 MB/s, ~890 small files/s, `ls -l` of 10,000"
        " files ~1.1 s cold and ~0.9 s warm. stowfs, opt-in: the same mount with"
        ' `--other-xattrs enotsup` (other namespaces than `user.*` answer "not supported",'
        " after which GNU ls stops asking; the default answers ENODATA, as design.md says)"
        " and `--write-back 0` (close returns at once, as rclone's `--vfs-write-back 0s`"
        " does), on the workloads these change.",
        "",
        *fs_table(results),
        "",
        "### Where stowfs is slower than rclone mount",
        "",
        "Figures quoted from probes (not from the tables) were taken on the machine of an"
        " earlier run, on 2026-12-01 and 2026-12-02: they scale with the machine's speed, as"
        " the tables do.",
        "",
        *slower_section(results),
        "",
        "### Where the mount's time goes (py-spy)",
        "",
        "One extra, unrecorded round of the stowfs workloads under `py-spy record"
        " --nonblocking`; for each phase, the functions with the most samples on top of the"
        " stack (self time, share of the samples).",
        "",
        *profile_section(results),
        "",
        "## Peak memory of each process",
        "",
        *systems_table(results, "memory"),
        "",
    ]
    if results.failures:
        lines += ["## Failures", "", *(f"- {f}" for f in results.failures), ""]
    lines += ["## Charts", "", *(f"![{c}]({c})" for c in charts), ""]
    return "\n".join(lines)


# -- charts -------------------------------------------------------------------------------
def chart(results: Results, keys: list[str], path: Path, columns: int = 3) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if k in results.samples]
    if not keys:
        return False
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        m = MEASURES[key]
        systems = list(results.samples[key])
        spreads = [Spread.of(list(results.values(key, s).values())) for s in systems]
        medians = [s.median if s else 0 for s in spreads]
        errors = [
            [s.median - s.low if s else 0 for s in spreads],
            [s.high - s.median if s else 0 for s in spreads],
        ]
        colors = [color(s) for s in systems]
        ax.bar(range(len(systems)), medians, yerr=errors, capsize=4, color=colors)
        ax.set_xticks(range(len(systems)), [textwrap.fill(s, 14) for s in systems], fontsize=8)
        better = "higher" if m.higher else "lower"
        ax.set_title(f"{label(m.label, results.meta)}", fontsize=9)
        ax.set_ylabel(f"{m.unit} ({better} is better)", fontsize=8)
        lines = [(t, target_line(results, t)) for t in TARGETS if t.measure == key]
        for style, (t, line) in zip(("--", ":"), lines, strict=False):
            if line is not None:
                text = label(t.text, results.meta)
                ax.axhline(line, color="red", linestyle=style, linewidth=1, label=text)
                ax.legend(fontsize=7)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def color(system: str) -> str:
    """The peers (rclone, nginx) in orange, the local disk in grey, stowfs's side in blue."""
    if "rclone" in system or "nginx" in system:
        return "#DD8452"
    return "#8C8C8C" if "disk" in system else "#4C72B0"


def target_line(results: Results, t: Target) -> float | None:
    """The target in the measure's own unit: a ratio target times its base's median."""
    if t.base is None:
        return t.bound
    base = Spread.of(list(results.values(*t.base).values()))
    return None if base is None else t.bound * base.median


def write(results: Results) -> None:
    groups = {
        "limits.png": ["download", "upload", "disk_read", "upload_url", "search_p95", "rss"],
        "fs.png": [k for k, m in MEASURES.items() if m.section == "fs"],
    }
    charts = [name for name, keys in groups.items() if chart(results, keys, HERE / name)]
    RESULTS_MD.write_text(render(results, charts))
