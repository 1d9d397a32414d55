"""How much the round trip and the steering rate of the Redis broker depend on where the
kernel runs its processes, on a machine with few CPUs.

A steered task makes two round trips through Redis (the thinker's submission, the worker
process's delivery and next take), and each wakes a process that may sleep on another CPU.
On a virtual machine, a wake-up across CPUs costs far more than one on the CPU that sends
it. This runs the same measurements with the processes placed three ways (pinned with
``sched_setaffinity``, which steersman never does on its own):

- as the kernel places them (what every other benchmark measures);
- the thinker and Redis on one CPU, the worker's processes on the other;
- the thinker and Redis on different CPUs, the worker's processes on both.

Measured, each a median of interleaved runs (min to max), with Redis as
``bench/redis_broker.py`` runs it (AOF synced once a second, HMAC signing, leases) and a
standalone ``steersman worker --concurrency 2``: one task at a time (p50, p99, as workload
(b) of ``make bench-peers``), 4 tasks in flight with a new one sent as each result comes
(as workload (c), tasks/s), and the raw redis-py echo (p50) beside them.

Run with ``make bench``; rewrites the placement section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from redis_broker import KEY, Server, echo_samples, start_worker, stop_worker, warm
from run import (
    N_LATENCY,
    machine,
    markdown_table,
    percentile,
    print_table,
    steersman_latency,
    write_section,
)
from steersman import Queues
from steersman.brokers.redis import RedisBroker

REPEATS = 3
N_STEERING = 4000
IN_FLIGHT = 4
BEGIN, END = "<!-- bench:placement:begin -->", "<!-- bench:placement:end -->"


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def pin(pids: list[int], cpus: set[int] | None) -> None:
    """Every thread of ``pids`` on ``cpus`` (None: any CPU this process may use)."""
    for pid in pids:
        try:
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for thread in threads:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(thread, cpus if cpus is not None else ALL)


ALL = os.sched_getaffinity(0)
FIRST, SECOND = sorted(ALL)[:2] if len(ALL) >= 2 else (0, 0)
# name: (thinker's CPUs, Redis's, the worker's); None: wherever the kernel puts it.
PLACEMENTS: dict[str, tuple[set[int] | None, set[int] | None, set[int] | None]] = {
    "as the kernel places them": (None, None, None),
    "thinker and Redis on one CPU, the worker on the other": ({FIRST}, {FIRST}, {SECOND}),
    "thinker and Redis on different CPUs": ({FIRST}, {SECOND}, {FIRST, SECOND}),
}


def steersman_run(placement: str) -> dict[str, float]:
    thinker_cpus, redis_cpus, worker_cpus = PLACEMENTS[placement]
    server = Server(fsync="everysec")
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    worker = start_worker(server, namespace)
    queues = Queues(methods=["noop"], broker=RedisBroker(server.url, namespace, hmac_key=KEY))
    try:
        warm(queues)  # the worker's processes are up
        pin([os.getpid()], thinker_cpus)
        pin([server.process.pid], redis_cpus)
        pin(descendants(worker.pid), worker_cpus)
        warm(queues, 200)
        samples = steersman_latency(queues)
        start = time.perf_counter()
        for _ in range(IN_FLIGHT):
            queues.send_inputs(method="noop")
        for sent in range(IN_FLIGHT, N_STEERING + IN_FLIGHT):
            queues.get_result(timeout=60)
            if sent < N_STEERING:
                queues.send_inputs(method="noop")
        steering = N_STEERING / (time.perf_counter() - start)
        echo = echo_p50(server, thinker_cpus, worker_cpus)
        version = server.client.info("server")["redis_version"]
    finally:
        pin([os.getpid()], None)
        queues.close()
        stop_worker(worker)
        server.close()
    return {
        "p50": percentile(samples, 0.5) * 1e6,
        "p99": percentile(samples, 0.99) * 1e6,
        "steering": steering,
        "echo": echo,
        "version": version,
    }


def echo_p50(server: Server, client_cpus: set[int] | None, worker_cpus: set[int] | None) -> float:
    """The floor, placed alike: LPUSH -> a worker process's BRPOP -> LPUSH -> BRPOP."""

    def place(pid: int) -> None:
        pin([pid], worker_cpus)
        pin([os.getpid()], client_cpus)

    return percentile(echo_samples(server, 200, place), 0.5) * 1e6


def spread(values: list[float], fmt: str) -> str:
    return (
        f"{format(statistics.median(values), fmt)} "
        f"({format(min(values), fmt)}–{format(max(values), fmt)})"
    )


def main() -> None:
    console = Console()
    if len(ALL) < 2:
        console.print("placement: this process may use one CPU only; nothing to compare")
        return
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in PLACEMENTS}
    with console.status("placement") as status:
        for repeat in range(REPEATS):
            for name in PLACEMENTS:
                status.update(f"placement: {name}, run {repeat + 1} of {REPEATS}")
                runs[name].append(steersman_run(name))
    headers = [
        "placement",
        "one at a time p50 (µs)",
        "p99 (µs)",
        "4 in flight (tasks/s)",
        "raw echo p50 (µs)",
    ]
    rows = [
        [
            name,
            spread([r["p50"] for r in found], ",.0f"),
            spread([r["p99"] for r in found], ",.0f"),
            spread([r["steering"] for r in found], ",.0f"),
            spread([r["echo"] for r in found], ",.0f"),
        ]
        for name, found in runs.items()
    ]
    print_table(console, "Redis broker by placement of its processes", headers, rows)
    today = datetime.date.today().isoformat()
    version = runs[next(iter(PLACEMENTS))][0]["version"]
    lines = [
        BEGIN,
        f"Measured {today} on {machine()}, Redis {version}, by `bench/placement.py` "
        f"(`make bench`), CPUs {FIRST} and {SECOND}. Median of {REPEATS} interleaved runs "
        f"(min–max); {N_LATENCY:,} round trips one at a time, then {N_STEERING:,} no-ops with "
        f"{IN_FLIGHT} in flight. Redis with AOF synced once a second, HMAC signing, leases, "
        "a standalone `steersman worker --concurrency 2`. Pinned with `sched_setaffinity` "
        "for this measurement only: steersman never pins a process.",
        "",
        *markdown_table(headers, rows),
        END,
    ]
    write_section(BEGIN, END, lines, "## The Redis broker by placement of its processes")


if __name__ == "__main__":
    main()
