"""ResourceCounter: slots of compute shared among task types, moved between them as needs change."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from steersman.errors import ConfigurationError, UnknownTaskTypeError
from steersman.flag import Flag, deadline_after, wait_for

logger = logging.getLogger(__name__)


class ResourceCounter:
    """Track how many slots each task type owns (*allocated*) and how many are free (*available*).

    Slots start unallocated, in the pool named ``None``. :meth:`reallocate` moves slots
    between pools, :meth:`acquire` takes free slots of a pool for a task and :meth:`release`
    gives them back. Requests are served first come, first served and all or nothing, so a
    large request is never starved by a stream of small ones and two reallocations drawing
    from the same pool cannot deadlock by each holding part of what it needs. All methods are
    thread-safe; blocked calls wake the moment slots free up or their ``cancel_if`` is set.
    """

    def __init__(self, total_slots: int, task_types: Iterable[str] = ()) -> None:
        types = list(task_types)
        if None in types:
            raise ConfigurationError("None is the name of the unallocated pool; pick another name")
        if total_slots < 0:
            raise ConfigurationError(f"total_slots must be 0 or more, got {total_slots}")
        self.total_slots = total_slots
        self.task_types: tuple[str, ...] = tuple(types)
        pools: list[str | None] = [None, *types]
        self._cond = threading.Condition()
        self._allocated: dict[str | None, int] = dict.fromkeys(pools, 0)
        self._available: dict[str | None, int] = dict.fromkeys(pools, 0)
        self._waiters: dict[str | None, deque[object]] = {p: deque() for p in pools}
        self._allocated[None] = self._available[None] = total_slots
        self._abort: Flag | None = None

    # ------------------------------------------------------------------------- reading
    def _check(self, task: str | None) -> None:
        if task not in self._allocated:
            raise UnknownTaskTypeError(
                f"task type {task!r} is unknown; known: None (unallocated), "
                f"{', '.join(map(repr, self.task_types))}"
            )

    @property
    def unallocated_slots(self) -> int:
        """Slots that belong to no task type."""
        with self._cond:
            return self._allocated[None]

    def allocated_slots(self, task: str | None) -> int:
        """Slots that belong to ``task``, in use or not."""
        self._check(task)
        with self._cond:
            return self._allocated[task]

    def available_slots(self, task: str | None) -> int:
        """Slots of ``task`` that are free to acquire now."""
        self._check(task)
        with self._cond:
            return self._available[task]

    # ------------------------------------------------------------------------- changing
    def acquire(
        self,
        task: str | None,
        n_slots: int,
        timeout: float = -1,
        cancel_if: threading.Event | None = None,
    ) -> bool:
        """Take ``n_slots`` free slots of ``task``, blocking until all are free at once.

        Returns False if ``timeout`` seconds (negative: forever) pass or ``cancel_if`` is set
        first; nothing is taken then.
        """
        self._check(task)
        if n_slots < 0:
            raise ConfigurationError(f"n_slots must be 0 or more, got {n_slots}")
        if n_slots > self.total_slots:
            raise ConfigurationError(
                f"cannot acquire {n_slots} slots for {task!r}: there are only "
                f"{self.total_slots} in all"
            )
        with self._cond:
            return self._take_in_turn(task, lambda: n_slots, timeout, cancel_if) is not None

    def release(
        self,
        task: str | None = None,
        n_slots: int = 1,
        rerequest: bool = False,
        timeout: float = -1,
    ) -> bool | None:
        """Mark ``n_slots`` of ``task`` free again; with ``rerequest``, acquire as many anew
        and return whether that succeeded."""
        self._check(task)
        if not isinstance(n_slots, int) or n_slots < 0:
            raise ConfigurationError(f"n_slots must be a whole number >= 0, got {n_slots!r}")
        with self._cond:
            if self._available[task] + n_slots > self._allocated[task]:
                raise ConfigurationError(
                    f"releasing {n_slots} slot(s) of {task!r} would leave "
                    f"{self._available[task] + n_slots} free of {self._allocated[task]} "
                    "allocated; release only what was acquired"
                )
            self._available[task] += n_slots
            self._cond.notify_all()
        if rerequest:
            return self.acquire(task, n_slots, timeout=timeout)
        return None

    def reallocate(
        self,
        task_from: str | None,
        task_to: str | None,
        n_slots: int | str,
        block: bool = True,
        callback: Callable[[], Any] | None = None,
        timeout: float = -1,
        cancel_if: threading.Event | None = None,
    ) -> bool:
        """Move ``n_slots`` (or ``"all"`` allocated) slots from ``task_from`` to ``task_to``.

        The slots are taken from ``task_from`` as they become free (as :meth:`acquire` does)
        and arrive free in ``task_to``. With ``block=False`` the move happens in a background
        thread that calls ``callback`` when done, and this returns True at once.
        """
        self._check(task_from)
        self._check(task_to)
        if task_from == task_to:
            raise ConfigurationError(f"cannot move slots from {task_from!r} to itself")
        if n_slots != "all" and not isinstance(n_slots, int):
            raise ConfigurationError(f"n_slots must be a count or 'all', got {n_slots!r}")
        if not block:

            def move() -> None:
                self.reallocate(task_from, task_to, n_slots, True, None, timeout, cancel_if)
                if callback is not None:
                    callback()

            threading.Thread(target=move, name="steersman-reallocate", daemon=True).start()
            return True
        with self._cond:
            # "all" is counted when this request's turn comes: requests ahead of it may
            # move some slots away meanwhile.
            want = (lambda: self._allocated[task_from]) if n_slots == "all" else lambda: n_slots
            count = self._take_in_turn(task_from, want, timeout, cancel_if)
            if count is None:
                return False
            self._allocated[task_from] -= count
            self._allocated[task_to] += count
            self._available[task_to] += count
            self._cond.notify_all()
        logger.info("moved %d slot(s) from %r to %r", count, task_from, task_to)
        return True

    def _take_in_turn(
        self,
        task: str | None,
        want: Callable[[], int],
        timeout: float,
        cancel_if: threading.Event | None,
    ) -> int | None:
        """Wait in line (first come, first served) until ``want()`` slots of ``task`` are
        free, then take them; return how many, or None if the wait ended first. Called
        holding the lock."""
        ticket = object()
        line = self._waiters[task]
        line.append(ticket)
        try:
            if not wait_for(
                self._cond,
                lambda: line[0] is ticket and self._available[task] >= want(),
                deadline_after(timeout),
                cancel_if,
                self._abort,
            ):
                return None
            count = want()
            self._available[task] -= count
            return count
        finally:
            line.remove(ticket)
            self._cond.notify_all()

    def snapshot(self) -> dict[str | None, tuple[int, int]]:
        """``{task type: (allocated, available)}``, read atomically."""
        with self._cond:
            return {t: (self._allocated[t], self._available[t]) for t in self._allocated}

    def __repr__(self) -> str:
        pools = ", ".join(f"{t!r}: {a - f}/{a} busy" for t, (a, f) in self.snapshot().items())
        return f"ResourceCounter({self.total_slots} slots; {pools})"
