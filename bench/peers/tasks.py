"""Task functions every system runs. Workers import them by module name (``tasks``), so this
directory is on their ``PYTHONPATH``."""

from __future__ import annotations

import os
import time


def noop(*args):
    return None


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def marked_sleep(seconds: float, marker: str) -> int:
    """Note the pid of the process running this attempt in ``marker``, then sleep: the
    recovery workload reads the pid to SIGKILL exactly that process."""
    with open(marker, "a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()
