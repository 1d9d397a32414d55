"""BaseThinker and the decorators that turn its methods into agents (Colmena's Thinker API).

Each decorated method runs in its own thread when :meth:`BaseThinker.run` is called:

- ``@agent``: runs once; when it returns, ``self.done`` is set (unless ``startup=True``).
- ``@result_processor(topic=...)``: called with each Result of that topic.
- ``@task_submitter(task_type=..., n_slots=...)``: called each time that many slots of that
  task type are acquired from ``self.rec``.
- ``@event_responder(event_name=...)``: called each time the event attribute is set,
  optionally borrowing slots from one task type while it runs.

No agent polls: every wait wakes the moment its condition or ``self.done`` changes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

from steersman.errors import ConfigurationError, RunAborted
from steersman.flag import Flag, as_flag, wait_for
from steersman.queues.base import Queues
from steersman.steer.resources import ResourceCounter
from steersman.task import Result

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
AgentKind = Literal["agent", "result_processor", "task_submitter", "event_responder"]
_ATTRIBUTE = "_steersman_agent"


@dataclass(frozen=True)
class AgentSpec:
    """How the thinker runs one decorated method."""

    kind: AgentKind
    startup: bool = False
    topic: str = "default"
    task_type: str | None = None
    n_slots: int | str = 1
    event_name: str = ""
    reallocate_resources: bool = False
    gather_from: str | None = None
    gather_to: str | None = None
    disperse_to: str | None = None
    max_slots: int | str | None = None
    slot_step: int = 1


def _mark(func: F | None, spec: AgentSpec) -> F | Callable[[F], F]:
    def decorate(f: F) -> F:
        if not callable(f):
            raise ConfigurationError(f"@{spec.kind} decorates methods, not {f!r}")
        setattr(f, _ATTRIBUTE, spec)
        return f

    return decorate if func is None else decorate(func)


@overload
def agent(func: F) -> F: ...
@overload
def agent(func: None = None, *, startup: bool = False) -> Callable[[F], F]: ...
def agent(func=None, *, startup=False):
    """Run this method in its own thread when the thinker starts.

    When it returns the run winds down (``self.done`` is set), unless ``startup=True``:
    a startup agent does set-up work and the run goes on without it.
    """
    return _mark(func, AgentSpec(kind="agent", startup=startup))


@overload
def result_processor(func: F) -> F: ...
@overload
def result_processor(func: None = None, *, topic: str = "default") -> Callable[[F], F]: ...
def result_processor(func=None, *, topic="default"):
    """Call this method with every Result that arrives on ``topic``.

    When the run ends normally it keeps going until every task already sent to ``topic``
    has come back, so no result is left unprocessed.
    """
    return _mark(func, AgentSpec(kind="result_processor", topic=topic))


@overload
def task_submitter(func: F) -> F: ...
@overload
def task_submitter(
    func: None = None, *, task_type: str | None = None, n_slots: int | str = 1
) -> Callable[[F], F]: ...
def task_submitter(func=None, *, task_type=None, n_slots=1):
    """Call this method each time ``n_slots`` slots of ``task_type`` are acquired.

    ``n_slots`` is a count or the name of a thinker attribute holding one (read before every
    request). The method owns the slots: release them (usually in a result processor) when
    the task it submitted is done.
    """
    return _mark(func, AgentSpec(kind="task_submitter", task_type=task_type, n_slots=n_slots))


@overload
def event_responder(func: F) -> F: ...
@overload
def event_responder(
    func: None = None,
    *,
    event_name: str,
    reallocate_resources: bool = False,
    gather_from: str | None = None,
    gather_to: str | None = None,
    disperse_to: str | None = None,
    max_slots: int | str | None = None,
    slot_step: int = 1,
) -> Callable[[F], F]: ...
def event_responder(
    func=None,
    *,
    event_name="",
    reallocate_resources=False,
    gather_from=None,
    gather_to=None,
    disperse_to=None,
    max_slots=None,
    slot_step=1,
):
    """Call this method each time the thinker attribute ``event_name`` (an Event) is set.

    With ``reallocate_resources``, slots move from ``gather_from`` to ``gather_to``, ``slot_step``
    at a time and up to ``max_slots`` (a count or an attribute name) held by ``gather_to``,
    while the method runs; when it returns, every slot of ``gather_to`` moves to
    ``disperse_to``. The event is cleared once every responder to it has finished.
    """
    if func is not None and not callable(func):
        raise ConfigurationError("use @event_responder(event_name='...')")
    spec = AgentSpec(
        kind="event_responder",
        event_name=event_name,
        reallocate_resources=reallocate_resources,
        gather_from=gather_from,
        gather_to=gather_to,
        disperse_to=disperse_to,
        max_slots=max_slots,
        slot_step=slot_step,
    )
    return _mark(func, spec)


class _AgentLocal(threading.local):
    """Per-agent-thread storage (``self.local_details``): its name and logger, and anything
    an agent wants to keep away from the others."""

    name: str | None = None
    logger: logging.Logger | None = None


@dataclass
class AgentFailure:
    agent: str
    error: BaseException


SIGINT_CHECK_SECONDS = 0.1
"""How often a thinker's run() in the main thread looks for a Ctrl-C."""


