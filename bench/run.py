"""Benchmarks of the steering core (embedded broker, 2 worker processes) beside
``concurrent.futures.ProcessPoolExecutor(2)``, plus the envelope encodings.

Run with ``make bench``. Prints a table and rewrites the generated section of
``docs/benchmarks.md`` with the figures, the machine and the date. Systems are interleaved
(one repeat of each in turn) so drift on a noisy machine hits them alike.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import platform
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from steersman import BaseThinker, LocalBroker, Queues, WorkerPool, agent, result_processor
from steersman.task import Result, decode, dumps, encode

REPEATS = 3
N_THROUGHPUT = 5000
N_LATENCY = 1000
N_REACTION = 1000
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:core:begin -->", "<!-- bench:core:end -->"


def noop(*args):
    return None


# ------------------------------------------------------------------------------ steersman
def steersman_throughput(queues: Queues) -> float:
    start = time.perf_counter()
    for _ in range(N_THROUGHPUT):
        queues.send_inputs(method="noop")
    for _ in range(N_THROUGHPUT):
        queues.get_result(timeout=60)
    return N_THROUGHPUT / (time.perf_counter() - start)


def steersman_latency(queues: Queues) -> list[float]:
    samples = []
    for _ in range(N_LATENCY):
        start = time.perf_counter()
        queues.send_inputs(method="noop")
        queues.get_result(timeout=60)
        samples.append(time.perf_counter() - start)
    return samples


class ArrivalClock(LocalBroker):
    """The embedded broker, noting when each result reaches the client process."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}

    def put_result(self, result: Result) -> None:
        self.arrived[result.task_id] = time.perf_counter()
        super().put_result(result)


class Reactor(BaseThinker):
    """Keeps one task in flight: each result triggers the next submission."""

    def __init__(self, queues: Queues, clock: ArrivalClock):
        super().__init__(queues)
        self.clock = clock
        self.reactions: list[float] = []

    @agent(startup=True)
    def first(self):
        self.queues.send_inputs(method="noop")

    @result_processor
    def react(self, result: Result):
        if len(self.reactions) >= N_REACTION:
            self.done.set()
            return
        self.queues.send_inputs(method="noop")
        self.reactions.append(time.perf_counter() - self.clock.arrived.pop(result.task_id))


def steersman_reaction() -> list[float]:
    clock = ArrivalClock()
    queues = Queues(methods=["noop"], broker=clock)
    with WorkerPool(queues, {"noop": noop}, workers=2) as pool:
        pool.wait_for_workers(60)
        thinker = Reactor(queues, clock)
        thinker.run()
    return thinker.reactions


# ------------------------------------------------------------------------ process pool
def pool_throughput(executor: ProcessPoolExecutor) -> float:
    start = time.perf_counter()
    futures = [executor.submit(noop) for _ in range(N_THROUGHPUT)]
    for future in futures:
        future.result()
    return N_THROUGHPUT / (time.perf_counter() - start)


def pool_latency(executor: ProcessPoolExecutor) -> list[float]:
    samples = []
    for _ in range(N_LATENCY):
        start = time.perf_counter()
        executor.submit(noop).result()
        samples.append(time.perf_counter() - start)
    return samples


def pool_reaction(executor: ProcessPoolExecutor) -> list[float]:
    """Same pattern with futures: a callback submits the next task when one completes."""
    reactions: list[float] = []
    finished = threading.Event()

    def on_done(_future):
        arrived = time.perf_counter()
        if len(reactions) >= N_REACTION:
            finished.set()
            return
        executor.submit(noop).add_done_callback(on_done)
        reactions.append(time.perf_counter() - arrived)

    executor.submit(noop).add_done_callback(on_done)
    finished.wait(120)
    return reactions


# ---------------------------------------------------------------------------- encoding
def encoding_figures() -> list[tuple[str, float, int]]:
    task = Result(
        task_id="0" * 32,
        method="simulate",
        queue="sim",
        topic="simulation",
        inputs=dumps((("CCO",), {"charge": 1})),
        task_info={"round": 3, "smiles": "CCO"},
    )
    task.set_value({"energy": -154.2, "converged": True})
    for name in ("created", "queued", "picked_up", "started", "finished", "result_queued"):
        setattr(task.timestamps, name, time.time())
    as_builtins = msgspec.to_builtins(task)
    json_encoder, json_decoder = msgspec.json.Encoder(), msgspec.json.Decoder(Result)

    def stdlib_json():
        return json.loads(json.dumps(as_builtins))

    codecs = {
        "msgspec msgpack (chosen)": (lambda: encode(task), decode),
        "msgspec json": (lambda: json_encoder.encode(task), json_decoder.decode),
        "stdlib json (dict)": (lambda: json.dumps(as_builtins).encode(), json.loads),
        "pickle (struct)": (lambda: pickle.dumps(task, 5), pickle.loads),
    }
    rows = []
    for name, (dump, load) in codecs.items():
        data = dump()
        loops = 20000
        start = time.perf_counter()
        for _ in range(loops):
            load(dump())
        rows.append((name, (time.perf_counter() - start) / loops * 1e6, len(data)))
    return rows


# -------------------------------------------------------------------------------- report
def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table."""
    return [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def print_table(console: Console, title: str, headers: list[str], rows: list[list[str]]) -> None:
    """Print a rich table of ``rows`` under ``headers``."""
    table = Table(title=title)
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def write_section(begin: str, end: str, lines: list[str], heading: str = "") -> None:
    """Put ``lines`` (which start with ``begin`` and end with ``end``) in place of that
    section of docs/benchmarks.md, adding it (under ``heading``) at the end if absent."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin not in text:
        text += ("\n" + heading + "\n" if heading else "") + "\n" + begin + "\n" + end + "\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    DOC.write_text(pattern.sub(lambda _m: "\n".join(lines), text))


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    )


