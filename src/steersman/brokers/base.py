"""What every broker offers: where tasks wait for workers and results wait for the thinker."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from steersman.task import Result


@runtime_checkable
class Broker(Protocol):
    """Holds queued tasks (per lane) and finished results (per topic).

    A lane is a queue name plus a priority (``sim:high``, ``sim``, ``sim:low``); a worker asks
    for work from an ordered list of lanes and gets the first task of the first non-empty one.
    Every blocking call takes a ``stop`` event that ends the wait at once when set.
    """

    def put_task(self, task: Result) -> tuple[str, bool]:
        """Queue ``task``. Returns ``(task_id, accepted)``: a task whose ``key`` is already
        queued, running or done is not queued again, and the id of the first one is returned."""
        ...

    def put_tasks(self, tasks: Sequence[Result]) -> list[tuple[str, bool]]:
        """Queue many tasks at once (one round trip where the broker is remote)."""
        ...

    def get_task(
        self,
        lanes: Sequence[str],
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result | None:
        """Take the next task from the first non-empty lane; ``None`` on timeout or stop."""
        ...

    def get_tasks(
        self,
        lanes: Sequence[str],
        max_count: int = 1,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> list[Result]:
        """Take up to ``max_count`` tasks, first lanes first, waiting for at least one;
        empty on timeout or stop."""
        ...

    def requeue(self, task: Result, front: bool = True) -> None:
        """Put a task taken by a worker back (its worker died or handed it back unstarted)."""
        ...

    def put_result(self, result: Result) -> None:
        """Deliver a result to its topic."""
        ...

    def put_results(self, results: Sequence[Result]) -> None:
        """Deliver many results at once."""
        ...

    def get_result(
        self,
        topic: str,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result | None:
        """Take the next result of ``topic``; ``None`` on timeout or stop."""
        ...

    def cancel_queued(self, task_ids: set[str]) -> list[Result]:
        """Remove the queued (not yet taken) tasks among ``task_ids`` and return them."""
        ...

    def queue_depths(self) -> dict[str, int]:
        """Number of queued tasks per lane."""
        ...

    def close(self) -> None:
        """Release what this client holds and disconnect."""
        ...