def _catch_sigint(interrupted: list[int]):
    """In the main thread, make Ctrl-C append to ``interrupted`` instead of raising
    KeyboardInterrupt wherever the main thread happens to be. Returns whether it did, and
    the previous handler (not in the main thread, Python delivers no signals anyway)."""
    if threading.current_thread() is not threading.main_thread():
        return False, None
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: interrupted.append(signum))
    except ValueError:
        return False, None
    return True, signal.default_int_handler if previous is None else previous


class BaseThinker(threading.Thread):
    """Steers a campaign: its decorated methods are agents that run as threads.

    Shared by every agent: ``self.queues`` (send tasks, get results), ``self.rec`` (the
    :class:`ResourceCounter`, if given), ``self.done`` (set when the run is winding down),
    ``self.logger`` (a logger named after the running agent) and ``self.local_details``
    (thread-local storage). Call :meth:`run` to run the agents and block until they finish,
    or ``start()``/``join()`` to run them from a background thread.

    If an agent raises, every agent is stopped, tasks not yet started are cancelled and
    :meth:`run` re-raises the error, noting which agent raised it.
    """

    def __init__(
        self,
        queues: Queues,
        resource_counter: ResourceCounter | None = None,
        daemon: bool = True,
        *,
        shutdown_grace: float = 10.0,
        **thread_options: Any,
    ) -> None:
        super().__init__(daemon=daemon, **thread_options)
        self.queues = queues
        self.rec = resource_counter
        self.done = Flag()
        self.local_details = _AgentLocal()
        self.shutdown_grace = shutdown_grace
        self.cancelled_tasks: list[Result] = []
        self.failure: AgentFailure | None = None
        self._abort = Flag()
        self._state = threading.Condition()
        self._running_agents = 0
        self._barriers: dict[str, threading.Barrier] = {}

    # ------------------------------------------------------------------------- overridable
    def prepare_agent(self) -> None:
        """Runs in each agent's thread before the agent starts (open per-thread resources)."""

    def tear_down_agent(self) -> None:
        """Runs in each agent's thread after the agent ends, even if it raised."""

    def make_logger(self, name: str | None = None) -> logging.Logger:
        """A logger for the thinker, or for one of its agents."""
        base = f"{type(self).__module__}.{type(self).__name__}"
        return logging.getLogger(base if name is None else f"{base}.{name}")

    @property
    def logger(self) -> logging.Logger:
        """The logger of the agent running in this thread (named after it)."""
        own = self.local_details.logger
        return own if own is not None else self.make_logger()

    @classmethod
    def list_agents(cls) -> list[tuple[str, Callable[..., Any], AgentSpec]]:
        """Every decorated method, as ``(name, function, spec)``, in definition order."""
        found: dict[str, tuple[str, Callable[..., Any], AgentSpec]] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                spec = getattr(member, _ATTRIBUTE, None)
                if isinstance(spec, AgentSpec):
                    found[name] = (name, member, spec)
                elif name in found:
                    del found[name]  # overridden by an undecorated method
        return list(found.values())

    # ------------------------------------------------------------------------------ run
    def run(self) -> None:
        """Run every agent and return when all have finished; re-raise an agent's error."""
        agents = self.list_agents()
        if not agents:
            raise ConfigurationError(f"{type(self).__name__} has no agents; decorate a method")
        for name, _, spec in agents:
            self._check_spec(name, spec)
        topics = [s.topic for _, _, s in agents if s.kind == "result_processor"]
        doubled = sorted({t for t in topics if topics.count(t) > 1})
        if doubled:
            raise ConfigurationError(
                f"{type(self).__name__} has several result processors for topic(s) "
                f"{', '.join(map(repr, doubled))}; each result goes to one of them, so give "
                "each processor its own topic"
            )
        self.done.clear()
        self._abort.clear()
        self.failure = None
        self.cancelled_tasks = []
        self._barriers = {}
        for _, _, spec in agents:
            if spec.kind == "event_responder" and spec.event_name not in self._barriers:
                event: Flag = getattr(self, spec.event_name)
                count = sum(
                    1
                    for _, _, s in agents
                    if s.kind == "event_responder" and s.event_name == spec.event_name
                )
                self._barriers[spec.event_name] = threading.Barrier(count, action=event.clear)
        threads = [
            threading.Thread(
                target=self._launch,
                args=(name, func, spec),
                name=f"{type(self).__name__}.{name}",
                daemon=True,
            )
            for name, func, spec in agents
        ]
        self._running_agents = len(threads)
        self.queues._abort = self._abort
        if self.rec is not None:
            self.rec._abort = self._abort
        self.make_logger().info("starting %d agents", len(threads))
        interrupted: list[int] = []
        caught, previous = _catch_sigint(interrupted)
        try:
            for thread in threads:
                thread.start()
            self._wait_for_agents(interrupted if caught else None)
            if interrupted:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._stop_early("interrupted (Ctrl-C)")
            raise
        finally:
            if caught:
                signal.signal(signal.SIGINT, previous)
            if self._abort.is_set():
                self._join(threads, self.shutdown_grace)
            else:
                self._join(threads, None)
            self.queues._abort = None
            if self.rec is not None:
                self.rec._abort = None
        if self.failure is not None:
            error = self.failure.error
            error.add_note(f"raised by agent {self.failure.agent!r} of {type(self).__name__}")
            if self.cancelled_tasks:
                error.add_note(
                    f"{len(self.cancelled_tasks)} task(s) not yet started were cancelled"
                )
            raise error
        self.make_logger().info("all agents finished")

    def _wait_for_agents(self, interrupted: list[int] | None) -> None:
        def finished() -> bool:
            return self._running_agents == 0 or bool(interrupted)

        with self._state:
            if interrupted is None:
                wait_for(self._state, finished, None, self._abort)
                return
            # Ctrl-C only marks `interrupted` (an exception raised at an arbitrary point
            # could leave a lock held); the main thread looks at it this often.
            while not wait_for(
                self._state, finished, time.monotonic() + SIGINT_CHECK_SECONDS, self._abort
            ):
                if self._abort.is_set():
                    return

    def _join(self, threads: list[threading.Thread], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.make_logger().error(
                "agents still running %.1f s after the run stopped: %s (blocked outside "
                "steersman's waits?)",
                timeout or 0.0,
                ", ".join(stuck),
            )

    def _check_spec(self, name: str, spec: AgentSpec) -> None:
        """Check a spec against this thinker before any thread starts."""
        where = f"agent {name!r} of {type(self).__name__}"
        if spec.kind == "result_processor" and spec.topic not in self.queues.topics:
            raise ConfigurationError(
                f"{where} processes topic {spec.topic!r}, which the queues do not declare; "
                f"declared: {', '.join(self.queues.topics)}"
            )
        needs_rec = spec.kind == "task_submitter" or spec.reallocate_resources
        if needs_rec and self.rec is None:
            raise ConfigurationError(
                f"{where} needs a ResourceCounter; pass resource_counter= to the thinker"
            )
        if spec.kind == "task_submitter":
            self.rec._check(spec.task_type)
            if isinstance(spec.n_slots, str) and not hasattr(self, spec.n_slots):
                raise ConfigurationError(
                    f"{where} takes n_slots from attribute {spec.n_slots!r}, which is not set"
                )
        if spec.kind == "event_responder":
            if not spec.event_name:
                raise ConfigurationError(f"{where} needs event_name=")
            if not hasattr(self, spec.event_name):
                raise ConfigurationError(
                    f"{where} waits on attribute {spec.event_name!r}, which is not set; "
                    f"create it in __init__: self.{spec.event_name} = threading.Event()"
                )
            event = getattr(self, spec.event_name)
            if event is None:
                setattr(self, spec.event_name, Flag())
            else:
                # A plain Event becomes a Flag in place, so waits on it never poll and
                # whoever else holds it still sets the one the responder waits on.
                try:
                    as_flag(event)
                except TypeError:
                    raise ConfigurationError(
                        f"{where} waits on attribute {spec.event_name!r}, which is "
                        f"{type(event).__name__}; make it a threading.Event or steersman.Flag"
                    ) from None
            if spec.reallocate_resources:
                for pool in (spec.gather_from, spec.gather_to, spec.disperse_to):
                    self.rec._check(pool)
                if spec.gather_from == spec.gather_to:
                    raise ConfigurationError(
                        f"{where} gathers slots from {spec.gather_from!r} into itself"
                    )
                if spec.gather_to == spec.disperse_to:
                    raise ConfigurationError(
                        f"{where} disperses slots of {spec.gather_to!r} back into itself"
                    )
                if not isinstance(spec.slot_step, int) or spec.slot_step < 1:
                    raise ConfigurationError(
                        f"{where} needs slot_step of 1 or more, got {spec.slot_step!r}"
                    )

    def _launch(self, name: str, func: Callable[..., Any], spec: AgentSpec) -> None:
        self.local_details.name = name
        self.local_details.logger = self.make_logger(name)
        log = self.local_details.logger
        log.debug("started")
        try:
            self.prepare_agent()
            try:
                loop = getattr(self, f"_run_{spec.kind}")
                loop(func, spec)
            finally:
                self.tear_down_agent()
        except RunAborted:
            log.debug("stopped: the run is aborting")
        except BaseException as error:
            self._fail(name, error)
        finally:
            if not spec.startup:
                self.done.set()
            log.debug("finished")
            with self._state:
                self._running_agents -= 1
                self._state.notify_all()

    def _fail(self, name: str, error: BaseException) -> None:
        with self._state:
            first = self.failure is None
            if first:
                self.failure = AgentFailure(name, error)
        if first:
            self.make_logger(name).error("agent %r failed; stopping the run", name, exc_info=error)
            self._stop_early(f"agent {name!r} failed")

    def _stop_early(self, reason: str) -> None:
        self._abort.set()
        self.done.set()
        for barrier in self._barriers.values():
            barrier.abort()
        cancelled = self.queues.cancel_pending()
        self.cancelled_tasks.extend(cancelled)
        if cancelled:
            ids = ", ".join(t.task_id for t in cancelled[:10])
            more = "" if len(cancelled) <= 10 else f" and {len(cancelled) - 10} more"
            self.make_logger().warning(
                "run stopped early (%s): cancelled %d task(s) not yet started: %s%s",
                reason,
                len(cancelled),
                ids,
                more,
            )
        else:
            self.make_logger().warning("run stopped early (%s)", reason)

    # ---------------------------------------------------------------------- agent loops
    def _run_agent(self, func: Callable[..., Any], spec: AgentSpec) -> None:
        func(self)

    def _run_result_processor(self, func: Callable[..., Any], spec: AgentSpec) -> None:
        queues = self.queues
        while not self.done.is_set():
            result = queues._get_result(spec.topic, None, stop=self.done)
            if result is None:
                break
            func(self, result)
        # Normal end: process what was already sent before the run returns.
        while not self._abort.is_set() and queues.active_count(spec.topic) > 0:
            result = queues._get_result(spec.topic, None, stop=self._abort)
            if result is None:
                break
            func(self, result)

    def _run_task_submitter(self, func: Callable[..., Any], spec: AgentSpec) -> None:
        while not self.done.is_set():
            n_slots = getattr(self, spec.n_slots) if isinstance(spec.n_slots, str) else spec.n_slots
            if not isinstance(n_slots, int) or n_slots < 1:
                # 0 would call the submitter in a busy loop, taking nothing
                source = f" (attribute {spec.n_slots!r})" if isinstance(spec.n_slots, str) else ""
                raise ConfigurationError(
                    f"task submitter {func.__name__} needs n_slots of 1 or more, "
                    f"got {n_slots!r}{source}"
                )
            if self.rec.acquire(spec.task_type, n_slots, cancel_if=self.done):
                func(self)

    def _run_event_responder(self, func: Callable[..., Any], spec: AgentSpec) -> None:
        event: Flag = getattr(self, spec.event_name)
        barrier = self._barriers[spec.event_name]
        idle = threading.Condition()
        while True:
            with idle:
                wait_for(idle, lambda: False, None, event, self.done)
            if self.done.is_set():
                barrier.abort()  # release fellow responders waiting to clear the event
                return
            if spec.reallocate_resources:
                self._respond_with_slots(func, spec)
            else:
                func(self)
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return

    def _respond_with_slots(self, func: Callable[..., Any], spec: AgentSpec) -> None:
        rec = self.rec
        stop = Flag()
        max_slots = (
            getattr(self, spec.max_slots) if isinstance(spec.max_slots, str) else spec.max_slots
        )

        def gather() -> None:
            while not stop.is_set() and not self._abort.is_set():
                held = rec.allocated_slots(spec.gather_to)
                step = spec.slot_step
                if max_slots is not None:
                    step = min(step, max_slots - held)
                    if step <= 0:
                        return
                if not rec.reallocate(spec.gather_from, spec.gather_to, step, cancel_if=stop):
                    return

        gatherer = threading.Thread(
            target=gather, name=f"{self.local_details.name}-gather", daemon=True
        )
        gatherer.start()
        try:
            func(self)
        finally:
            stop.set()
            gatherer.join()
            if spec.gather_to != spec.disperse_to and not self._abort.is_set():
                rec.reallocate(spec.gather_to, spec.disperse_to, "all", cancel_if=self._abort)