def main() -> None:
    console = Console()
    runs: dict[str, dict[str, list[float]]] = {
        name: {"throughput": [], "p50": [], "p99": [], "reaction50": [], "reaction99": []}
        for name in ("steersman embedded", "steersman embedded, prefetch=0", "ProcessPoolExecutor")
    }
    with console.status("benchmarking") as status:
        for repeat in range(1, REPEATS + 1):
            for prefetch, name in (
                ("auto", "steersman embedded"),
                (0, "steersman embedded, prefetch=0"),
            ):
                status.update(f"repeat {repeat}/{REPEATS}: {name}")
                queues = Queues(methods=["noop"])
                with WorkerPool(queues, {"noop": noop}, workers=2, prefetch=prefetch) as pool:
                    pool.wait_for_workers(60)
                    steersman_latency(queues)[:10]  # warm up
                    runs[name]["throughput"].append(steersman_throughput(queues))
                    latency = steersman_latency(queues)
                runs[name]["p50"].append(percentile(latency, 0.5) * 1e6)
                runs[name]["p99"].append(percentile(latency, 0.99) * 1e6)
                if prefetch == "auto":
                    reaction = steersman_reaction()
                    runs[name]["reaction50"].append(percentile(reaction, 0.5) * 1e6)
                    runs[name]["reaction99"].append(percentile(reaction, 0.99) * 1e6)
            status.update(f"repeat {repeat}/{REPEATS}: ProcessPoolExecutor")
            with ProcessPoolExecutor(2) as executor:
                pool_latency(executor)[:10]
                runs["ProcessPoolExecutor"]["throughput"].append(pool_throughput(executor))
                latency = pool_latency(executor)
                reaction = pool_reaction(executor)
            runs["ProcessPoolExecutor"]["p50"].append(percentile(latency, 0.5) * 1e6)
            runs["ProcessPoolExecutor"]["p99"].append(percentile(latency, 0.99) * 1e6)
            runs["ProcessPoolExecutor"]["reaction50"].append(percentile(reaction, 0.5) * 1e6)
            runs["ProcessPoolExecutor"]["reaction99"].append(percentile(reaction, 0.99) * 1e6)
        status.update("encodings")
        encodings = encoding_figures()

    def cell(values: list[float], fmt: str) -> str:
        if not values:
            return "n/a"
        mid, low, high = summary(values)
        return f"{mid:{fmt}} ({low:{fmt}}–{high:{fmt}})"

    headers = [
        "system",
        "no-op throughput (tasks/s)",
        "round trip p50 (µs)",
        "round trip p99 (µs)",
        "reaction p50 (µs)",
        "reaction p99 (µs)",
    ]
    rows = [
        [
            name,
            cell(r["throughput"], ",.0f"),
            cell(r["p50"], ".0f"),
            cell(r["p99"], ".0f"),
            cell(r["reaction50"], ".0f"),
            cell(r["reaction99"], ".0f"),
        ]
        for name, r in runs.items()
    ]
    base = runs["ProcessPoolExecutor"]
    ours = runs["steersman embedded"]
    ratios = [
        (
            "throughput vs ProcessPoolExecutor (target ≥ 1×)",
            statistics.median(ours["throughput"]) / statistics.median(base["throughput"]),
        ),
        (
            "round trip p50 vs ProcessPoolExecutor (target ≤ 1.5×)",
            statistics.median(ours["p50"]) / statistics.median(base["p50"]),
        ),
        ("reaction p50 in ms (target ≤ 1 ms)", statistics.median(ours["reaction50"]) / 1e3),
    ]

    print_table(console, f"steering core, 2 workers, median of {REPEATS} (min–max)", headers, rows)
    for label, value in ratios:
        console.print(f"{label}: {value:.2f}")
    enc = Table(title="envelope encode+decode of a typical Result")
    for header in ("codec", "µs per round trip", "bytes"):
        enc.add_column(header)
    for name, micros, size in encodings:
        enc.add_row(name, f"{micros:.2f}", str(size))
    console.print(enc)

    today = datetime.date.today().isoformat()
    lines = [
        BEGIN,
        f"Measured {today} on {machine()}, by `make bench` (`bench/run.py`).",
        f"{N_THROUGHPUT} no-op tasks submitted at once for throughput; {N_LATENCY} sequential "
        f"round trips for latency; reaction is the time from a result reaching the client to "
        f"the next task being acknowledged ({N_REACTION} in a row, one in flight). "
        f"Median of {REPEATS} runs, (min–max).",
        "",
        *markdown_table(headers, rows),
        "",
        *(f"- {label}: **{value:.2f}**" for label, value in ratios),
        "",
        'For ProcessPoolExecutor, "reaction" is a done-callback submitting the next future: '
        "there is no thinker, so it is a floor, not a peer.",
        "",
        "Envelope encodings (encode + decode of one typical Result, this machine):",
        "",
        "| codec | µs per round trip | bytes |",
        "| --- | --- | --- |",
        *(f"| {n} | {m:.2f} | {s} |" for n, m, s in encodings),
        END,
    ]
    write_section(BEGIN, END, lines)
    console.print(f"wrote {DOC.relative_to(Path.cwd()) if DOC.is_relative_to(Path.cwd()) else DOC}")


if __name__ == "__main__":
    sys.exit(main())
