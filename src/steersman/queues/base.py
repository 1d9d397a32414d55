"""The client side of the queues: send inputs, get results, know what is still out."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from steersman.brokers.base import Broker
from steersman.brokers.local import LocalBroker
from steersman.errors import (
    ConfigurationError,
    ResultTimeout,
    RunAborted,
    UnknownMethodError,
    UnknownTopicError,
)
from steersman.flag import Flag, deadline_after, wait_for
from steersman.task import (
    PRIORITIES,
    ResourceRequest,
    Result,
    check_task_info,
    dumps,
    new_task_id,
)

logger = logging.getLogger(__name__)

_TASK_OPTIONS = frozenset(
    {
        "task_info",
        "resources",
        "priority",
        "timeout",
        "max_retries",
        "retry_on_exception",
        "keep_inputs",
    }
)
"""Options of a submission that every task of a batch shares."""

DEFAULT_QUEUE = "default"
DEFAULT_TOPIC = "default"


class Queues:
    """Where a thinker sends tasks and receives results (Colmena's ``ColmenaQueues``).

    Methods and topics are declared up front, so a typo is an error at ``send_inputs``
    instead of a task that never runs::

        queues = Queues(methods={"simulate": "sim", "train": "ml"}, topics=["sim", "ml"])

    ``methods`` maps each method name to the queue that carries its tasks (a plain list puts
    them all on the ``default`` queue). Workers serve queues; a task's ``priority`` picks the
    lane of that queue (``sim:high`` before ``sim`` before ``sim:low``). The topic
    ``default`` always exists. Without a ``broker`` the embedded :class:`LocalBroker` is used.
    """

    def __init__(
        self,
        methods: Mapping[str, str] | Iterable[str],
        topics: Iterable[str] = (),
        broker: Broker | None = None,
        *,
        keep_inputs: bool = True,
        max_retries: int = 3,
    ) -> None:
        if isinstance(methods, Mapping):
            self.methods: dict[str, str] = {str(m): str(q) for m, q in methods.items()}
        else:
            self.methods = {str(m): DEFAULT_QUEUE for m in methods}
        if not self.methods:
            raise ConfigurationError(
                "declare at least one method, e.g. Queues(methods=['simulate'])"
            )
        for name, queue in self.methods.items():
            if not queue or ":" in queue:
                raise ConfigurationError(
                    f"method {name!r} names queue {queue!r}; queue names are non-empty and "
                    "have no ':' (it separates the priority lane, as in 'sim:high')"
                )
        self.topics: tuple[str, ...] = tuple(dict.fromkeys([DEFAULT_TOPIC, *topics]))
        self.broker: Broker = broker if broker is not None else LocalBroker()
        self.keep_inputs = keep_inputs
        self.max_retries = max_retries

        self._count_cond = threading.Condition()
        self._active: dict[str, int] = dict.fromkeys(self.topics, 0)
        self._outstanding: dict[str, str] = {}  # task_id -> topic, for tasks not yet complete
        self._abort: Flag | None = None
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        """Worker pools started on these queues in this process."""
        # Ids of tasks sent earlier that _track_earlier is asking the broker about, and those
        # of them whose final result arrived meanwhile (not to be counted after all).
        self._looking: set[str] = set()
        self._arrived: set[str] = set()

    # ----------------------------------------------------------------------- declarations
    @property
    def queue_names(self) -> list[str]:
        """The queues that the declared methods use, in declaration order."""
        return list(dict.fromkeys(self.methods.values()))

    def queue_of(self, method: str) -> str:
        """The queue that carries tasks of ``method``."""
        try:
            return self.methods[method]
        except KeyError:
            raise UnknownMethodError(
                f"method {method!r} is not declared; declared methods: "
                f"{', '.join(sorted(self.methods))}"
            ) from None

    def _check_topic(self, topic: str) -> None:
        if topic not in self._active:
            raise UnknownTopicError(
                f"topic {topic!r} is not declared; declared topics: {', '.join(self.topics)}"
            )

    # -------------------------------------------------------------------------- sending
    def send_inputs(
        self,
        *input_args: Any,
        method: str,
        input_kwargs: Mapping[str, Any] | None = None,
        topic: str = DEFAULT_TOPIC,
        task_info: Mapping[str, Any] | None = None,
        resources: ResourceRequest | Mapping[str, Any] | None = None,
        priority: str = "normal",
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_on_exception: bool = False,
        keep_inputs: bool | None = None,
        key: str | None = None,
    ) -> str:
        """Submit a task and return its id.

        The task is acknowledged, and safe in the broker, when this returns. ``key`` makes the
        submission idempotent: a task with the same key that is queued, running or done is
        not run again and its id is returned. ``max_retries`` bounds re-runs after a lost
        worker (and after exceptions, if ``retry_on_exception``). ``timeout`` is in seconds of
        running time; past it the worker process is killed and the Result says ``timeout``.
        """
        task = self._make_task(
            input_args,
            input_kwargs,
            method=method,
            topic=topic,
            task_info=task_info,
            resources=resources,
            priority=priority,
            timeout=timeout,
            max_retries=max_retries,
            retry_on_exception=retry_on_exception,
            keep_inputs=keep_inputs,
            key=key,
        )
        return self._submit([task])[0]

    def send_batch(
        self,
        inputs: Iterable[Any],
        *,
        method: str,
        topic: str = DEFAULT_TOPIC,
        keys: Iterable[str | None] | None = None,
        **options: Any,
    ) -> list[str]:
        """Submit one task per item of ``inputs`` in few round trips; return their ids.

        An item that is a tuple is the task's positional inputs; anything else is its one
        input. ``keys``, if given, is one key (or ``None``) per item; ``input_kwargs``, if
        given, is one mapping for every task; the other ``options`` are those of
        :meth:`send_inputs`. Every task is acknowledged when this returns.
        """
        input_kwargs = options.pop("input_kwargs", None)
        if "key" in options:
            raise ConfigurationError("send_batch takes keys= (one per item), not key=")
        unknown = set(options) - _TASK_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"send_batch got unknown option(s) {', '.join(sorted(unknown))}; known: "
                f"keys, input_kwargs, {', '.join(sorted(_TASK_OPTIONS))}"
            )
        items = list(inputs)
        key_list = [None] * len(items) if keys is None else list(keys)
        if len(key_list) != len(items):
            raise ConfigurationError(f"send_batch got {len(items)} inputs but {len(key_list)} keys")
        make = self._task_maker(method=method, topic=topic, **options)
        tasks = [
            make(item if isinstance(item, tuple) else (item,), input_kwargs, key)
            for item, key in zip(items, key_list, strict=True)
        ]
        return self._submit(tasks)

    def _make_task(
        self,
        input_args: tuple[Any, ...],
        input_kwargs: Mapping[str, Any] | None,
        *,
        key: str | None = None,
        **options: Any,
    ) -> Result:
        return self._task_maker(**options)(input_args, input_kwargs, key)

    def _task_maker(
        self,
        *,
        method: str,
        topic: str = DEFAULT_TOPIC,
        task_info: Mapping[str, Any] | None = None,
        resources: ResourceRequest | Mapping[str, Any] | None = None,
        priority: str = "normal",
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_on_exception: bool = False,
        keep_inputs: bool | None = None,
    ) -> Callable[[tuple[Any, ...], Mapping[str, Any] | None, str | None], Result]:
        """Check the options of a submission once; return what makes each of its tasks."""
        queue = self.queue_of(method)
        self._check_topic(topic)
        if priority not in PRIORITIES:
            raise ConfigurationError(
                f"priority {priority!r} is not one of {', '.join(map(repr, PRIORITIES))}"
            )
        if timeout is not None and (
            not isinstance(timeout, int | float) or not 0 < timeout < math.inf
        ):
            raise ConfigurationError(
                f"timeout must be positive, finite seconds (or None for none), got {timeout!r}"
            )
        retries = self.max_retries if max_retries is None else max_retries
        if not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"max_retries must be a whole number >= 0, got {retries!r}")
        info = dict(task_info or {})
        check_task_info(info)
        if resources is not None and not isinstance(resources, ResourceRequest):
            try:
                ResourceRequest(**resources)
            except TypeError as error:
                raise ConfigurationError(
                    f"bad resources {dict(resources)!r}: {error}; known fields: node_count, "
                    "cpu_processes, cpu_threads, slots"
                ) from None
        keep = self.keep_inputs if keep_inputs is None else keep_inputs
        what = f"the inputs of a {method!r} task"

        def make(
            input_args: tuple[Any, ...], input_kwargs: Mapping[str, Any] | None, key: str | None
        ) -> Result:
            created = time.time()
            if key is not None and not isinstance(key, str):
                raise ConfigurationError(f"key must be a string, got {type(key).__name__} {key!r}")
            if resources is None:
                request = ResourceRequest()
            elif isinstance(resources, ResourceRequest):
                request = resources
            else:
                request = ResourceRequest(**resources)
            start = time.perf_counter()
            inputs = dumps((input_args, dict(input_kwargs or {})), what=what)
            task = Result(
                task_id=new_task_id(),
                key=key,
                method=method,
                queue=queue,
                topic=topic,
                inputs=inputs,
                keep_inputs=keep,
                resources=request,
                priority=priority,  # type: ignore[arg-type]
                timeout=timeout,
                max_retries=retries,
                retry_on_exception=retry_on_exception,
                task_info=dict(info),  # each its own: a thinker may change one result's
            )
            task.serialization.serialize_inputs = time.perf_counter() - start
            task.serialization.inputs_bytes = len(inputs)
            task.timestamps.created = created
            return task

        return make

    def _submit(self, tasks: list[Result]) -> list[str]:
        # Count the tasks before the broker sees them, so a result can never arrive "early".
        now = time.time()
        with self._count_cond:
            for task in tasks:
                task.timestamps.queued = now
                self._active[task.topic] += 1
                self._outstanding[task.task_id] = task.topic
        try:
            outcomes = self.broker.put_tasks(tasks)
        except BaseException as error:
            # A broker that queued part of a batch before failing says how much: those
            # results will come, so they stay counted.
            done = getattr(error, "submitted", [])
            for task, (_, accepted) in zip(tasks, done, strict=False):
                if not accepted:
                    self._forget(task.task_id)
            for task in tasks[len(done) :]:
                self._forget(task.task_id)
            raise
        ids = []
        earlier = []
        for task, (task_id, accepted) in zip(tasks, outcomes, strict=True):
            if not accepted:
                self._forget(task.task_id)
                logger.debug("task with key %r already submitted as %s", task.key, task_id)
                earlier.append(task_id)
            ids.append(task_id)
        if earlier:
            self._track_earlier(earlier)
        return ids

    def _track_earlier(self, task_ids: list[str]) -> None:
        """Count tasks sent earlier under the same keys, maybe by a thinker that ran before
        this one on the same namespace, that have no final result yet: theirs will come."""
        pending = getattr(self.broker, "pending", None)
        with self._count_cond:
            unknown = [t for t in task_ids if t not in self._outstanding]
            self._looking.update(unknown)
        if pending is None or not unknown:
            return
        try:
            found = pending(unknown)
        finally:
            with self._count_cond:
                self._looking.difference_update(unknown)
                arrived = self._arrived.intersection(unknown)
                self._arrived.difference_update(unknown)
        with self._count_cond:
            for task_id, topic in found.items():
                counted = task_id in self._outstanding or task_id in arrived
                if not counted and topic in self._active:
                    self._outstanding[task_id] = topic
                    self._active[topic] += 1

    def _forget(self, task_id: str) -> None:
        with self._count_cond:
            if task_id in self._looking:
                self._arrived.add(task_id)
            topic = self._outstanding.pop(task_id, None)
            if topic is not None:
                self._active[topic] -= 1
                self._count_cond.notify_all()

    # ------------------------------------------------------------------------ receiving
    def get_result(self, topic: str = DEFAULT_TOPIC, timeout: float | None = None) -> Result:
        """Block until a result of ``topic`` arrives and return it.

        Raises :class:`ResultTimeout` if ``timeout`` seconds pass first, and
        :class:`RunAborted` if the thinker running this is stopping because of a failure.
        """
        result = self._get_result(topic, timeout, stop=self._abort)
        if result is None:
            raise ResultTimeout(
                f"no result on topic {topic!r} within {timeout} s "
                f"({self.active_count(topic)} task(s) of that topic still out)"
            )
        return result

    def _get_result(
        self, topic: str, timeout: float | None, stop: threading.Event | None
    ) -> Result | None:
        """Like :meth:`get_result`, returning ``None`` on timeout or when ``stop`` is set.

        Raises :class:`RunAborted` if the wait ended because the run is aborting.
        """
        self._check_topic(topic)
        result = self.broker.get_result(topic, timeout=timeout, stop=stop)
        if result is None:
            abort = self._abort
            if abort is not None and abort.is_set():
                raise RunAborted("the run is stopping; no more results will be waited for")
            return None
        result.timestamps.result_received = time.time()
        if result.complete:
            self._forget(result.task_id)
        return result

    # --------------------------------------------------------------------------- counts
    def active_count(self, topic: str | None = None) -> int:
        """Tasks sent by this client whose final result has not been received yet."""
        with self._count_cond:
            if topic is None:
                return len(self._outstanding)
            return self._active[topic]

    @property
    def active_tasks(self) -> int:
        return self.active_count()

    def wait_until_done(self, timeout: float | None = None) -> bool:
        """Block until every task sent by this client has had its result received.

        Returns False if ``timeout`` seconds passed first. Results must be taken with
        :meth:`get_result` (usually by a result processor) for this to return.
        """
        with self._count_cond:
            return wait_for(
                self._count_cond,
                lambda: not self._outstanding,
                deadline_after(timeout),
                self._abort,
            )

    # --------------------------------------------------------------------------- cancel
    def cancel_pending(self) -> list[Result]:
        """Cancel this client's tasks that no worker has taken yet; return them."""
        with self._count_cond:
            ids = set(self._outstanding)
        cancelled = self.broker.cancel_queued(ids)
        for task in cancelled:
            self._forget(task.task_id)
        return cancelled

    # ---------------------------------------------------------------------------- close
    def close(self) -> None:
        """Release what the broker holds for this client (the Redis broker hands back
        results it took but did not return, and acknowledges the rest)."""
        self.broker.close()

    def __enter__(self) -> Queues:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
