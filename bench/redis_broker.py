"""Benchmarks of the Redis broker, in the configurations its fault tests pass with: a
redis-server of our own with AOF on (``appendfsync always``, and ``everysec`` beside it),
messages signed with an HMAC key, leases on, and a standalone ``steersman worker`` with 2
processes.

Measured, each a median of several interleaved runs (min to max):

- no-op throughput (tasks submitted at once with ``send_batch``, every result collected);
- round trip of one task at a time (p50, p99), beside a raw redis-py echo measured in the
  same run (client LPUSH -> worker process BRPOP -> LPUSH reply -> client BRPOP);
- steering reaction: a result reaching the thinker to the next task acknowledged;
- 10^6 queued tasks: submission rate and Redis memory per queued task;
- the structures: lists with a lease registry (chosen) beside Streams with a consumer
  group, raw, for enqueue + take + acknowledge and memory per queued entry.

Run with ``make bench`` (after ``bench/run.py``); rewrites the Redis section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import DOC, Reactor, machine, percentile, write_section
from steersman import Queues
from steersman.brokers.redis import RedisBroker

REPEATS = 5
N_THROUGHPUT = 20_000
N_LATENCY = 1000
N_REACTION = 1000
N_QUEUED = 1_000_000
N_STRUCTURES = 50_000
KEY = "bench-signing-key"
BENCH = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:redis:begin -->", "<!-- bench:redis:end -->"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A redis-server of our own on a free port: as the fault tests run it (AOF on, fsync at
    every write: ``fsync="always"``), with the AOF synced once a second (``"everysec"``,
    Redis's default for the AOF), or with ``fsync=None`` at Redis's own defaults (RDB
    snapshots, no append-only file), as the peers of ``make bench-peers`` get it."""

    def __init__(self, fsync: str | None = "always") -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="steersman-bench-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed; `make redis` installs it")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        if fsync is not None:
            argv += ["--save", "", "--appendonly", "yes", "--appendfsync", fsync]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.client = client

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_worker(server: Server, namespace: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(BENCH), "STEERSMAN_HMAC_KEY": KEY}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steersman.cli",
            "worker",
            "--redis",
            server.url,
            "--namespace",
            namespace,
            "--queues",
            "default",
            "--method",
            "benchmethods:noop",
            "--concurrency",
            "2",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


class ArrivalBroker(RedisBroker):
    """The Redis broker, noting when each result reaches the thinker."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: dict[str, float] = {}

    def get_result(self, topic, timeout=None, stop=None):
        result = super().get_result(topic, timeout, stop)
        if result is not None:
            self.arrived[result.task_id] = time.perf_counter()
        return result


def warm(queues: Queues, n: int = 20) -> None:
    for _ in range(n):
        queues.send_inputs(method="noop")
        queues.get_result(timeout=60)


def steersman_runs(server: Server) -> dict[str, float]:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    worker = start_worker(server, namespace)
    broker = ArrivalBroker(server.url, namespace, hmac_key=KEY)
    queues = Queues(methods=["noop"], broker=broker)
    try:
        warm(queues)
        start = time.perf_counter()
        queues.send_batch([()] * N_THROUGHPUT, method="noop")
        for _ in range(N_THROUGHPUT):
            queues.get_result(timeout=120)
        throughput = N_THROUGHPUT / (time.perf_counter() - start)
        samples = []
        for _ in range(N_LATENCY):
            start = time.perf_counter()
            queues.send_inputs(method="noop")
            queues.get_result(timeout=60)
            samples.append(time.perf_counter() - start)
        broker.arrived.clear()
        thinker = Reactor(queues, broker)  # the core benchmark's one-in-flight thinker
        thinker.run()
        reactions = thinker.reactions
    finally:
        queues.close()
        stop_worker(worker)
    return {
        "throughput": throughput,
        "p50": percentile(samples, 0.5) * 1e6,
        "p99": percentile(samples, 0.99) * 1e6,
        "reaction50": percentile(reactions, 0.5) * 1e6,
        "reaction99": percentile(reactions, 0.99) * 1e6,
    }


def echo_samples(
    server: Server, warmup: int = 20, started: Callable[[int], None] | None = None
) -> list[float]:
    """The floor: round trips (seconds) of a raw request/reply through Redis lists with a
    worker process; ``started`` is given that process's pid before the first."""
    inbox, outbox = f"echo:{uuid.uuid4().hex}", f"echo:{uuid.uuid4().hex}"
    worker = subprocess.Popen(
        [sys.executable, str(BENCH / "benchmethods.py"), "echo", server.url, inbox, outbox]
    )
    client = redis.Redis.from_url(server.url)
    try:
        if started is not None:
            started(worker.pid)
        for _ in range(warmup):
            client.lpush(inbox, b"x")
            client.brpop([outbox], timeout=30)
        samples = []
        for _ in range(N_LATENCY):
            start = time.perf_counter()
            client.lpush(inbox, b"x")
            client.brpop([outbox], timeout=30)
            samples.append(time.perf_counter() - start)
    finally:
        client.lpush(inbox, b"stop")
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        client.close()
    return samples


