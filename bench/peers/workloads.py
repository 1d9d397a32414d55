"""The five workloads, the same for every system (see ``run.py`` for the sizes)."""

from __future__ import annotations

import time
from pathlib import Path

from systems import Adapter, TaskFailed, short

N_LATENCY = 200  # (b) sequential round trips, after 10 to warm up
N_STEERING = 500  # (c) tasks, 4 in flight
IN_FLIGHT = 4
N_SLEEPS, SLEEP = 200, 0.05  # (d) 200 tasks of 50 ms on 2 workers
IDEAL = N_SLEEPS * SLEEP / 2  # 5 s
RECOVERY_TASK = 2.0  # (e) the task killed mid-run
RECOVERY_CAP = 120.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def throughput(system: Adapter) -> dict:
    """(a) ``n_noop`` no-ops submitted at once, every result collected: tasks/s."""
    start = time.perf_counter()
    handles = system.submit_many("noop", [()] * system.n_noop)
    system.gather(handles, timeout=300)
    return {"throughput": system.n_noop / (time.perf_counter() - start)}


def roundtrip(system: Adapter) -> dict:
    """(b) one no-op at a time, submission to value in hand: p50 and p99 in ms."""
    for _ in range(10):
        system.result(system.submit("noop"), 60)
    samples = []
    for _ in range(N_LATENCY):
        start = time.perf_counter()
        system.result(system.submit("noop"), 60)
        samples.append(time.perf_counter() - start)
    return {"p50": percentile(samples, 0.5) * 1e3, "p99": percentile(samples, 0.99) * 1e3}


def steering(system: Adapter) -> dict:
    """(c) keep 4 no-ops in flight, submitting a new one as each result arrives: tasks/s."""
    start = time.perf_counter()
    pending = [system.submit("noop") for _ in range(IN_FLIGHT)]
    sent, done = IN_FLIGHT, 0
    while done < N_STEERING:
        handle, _ = system.next_done(pending, 60)
        pending.remove(handle)
        done += 1
        if sent < N_STEERING:
            pending.append(system.submit("noop"))
            sent += 1
    return {"steering": N_STEERING / (time.perf_counter() - start)}


def sleeps(system: Adapter) -> dict:
    """(d) 200 tasks of 50 ms submitted at once on 2 workers: makespan and % over 5 s."""
    start = time.perf_counter()
    handles = system.submit_many("sleep", [(SLEEP,)] * N_SLEEPS)
    system.gather(handles, timeout=300)
    makespan = time.perf_counter() - start
    return {"makespan": makespan, "over": (makespan / IDEAL - 1) * 100}


def recovery(system: Adapter, workdir: Path) -> dict:
    """(e) SIGKILL the process running a 2 s task: seconds from submission to that task's
    result from another process, or what the system reported instead."""
    marker = workdir / f"pids-{time.monotonic_ns()}"
    start = time.perf_counter()
    handle = system.submit("marked_sleep", RECOVERY_TASK, str(marker))
    # The task writes the pid of the process running it as it starts.
    while not (marker.exists() and marker.read_text().strip()):
        if time.perf_counter() - start > 60:
            raise TimeoutError("the task did not start within 60 s")
        time.sleep(0.002)
    victim = int(marker.read_text().split()[0])
    system.kill(victim)
    try:
        value = system.result(handle, RECOVERY_CAP - (time.perf_counter() - start))
    except TimeoutError:
        return {"lost": f"no result within {RECOVERY_CAP:.0f} s (lost or > 120 s)"}
    except TaskFailed as failure:  # "after": when the system reported the failure
        return {"lost": f"reported failed: {failure}", "after": time.perf_counter() - start}
    elapsed = time.perf_counter() - start
    if value == victim:  # cannot happen unless the kill missed
        return {"lost": short(f"the killed process {victim} returned the result")}
    return {"recovery": elapsed}


WORKLOADS = {
    "throughput": throughput,
    "roundtrip": roundtrip,
    "steering": steering,
    "sleeps": sleeps,
    "recovery": recovery,
}
