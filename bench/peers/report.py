"""The table, the footnotes, the ratios against the best peer, the chart and the section of
``docs/benchmarks.md``, from the reports of every (run, system) of ``run.py``."""

from __future__ import annotations

import datetime
import importlib.util
import re
import statistics
from pathlib import Path

from systems import PEERS_NAMES, SYSTEMS
from workloads import IDEAL, N_LATENCY, N_SLEEPS, N_STEERING, RECOVERY_CAP, RECOVERY_TASK


def core_bench():
    """``bench/run.py`` (for ``machine()``), loaded by path: ``run`` is also this bench's
    own entry point."""
    path = Path(__file__).resolve().parent.parent / "run.py"
    spec = importlib.util.spec_from_file_location("steersman_core_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Table columns: (header, workload, field, number format).
COLUMNS = [
    ("(a) no-ops /s", "throughput", "throughput", ",.0f"),
    ("(b) p50 ms", "roundtrip", "p50", ".2f"),
    ("(b) p99 ms", "roundtrip", "p99", ".2f"),
    ("(c) steering /s", "steering", "steering", ",.0f"),
    ("(d) makespan s (over 5 s)", "sleeps", "makespan", ".2f"),
    ("(e) recovery s", "recovery", "recovery", ".1f"),
]


class Footnotes:
    """Numbered footnotes, one number per distinct text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def values(reports: list[dict], workload: str, field: str) -> list[float]:
    return [
        r["cells"][workload][field]
        for r in reports
        if field in r.get("cells", {}).get(workload, {})
    ]


def spread(numbers: list[float], fmt: str) -> str:
    mid = statistics.median(numbers)
    if len(numbers) == 1:
        return format(mid, fmt)
    return f"{format(mid, fmt)} ({format(min(numbers), fmt)}–{format(max(numbers), fmt)})"


def cell(key: str, reports: list[dict], workload: str, field: str, fmt: str, notes) -> str:
    """Median (min to max) of the runs that produced a figure; any run that did not is
    explained by a footnote."""
    from systems import ECHO_ONLY

    if key in ECHO_ONLY and workload not in ECHO_ONLY[key]:
        return "n/a " + notes.mark(
            "The raw echo is a floor for one task at a time only: it has no task to run, "
            "batch, sleep in or kill, so only (b) applies."
        )
    numbers = values(reports, workload, field)
    text = spread(numbers, fmt) if numbers else ""
    if workload == "sleeps" and numbers:
        text += f" (+{statistics.median(values(reports, 'sleeps', 'over')):.0f} %)"
    problems = []
    reported_after = []  # seconds until a lost task was reported failed
    for run, report in enumerate(reports, 1):
        got = report.get("cells", {}).get(workload, {})
        if field in got or got.get("skipped"):
            continue
        if "lost" in got:
            problems.append((run, "lost", got["lost"]))
            if "after" in got:
                reported_after.append(got["after"])
        elif "error" in got:
            problems.append((run, "failed", got["error"]))
        else:
            problems.append((run, "failed", report.get("error", "did not run")))
    if not problems:
        return text
    skipped = sum(1 for r in reports if r.get("cells", {}).get(workload, {}).get("skipped"))
    reasons = sorted({reason for _, _, reason in problems})
    kind = "lost" if all(k == "lost" for _, k, _ in problems) else "failed"
    runs = ", ".join(str(run) for run, _, _ in problems)
    note = f"{SYSTEMS[key].system}, {SYSTEMS[key].setting}: {kind} in run {runs}: "
    note += "; ".join(reason.rstrip(".; ") for reason in reasons)
    if reported_after:
        note += f" (reported {spread(reported_after, '.1f')} s after submission)"
    if skipped:
        note += f". Not waited for again in the {skipped} later run(s): lost at the cap in run 1"
    mark = notes.mark(note + ".")
    if text:
        return f"{text}; {kind} in {len(problems)}/{len(reports)} {mark}"
    if kind == "lost" and reported_after:
        return f"lost: failed at {statistics.median(reported_after):.1f} s {mark}"
    if kind == "lost":
        return f"lost (> {RECOVERY_CAP:.0f} s) {mark}"
    return f"{kind} {mark}"


def median_of(reports, workload, field):
    numbers = values(reports, workload, field)
    return statistics.median(numbers) if numbers else None


def best_peer(reports_by_key, workload, field, higher_is_better):
    """(value, label) of the best peer row (RQ, Celery, Colmena, Parsl, Dask, Ray)."""
    candidates = []
    for key, reports in reports_by_key.items():
        if SYSTEMS[key].system in PEERS_NAMES:
            mid = median_of(reports, workload, field)
            if mid is not None:
                candidates.append((mid, f"{SYSTEMS[key].system}, {SYSTEMS[key].setting}"))
    if not candidates:
        return None, "no peer"
    return (max if higher_is_better else min)(candidates, key=lambda c: c[0])


def ratios(reports_by_key, lease: float) -> list[str]:
    ours = reports_by_key.get("steersman-redis", [])
    everysec = reports_by_key.get("steersman-redis-everysec", [])
    lines = []

    def line(label, workload, field, higher, fmt, unit=""):
        mine = median_of(ours, workload, field)
        peer, name = best_peer(reports_by_key, workload, field, higher)
        if mine is None or peer is None:
            return f"{label}: not computed (steersman Redis or every peer failed)"
        ratio = mine / peer if peer else float("inf")
        text = (
            f"{label}: steersman Redis {format(mine, fmt)}{unit} vs best peer "
            f"{format(peer, fmt)}{unit} ({name}) = **{ratio:.2f}×**"
        )
        other = median_of(everysec, workload, field)
        if other is not None and peer:
            text += f"; with fsync everysec {format(other, fmt)}{unit} = **{other / peer:.2f}×**"
        return text

    lines.append(line("(a) no-op throughput", "throughput", "throughput", True, ",.0f", "/s"))
    lines.append(line("(b) round trip p50", "roundtrip", "p50", False, ".2f", " ms"))
    lines.append(line("(c) steering", "steering", "steering", True, ",.0f", "/s"))
    mine = median_of(ours, "sleeps", "over")
    peer, name = best_peer(reports_by_key, "sleeps", "over", False)
    if mine is not None and peer is not None:
        lines.append(
            f"(d) % over the ideal {IDEAL:.0f} s: steersman Redis **{mine:+.1f} %** vs best "
            f"peer {peer:+.1f} % ({name})"
        )
    mine = median_of(ours, "recovery", "recovery")
    bound = lease + RECOVERY_TASK + 1
    peer, name = best_peer(reports_by_key, "recovery", "recovery", False)
    peer_text = f"; best peer {peer:.1f} s ({name})" if peer is not None else ""
    whole = median_of(reports_by_key.get("steersman-redis-lease", []), "recovery", "recovery")
    if whole is not None:
        peer_text = f"; with the whole worker killed (lease path) **{whole:.1f} s**" + peer_text
    if mine is not None:
        lines.append(
            f"(e) recovery: steersman Redis **{mine:.1f} s** vs lease + 2 s + 1 s = "
            f"{bound:.0f} s{peer_text}"
        )
    else:
        lines.append(f"(e) recovery: steersman Redis did not recover{peer_text}")
    return lines


def chart(reports_by_key, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("(a) no-op throughput, tasks/s (log)", "throughput", "throughput", True),
        ("(b) round trip p50, ms (log)", "roundtrip", "p50", True),
        ("(c) steering, tasks/s (log)", "steering", "steering", True),
        ("(d) % over the ideal 5 s", "sleeps", "over", False),
        (f"(e) recovery, s (lost = {RECOVERY_CAP:.0f})", "recovery", "recovery", False),
    ]
    keys = list(reports_by_key)
    labels = [f"{SYSTEMS[k].system} · {SYSTEMS[k].setting}"[:48] for k in keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(22, 1.5 + 0.4 * len(keys)), sharey=True)
    for ax, (title, workload, field, log) in zip(axes, panels, strict=True):
        for row, key in enumerate(keys):
            numbers = values(reports_by_key[key], workload, field)
            colour = "tab:blue" if key.startswith("steersman") else "tab:grey"
            if numbers:
                mid = statistics.median(numbers)
                err = [[mid - min(numbers)], [max(numbers) - mid]]
                ax.barh(row, mid, xerr=err, color=colour, capsize=2)
            elif workload == "recovery" and any(
                "lost" in r["cells"].get(workload, {}) for r in reports_by_key[key]
            ):
                ax.barh(row, RECOVERY_CAP, color="white", edgecolor="tab:red", hatch="//")
                ax.text(RECOVERY_CAP, row, " lost", va="center", color="tab:red", fontsize=8)
        if log:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(keys)), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("steersman beside its peers, 2 worker processes, median of runs (min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    console, reports_by_key, versions, redis_version, doc, chart_path, begin, end, lease
) -> None:
    from rich.table import Table

    notes = Footnotes()
    headers = ["system", "setting", *(c[0] for c in COLUMNS)]
    rows = []
    for key, reports in reports_by_key.items():
        row = [SYSTEMS[key].system, SYSTEMS[key].setting]
        for _, workload, field, fmt in COLUMNS:
            row.append(cell(key, reports, workload, field, fmt, notes))
        rows.append(row)
    summary = ratios(reports_by_key, lease)
    runs = max(len(r) for r in reports_by_key.values())

    table = Table(
        title=f"steersman beside its peers, 2 worker processes, median of {runs} (min–max)"
    )
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for number, text in enumerate(notes.texts, 1):
        console.print(f"[{number}] {text}", markup=False)
    for line in summary:
        console.print(line.replace("**", ""), markup=False)

    chart(reports_by_key, chart_path)
    sizes = ", ".join(
        f"{SYSTEMS[key].system} {SYSTEMS[key].setting}: {SYSTEMS[key].n_noop:,}"
        for key in reports_by_key
        if key != "echo"
    )
    version_text = ", ".join(f"{name} {version}" for name, version in versions.items())
    today = datetime.date.today().isoformat()
    lines = [
        begin,
        f"Measured {today} on {core_bench().machine()}, Redis {redis_version}, by "
        "`make bench-peers` (`bench/peers/run.py`, in its own `.venv-peers`). "
        f"Versions: {version_text}.",
        "",
        f"Median of {runs} interleaved runs (min–max). Every system has 2 worker processes on "
        "the same 2 cores as the client and Redis. steersman Redis runs as "
        "`bench/redis_broker.py` runs it: its own redis-server with AOF and `appendfsync "
        "always`, HMAC signing, the default 10 s lease, a standalone `steersman worker "
        "--concurrency 2`. The peers on Redis (RQ, Celery, Colmena) and the echo get a "
        "redis-server of their own at Redis's defaults (no AOF): their defaults, and no fsync "
        "on each write, which would cost them far more than steersman (one script per step). "
        "The second steersman Redis row is the same setup with the AOF synced once a second "
        "(`appendfsync everysec`): it survives a crash of Redis (fault test (b) runs with "
        "both policies), not a power loss. In the "
        "first two, (e) kills the worker's process that runs the task: the standalone worker "
        "sees it die and runs the task again at once. The third has two standalone workers "
        "of one process each and (e) kills the whole worker (its session), as a lost host "
        "would: the task comes back to the other worker when its lease lapses.",
        "",
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "Against the best peer (RQ, Celery, Colmena, Parsl, Dask, Ray; ProcessPoolExecutor "
        "and the echo are floors, not peers):",
        "",
        *(f"- {line}" for line in summary),
        "",
        "Workloads: (a) no-ops submitted at once, every result collected "
        f"({sizes}"
        f" tasks, sized so one run takes seconds); (b) {N_LATENCY} one-at-a-time round trips "
        f"after 10 to warm up; (c) {N_STEERING} no-ops, 4 in flight, a new one submitted as "
        "each result arrives (RQ and Celery wait on the oldest of the 4, having no "
        f"first-to-finish wait); (d) {N_SLEEPS} tasks of 50 ms submitted at once, ideal "
        f"{IDEAL:.0f} s; (e) a {RECOVERY_TASK:.0f} s task writes its pid as it starts and that "
        "process is SIGKILLed at once; the figure is seconds from submission to the task's "
        f"result (capped at {RECOVERY_CAP:.0f} s).",
        "",
        *(f"{number}. {text}" for number, text in enumerate(notes.texts, 1)),
        "",
        f"![steersman beside its peers]({chart_path.name})",
        end,
    ]
    text = doc.read_text()
    if begin not in text:
        text = (
            text.rstrip("\n")
            + "\n\n## Side by side with peers\n\n"
            + INTRO
            + begin
            + "\n"
            + end
            + "\n"
        )
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    doc.write_text(pattern.sub(lambda _m: "\n".join(lines), text))
    console.print(f"wrote {doc} and {chart_path}")


INTRO = """\
`make bench-peers` runs the same five workloads on steersman (embedded and Redis brokers)
and on RQ, Celery, Colmena, Parsl, Dask distributed and Ray, each at its defaults and at
the setting its documentation gives for throughput, with `ProcessPoolExecutor` and a raw
redis-py echo as floors. It installs the peers in a virtualenv of their own
(`.venv-peers`, from `bench/peers/requirements.txt`) and rewrites the section below and
`docs/bench-peers.png`.

"""
