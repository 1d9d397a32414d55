"""An Event that can wake waiters blocked somewhere else, so no wait ever has to poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Flag(threading.Event):
    """A :class:`threading.Event` that also calls registered wakers when it is set.

    steersman blocks on conditions (a result arriving, slots freeing up); a Flag passed as
    ``stop`` or ``cancel_if`` wakes such a wait the moment it is set instead of being
    checked on a timer.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wakers: dict[int, Callable[[], None]] = {}
        self._wakers_lock = threading.Lock()
        self._next_waker = 0

    def set(self) -> None:
        super().set()
        with self._wakers_lock:
            wakers = list(self._wakers.values())
        for wake in wakers:
            wake()

    def add_waker(self, wake: Callable[[], None]) -> int:
        with self._wakers_lock:
            self._next_waker += 1
            self._wakers[self._next_waker] = wake
            return self._next_waker

    def remove_waker(self, token: int) -> None:
        with self._wakers_lock:
            self._wakers.pop(token, None)


def as_flag(event: threading.Event) -> Flag:
    """Turn a plain :class:`threading.Event` into a :class:`Flag` in place: the same object,
    so whoever else holds it and sets it wakes the waits on it at once."""
    if isinstance(event, Flag):
        return event
    if type(event) is not threading.Event:
        raise TypeError(f"{type(event).__name__} is not a threading.Event or a Flag")
    # The Flag's own state first: a set() from another thread may come the moment the
    # class changes.
    event._wakers = {}  # type: ignore[attr-defined]
    event._wakers_lock = threading.Lock()  # type: ignore[attr-defined]
    event._next_waker = 0  # type: ignore[attr-defined]
    event.__class__ = Flag
    return event  # type: ignore[return-value]


# A plain threading.Event cannot wake another condition when it is set; waits that are given
# one re-check it this often. Use a Flag (``thinker.done`` is one) to avoid that.
PLAIN_EVENT_CHECK_SECONDS = 0.05


def wait_for(
    cond: threading.Condition,
    predicate: Callable[[], bool],
    deadline: float | None,
    *stops: threading.Event | None,
) -> bool:
    """Wait on ``cond`` (held by the caller) until ``predicate()`` is true.

    Returns True if the predicate holds, False if the monotonic ``deadline`` passed or one of
    ``stops`` was set first. Flags among ``stops`` wake the wait at once.
    """
    flags = [s for s in stops if s is not None]
    if predicate():
        return True
    if any(s.is_set() for s in flags):
        return False

    def wake() -> None:
        with cond:
            cond.notify_all()

    tokens = [(s, s.add_waker(wake)) for s in flags if isinstance(s, Flag)]
    has_plain = any(not isinstance(s, Flag) for s in flags)
    try:
        while True:
            if predicate():
                return True
            if any(s.is_set() for s in flags):
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if has_plain:
                remaining = (
                    PLAIN_EVENT_CHECK_SECONDS
                    if remaining is None
                    else min(remaining, PLAIN_EVENT_CHECK_SECONDS)
                )
            cond.wait(remaining)
    finally:
        for flag, token in tokens:
            flag.remove_waker(token)


def deadline_after(timeout: float | None) -> float | None:
    """Monotonic deadline ``timeout`` s from now; ``None`` or a negative timeout waits forever."""
    if timeout is None or timeout < 0:
        return None
    return time.monotonic() + timeout
