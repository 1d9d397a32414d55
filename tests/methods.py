"""Methods the tests register on worker pools (a module, so spawned workers can import them)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from steersman import current_task


def add(a, b=0):
    return a + b


def noop():
    return None


def echo(value):
    return value


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def fail(message="task failed on purpose"):
    raise ValueError(message)


def count_up(n):
    yield from range(n)
    return "finished"


def thread_settings():
    task = current_task()
    return {
        "env": os.environ.get("OMP_NUM_THREADS"),
        "requested": task.resources.cpu_threads,
        "blas": _blas_threads(),
    }


def _blas_threads():
    import numpy  # noqa: F401  (loads the BLAS pool)
    from threadpoolctl import threadpool_info

    return sorted({pool["num_threads"] for pool in threadpool_info()})


def whoami():
    return os.getpid()


def die():
    """Kill this worker process the hard way, as the OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def die_on_first_attempt(marker_dir):
    """SIGKILL the worker on attempt 1; succeed on the next, reporting the attempt."""
    task = current_task()
    Path(marker_dir, f"{task.task_id}.{task.attempt}").touch()
    if task.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return task.attempt


def wait_for_file(path, timeout=30.0):
    """Signal that the task started (writes path + '.started'), then block until path exists."""
    Path(f"{path}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):  # a file is the only signal a test can send in here
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return os.getpid()


def flaky(marker_dir, fail_times=1):
    """Raise on the first ``fail_times`` attempts, then succeed."""
    task = current_task()
    Path(marker_dir, f"attempt{task.attempt}").touch()
    if task.attempt <= fail_times:
        raise RuntimeError(f"flaky failure on attempt {task.attempt}")
    return task.attempt


def logged_sleep(seconds, value, log_path):
    """Sleep, then return ``value``; every run (not every result) appends a line to log_path."""
    time.sleep(seconds)
    with open(log_path, "a") as log:
        log.write(f"{value}\n")
    return value


def noted_sleep(path, seconds, value):
    """Append ``value`` to ``path`` as it starts, sleep, then return ``value``."""
    with open(path, "a") as log:
        log.write(f"{value}\n")
    time.sleep(seconds)
    return value


def fail_unless(path):
    """Fail until ``path`` exists: a task whose cause of failure a test can fix."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing")
    return "fixed"


def big_value(n_bytes):
    return b"x" * n_bytes


def start_program_then_wait(pid_path):
    """Start a program (as a task running an external code does), note its pid, then wait."""
    import subprocess

    program = subprocess.Popen(["sleep", "60"])
    Path(pid_path).write_text(str(program.pid))
    time.sleep(60)
