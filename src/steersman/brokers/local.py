"""The embedded broker: tasks and results held in this process, no server needed.

It is the default. Worker pools started in the same process take tasks from it directly;
waits block on condition variables and wake the moment something arrives.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Sequence

from steersman.flag import deadline_after, wait_for
from steersman.task import Result


class LocalBroker:
    """In-process broker: per-lane task deques and per-topic result deques."""

    def __init__(self) -> None:
        self._tasks_cond = threading.Condition()
        self._lanes: defaultdict[str, deque[Result]] = defaultdict(deque)
        # One lock for all results, one condition per topic so a result wakes only its readers.
        self._results_lock = threading.RLock()
        self._result_conds: dict[str, threading.Condition] = {}
        self._topics: defaultdict[str, deque[Result]] = defaultdict(deque)
        self._keys: dict[str, str] = {}
        self._keys_lock = threading.Lock()

    # ------------------------------------------------------------------------------ tasks
    def put_task(self, task: Result) -> tuple[str, bool]:
        if task.key is not None:
            with self._keys_lock:
                first = self._keys.setdefault(task.key, task.task_id)
            if first != task.task_id:
                return first, False
        with self._tasks_cond:
            self._lanes[task.lane].append(task)
            # Pools serving different queues share this condition: wake them all.
            self._tasks_cond.notify_all()
        return task.task_id, True

    def put_tasks(self, tasks: Sequence[Result]) -> list[tuple[str, bool]]:
        return [self.put_task(task) for task in tasks]

    def _pop_first(self, lanes: Sequence[str]) -> Result | None:
        for lane in lanes:
            queue = self._lanes.get(lane)
            if queue:
                return queue.popleft()
        return None

    def get_task(
        self,
        lanes: Sequence[str],
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result | None:
        found: list[Result] = []

        def ready() -> bool:
            task = self._pop_first(lanes)
            if task is None:
                return False
            found.append(task)
            return True

        with self._tasks_cond:
            if not wait_for(self._tasks_cond, ready, deadline_after(timeout), stop):
                return None
        return found[0]

    def get_tasks(
        self,
        lanes: Sequence[str],
        max_count: int = 1,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> list[Result]:
        first = self.get_task(lanes, timeout, stop)
        if first is None:
            return []
        found = [first]
        with self._tasks_cond:
            while len(found) < max_count:
                task = self._pop_first(lanes)
                if task is None:
                    break
                found.append(task)
        return found

    def requeue(self, task: Result, front: bool = True) -> None:
        with self._tasks_cond:
            if front:
                self._lanes[task.lane].appendleft(task)
            else:
                self._lanes[task.lane].append(task)
            self._tasks_cond.notify_all()

    def cancel_queued(self, task_ids: set[str]) -> list[Result]:
        removed: list[Result] = []
        with self._tasks_cond:
            for lane, queue in self._lanes.items():
                keep = deque()
                for task in queue:
                    (removed if task.task_id in task_ids else keep).append(task)
                self._lanes[lane] = keep
        with self._keys_lock:
            for task in removed:
                if task.key is not None and self._keys.get(task.key) == task.task_id:
                    del self._keys[task.key]
        return removed

    def queue_depths(self) -> dict[str, int]:
        with self._tasks_cond:
            return {lane: len(queue) for lane, queue in self._lanes.items()}

    # ---------------------------------------------------------------------------- results
    def _result_cond(self, topic: str) -> threading.Condition:
        cond = self._result_conds.get(topic)
        if cond is None:
            with self._results_lock:
                cond = self._result_conds.setdefault(topic, threading.Condition(self._results_lock))
        return cond

    def put_result(self, result: Result) -> None:
        cond = self._result_cond(result.topic)
        with cond:
            self._topics[result.topic].append(result)
            cond.notify_all()

    def put_results(self, results: Sequence[Result]) -> None:
        for result in results:
            self.put_result(result)

    def get_result(
        self,
        topic: str,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result | None:
        cond = self._result_cond(topic)
        with cond:
            queue = self._topics[topic]
            if not wait_for(cond, lambda: bool(queue), deadline_after(timeout), stop):
                return None
            return queue.popleft()

    def close(self) -> None:
        """Nothing to release: the embedded broker lives and dies with this process."""
