"""Side-by-side benchmarks of steersman against RQ, Celery, Colmena, Parsl, Dask and Ray,
with ``ProcessPoolExecutor`` and a raw redis-py echo as floors.

Run with ``make bench-peers`` (which builds ``.venv-peers``). Every system runs with 2
worker processes, each peer at its defaults and at the setting its docs give for
throughput, through the same five workloads (``workloads.py``):

(a) no-op throughput, all submitted at once; (b) one-at-a-time round trip, p50 and p99;
(c) steering: 4 tasks in flight, a new one submitted as each result arrives; (d) 200 tasks
of 50 ms, makespan against the ideal 5 s; (e) recovery: the process running a 2 s task is
SIGKILLed, seconds until its result arrives from another process (capped at 120 s).

Runs are interleaved (for run in 1..3, for system in systems). Each (run, system) is a
child process of this script, in its own session and with a marker in its environment,
so that whatever it started (workers, clusters, Ray, its redis-server) is killed after it
even if it crashed or hung. Prints a table and rewrites the peers section of
``docs/benchmarks.md`` and ``docs/bench-peers.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

PEERS = Path(__file__).resolve().parent
BENCH = PEERS.parent
ROOT = BENCH.parent
sys.path[:0] = [str(PEERS), str(BENCH)]  # bench/ after bench/peers: bench/run.py is `run`

REPEATS = 3
CHILD_TIMEOUT = 420  # seconds for one system's five workloads, start and stop included
TOKEN_VAR = "STEERSMAN_PEERS_RUN"
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "bench-peers.png"
BEGIN, END = "<!-- bench:peers:begin -->", "<!-- bench:peers:end -->"
LEASE = 10.0  # the Redis broker's default lease (docs/redis.md)
METRICS = ("throughput", "p50", "p99", "steering", "makespan", "over", "recovery")


# --------------------------------------------------------------------------- one child
def child(key: str, out: Path, workdir: Path, skip: list[str]) -> None:
    """Start one system, run every workload, stop it; results go to ``out`` (JSON) after
    each step, so a child killed on its time limit still reports what it finished."""
    from systems import ECHO_ONLY, SYSTEMS, short
    from workloads import WORKLOADS

    report: dict = {"cells": {}}

    def save() -> None:
        out.write_text(json.dumps(report))

    server = None
    system = None
    try:
        cls = SYSTEMS[key]
        url = None
        if cls.needs_redis:
            from redis_broker import Server  # the redis-server of bench/redis_broker.py

            # steersman's rows as its fault tests run; the peers at Redis's defaults.
            server = Server(fsync=cls.redis_fsync)
            url = server.url
            report["redis"] = server.client.info("server")["redis_version"]
        system = cls(workdir, url)
        started = time.perf_counter()
        system.start()
        report["startup"] = time.perf_counter() - started
        save()
        for name, workload in WORKLOADS.items():
            if name in skip or (key in ECHO_ONLY and name not in ECHO_ONLY[key]):
                continue
            try:
                args = (system, workdir) if name == "recovery" else (system,)
                report["cells"][name] = workload(*args)
            except Exception as error:
                report["cells"][name] = {"error": short(error)}
                traceback.print_exc()
            save()
    except Exception as error:
        report["error"] = short(error, 160)
        traceback.print_exc()
    finally:
        for closer in (system and system.stop, server and server.close):
            if closer:
                try:
                    closer()
                except Exception:
                    traceback.print_exc()
        save()


# -------------------------------------------------------------------------- the parent
def kill_marked(token: str) -> int:
    """SIGKILL every process whose environment carries ``token``: what a child started,
    whatever session or parent it ended up in. Returns how many there were."""
    killed = 0
    needle = f"{TOKEN_VAR}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


def run_child(key: str, repeat: int, skip: list[str], logs: Path) -> dict:
    token = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix=f"peers-{key}-"))
    out = workdir / "result.json"
    env = {
        **os.environ,
        TOKEN_VAR: token,
        "PYTHONPATH": os.pathsep.join([str(PEERS), str(BENCH), os.environ.get("PYTHONPATH", "")]),
        # Parsl starts its interchange and worker pool as scripts of the virtualenv.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",  # no usage report sent from a benchmark
    }
    argv = [sys.executable, __file__, "--child", key, "--out", str(out), "--workdir", str(workdir)]
    argv += [f"--skip={name}" for name in skip]
    log = logs / f"{key}-run{repeat}.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(
            argv, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(CHILD_TIMEOUT)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            time.sleep(0.2)
            leftovers = kill_marked(token)
    try:
        report = json.loads(out.read_text())
    except (OSError, ValueError):
        report = {"cells": {}, "error": f"the run crashed before reporting (log: {log})"}
    if timed_out:
        report.setdefault("error", f"stopped at the {CHILD_TIMEOUT} s limit of one run")
    report["leftovers"] = leftovers
    shutil.rmtree(workdir, ignore_errors=True)
    return report


def progress_line(report: dict) -> str:
    cells = report["cells"]
    parts = []

    def get(name, field, fmt):
        cell = cells.get(name, {})
        if field in cell:
            return format(cell[field], fmt)
        if "lost" in cell:
            return "lost"
        return "err" if "error" in cell else "–"

    if "throughput" not in cells:  # the echo: one task at a time only
        return f"(b) {get('roundtrip', 'p50', '.2f')}/{get('roundtrip', 'p99', '.2f')} ms"
    parts.append(f"(a) {get('throughput', 'throughput', ',.0f')}/s")
    parts.append(f"(b) {get('roundtrip', 'p50', '.2f')}/{get('roundtrip', 'p99', '.2f')} ms")
    parts.append(f"(c) {get('steering', 'steering', ',.0f')}/s")
    parts.append(f"(d) {get('sleeps', 'makespan', '.2f')} s")
    recovered = "skipped" if cells.get("recovery", {}).get("skipped") else None
    recovered = recovered or get("recovery", "recovery", ".1f")
    parts.append(f"(e) {recovered}" + (" s" if recovered[0].isdigit() else ""))
    if "error" in report:
        parts.append(f"[{report['error']}]")
    return "  ".join(parts)


def versions() -> dict[str, str]:
    found = {}
    for package in (
        "steersman",
        "rq",
        "celery",
        "kombu",
        "colmena",
        "parsl",
        "dask",
        "distributed",
        "ray",
        "redis",
    ):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def main() -> None:
    from rich.console import Console
    from systems import SYSTEMS

    # A wide console when the output is not a terminal (make, a log): the table stays a table.
    console = Console(width=None if sys.stdout.isatty() else 200)
    repeats = int(os.environ.get("PEERS_REPEATS", REPEATS))
    if os.environ.get("PEERS_ONLY"):  # for a quick look at some systems: PEERS_ONLY=rq,ray
        chosen = os.environ["PEERS_ONLY"].split(",")
        systems = {key: cls for key, cls in SYSTEMS.items() if key in chosen}
    else:
        systems = dict(SYSTEMS)
    logs = Path(tempfile.mkdtemp(prefix="bench-peers-logs-"))
    console.print(f"bench-peers: {len(systems)} systems × {repeats} runs; logs in {logs}")
    reports: dict[str, list[dict]] = {key: [] for key in systems}
    redis_version = "?"
    began = time.perf_counter()
    for repeat in range(1, repeats + 1):
        for key, cls in systems.items():
            # A task that was lost at the 120 s cap is lost by design (nothing hands it
            # back): later runs do not wait for it again, to keep the bench under 30 min.
            earlier = [r["cells"].get("recovery", {}) for r in reports[key]]
            skip = (
                ["recovery"]
                if any("no result within" in c.get("lost", "") for c in earlier)
                else []
            )
            label = f"{cls.system} · {cls.setting}"
            console.print(f"[dim]run {repeat}/{repeats}[/dim] {label} …", end=" ")
            report = run_child(key, repeat, skip, logs)
            if skip:
                report["cells"]["recovery"] = {"skipped": True}
            redis_version = report.get("redis", redis_version)
            reports[key].append(report)
            console.print(
                f"{progress_line(report)}  [dim]({time.perf_counter() - began:.0f} s)[/dim]"
            )
    from report import write_report

    write_report(console, reports, versions(), redis_version, DOC, CHART, BEGIN, END, LEASE)
    console.print(f"bench-peers took {time.perf_counter() - began:.0f} s; logs in {logs}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help="run one system (internal)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--skip", action="append", default=[])
    options = parser.parse_args()
    if options.child:
        child(options.child, options.out, options.workdir, options.skip)
    else:
        main()