def echo_runs(server: Server) -> dict[str, float]:
    samples = echo_samples(server)
    return {"p50": percentile(samples, 0.5) * 1e6, "p99": percentile(samples, 0.99) * 1e6}


def queued_million(server: Server) -> dict[str, float]:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(server.url, namespace, hmac_key=KEY)
    queues = Queues(methods=["noop"], broker=broker)
    server.client.execute_command("MEMORY", "PURGE")
    before = server.client.info("memory")["used_memory"]
    chunk = 10_000
    start = time.perf_counter()
    for _ in range(N_QUEUED // chunk):
        queues.send_batch([()] * chunk, method="noop")
    rate = N_QUEUED / (time.perf_counter() - start)
    after = server.client.info("memory")["used_memory"]
    envelope = len(
        server.client.hget(
            f"{namespace}:task", server.client.lindex(f"{namespace}:lane:default", 0)
        )
    )
    broker.purge("default")
    queues.close()
    return {"rate": rate, "bytes": (after - before) / N_QUEUED, "envelope": envelope}


def structures(server: Server) -> dict[str, dict[str, float]]:
    """Raw enqueue + take + acknowledge, lists with a held list vs a Stream consumer group,
    both pipelined in batches of 100, and memory per queued entry."""
    client = redis.Redis.from_url(server.url)
    payload = b"x" * 384  # a signed no-op envelope's size
    out: dict[str, dict[str, float]] = {}
    # Lists: the envelope in a hash, the id in a list, taken by LMOVE into a held list.
    ns = f"raw{uuid.uuid4().hex[:6]}"
    before = client.info("memory")["used_memory"]
    start = time.perf_counter()
    for base in range(0, N_STRUCTURES, 100):
        pipe = client.pipeline(transaction=False)
        for i in range(base, base + 100):
            pipe.hset(f"{ns}:task", f"{i:032x}", payload)
            pipe.rpush(f"{ns}:lane", f"{i:032x}")
        pipe.execute()
    enqueue = time.perf_counter() - start
    memory = (client.info("memory")["used_memory"] - before) / N_STRUCTURES
    start = time.perf_counter()
    for _ in range(0, N_STRUCTURES, 100):
        pipe = client.pipeline(transaction=False)
        for _ in range(100):
            pipe.lmove(f"{ns}:lane", f"{ns}:held", "LEFT", "RIGHT")
        ids = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(f"{ns}:task", task_id)
        pipe.execute()
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hdel(f"{ns}:task", task_id)
            pipe.lrem(f"{ns}:held", 1, task_id)
        pipe.execute()
    take = time.perf_counter() - start
    client.delete(f"{ns}:task", f"{ns}:lane", f"{ns}:held")
    out["lists + lease registry"] = {
        "enqueue": N_STRUCTURES / enqueue,
        "take_ack": N_STRUCTURES / take,
        "bytes": memory,
    }
    # Streams: XADD, XREADGROUP, XACK + XDEL (so acknowledged entries do not stay).
    stream = f"raw{uuid.uuid4().hex[:6]}:stream"
    client.xgroup_create(stream, "workers", id="0", mkstream=True)
    before = client.info("memory")["used_memory"]
    start = time.perf_counter()
    for _ in range(0, N_STRUCTURES, 100):
        pipe = client.pipeline(transaction=False)
        for _ in range(100):
            pipe.xadd(stream, {"e": payload})
        pipe.execute()
    enqueue = time.perf_counter() - start
    memory = (client.info("memory")["used_memory"] - before) / N_STRUCTURES
    start = time.perf_counter()
    for _ in range(0, N_STRUCTURES, 100):
        entries = client.xreadgroup("workers", "c1", {stream: ">"}, count=100)
        ids = [entry_id for entry_id, _ in entries[0][1]]
        pipe = client.pipeline(transaction=False)
        pipe.xack(stream, "workers", *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
    take = time.perf_counter() - start
    client.delete(stream)
    out["Streams + consumer group"] = {
        "enqueue": N_STRUCTURES / enqueue,
        "take_ack": N_STRUCTURES / take,
        "bytes": memory,
    }
    client.close()
    return out


POLICIES = ("always", "everysec")


def main() -> None:
    console = Console()
    ours: dict[str, dict[str, list[float]]] = {p: {} for p in POLICIES}
    echo: dict[str, dict[str, list[float]]] = {p: {} for p in POLICIES}
    million: dict[str, dict[str, float]] = {}
    servers = {policy: Server(policy) for policy in POLICIES}
    try:
        with console.status("benchmarking the Redis broker") as status:
            for repeat in range(1, REPEATS + 1):
                for policy, server in servers.items():
                    status.update(f"repeat {repeat}/{REPEATS}: steersman, fsync {policy}")
                    for name, value in steersman_runs(server).items():
                        ours[policy].setdefault(name, []).append(value)
                    status.update(f"repeat {repeat}/{REPEATS}: raw redis-py echo, {policy}")
                    for name, value in echo_runs(server).items():
                        echo[policy].setdefault(name, []).append(value)
            for policy, server in servers.items():
                status.update(f"{N_QUEUED:,} queued tasks, fsync {policy}")
                million[policy] = queued_million(server)
            status.update("lists vs Streams")
            raw = structures(servers["always"])
        version = servers["always"].client.info("server")["redis_version"]
    finally:
        for server in servers.values():
            server.close()

    def cell(values: list[float], fmt: str) -> str:
        mid = statistics.median(values)
        return f"{mid:{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"

    def ratio(policy: str) -> str:
        mine = statistics.median(ours[policy]["p50"])
        return f"{mine / statistics.median(echo[policy]['p50']):.2f}×"

    def row(label: str, target: str, value: Callable[[str], str]) -> tuple[str, ...]:
        return (label, *(value(p) for p in POLICIES), target)

    rows = [
        row(
            "no-op throughput (tasks/s)", "≥ 10,000", lambda p: cell(ours[p]["throughput"], ",.0f")
        ),
        row("round trip p50 (µs)", "≤ 1.25× echo", lambda p: cell(ours[p]["p50"], ".0f")),
        row("round trip p99 (µs)", "", lambda p: cell(ours[p]["p99"], ".0f")),
        row("raw redis-py echo p50 (µs)", "", lambda p: cell(echo[p]["p50"], ".0f")),
        row("raw redis-py echo p99 (µs)", "", lambda p: cell(echo[p]["p99"], ".0f")),
        row("round trip p50 / echo p50", "", ratio),
        row("steering reaction p50 (µs)", "", lambda p: cell(ours[p]["reaction50"], ".0f")),
        row("steering reaction p99 (µs)", "", lambda p: cell(ours[p]["reaction99"], ".0f")),
        row(
            f"submission of {N_QUEUED:,} tasks (tasks/s)",
            "≥ 50,000",
            lambda p: f"{million[p]['rate']:,.0f}",
        ),
        row(
            "Redis memory per queued no-op task (bytes)",
            "≤ 1,024",
            lambda p: f"{million[p]['bytes']:.0f}",
        ),
        row(
            "signed envelope of a queued no-op task (bytes)",
            "",
            lambda p: str(million[p]["envelope"]),
        ),
    ]
    headers = ("measure", "fsync always", "fsync everysec", "target")
    table = Table(title=f"Redis broker, 2 worker processes, median of {REPEATS} (min–max)")
    for header in headers:
        table.add_column(header)
    for cells in rows:
        table.add_row(*cells)
    console.print(table)
    shapes = Table(title=f"Redis structures, raw, {N_STRUCTURES:,} entries of 384 bytes")
    for header in ("structure", "enqueue /s", "take + ack /s", "bytes per queued entry"):
        shapes.add_column(header)
    for name, r in raw.items():
        shapes.add_row(name, f"{r['enqueue']:,.0f}", f"{r['take_ack']:,.0f}", f"{r['bytes']:.0f}")
    console.print(shapes)

    today = datetime.date.today().isoformat()
    lines = [
        BEGIN,
        f"Measured {today} on {machine()}, Redis {version}, by `make bench` "
        "(`bench/redis_broker.py`). Redis with AOF on, synced at every write (`appendfsync "
        "always`, survives a power loss) or once a second (`everysec`, survives a crash of "
        "Redis; both pass fault test (b)); HMAC signing on, 10 s leases; a standalone "
        "`steersman worker --concurrency 2`; the client in its own process; the echo on the "
        f"same server. Median of {REPEATS} interleaved runs (min–max).",
        "",
        f"| {' | '.join(headers)} |",
        "| --- | --- | --- | --- |",
        *(f"| {' | '.join(cells)} |" for cells in rows),
        "",
        f"Redis structures, raw redis-py, {N_STRUCTURES:,} entries of 384 bytes, pipelined "
        "in batches of 100:",
        "",
        "| structure | enqueue /s | take + ack /s | bytes per queued entry |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {r['enqueue']:,.0f} | {r['take_ack']:,.0f} | {r['bytes']:.0f} |"
            for name, r in raw.items()
        ),
        END,
    ]
    write_section(BEGIN, END, lines)
    console.print(f"wrote {DOC}")


if __name__ == "__main__":
    sys.exit(main())
