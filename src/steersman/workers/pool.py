"""Local worker pools: N processes (or threads) that serve the queues of their methods.

On Redis, each worker process takes its own tasks and delivers their results itself, as a
client of its own whose lease the pool's client renews (a task holding the GIL cannot starve
it); no task passes through the pool's process. That process watches: its *collector* thread
waits on every worker's pipe and process sentinel at once (no polling), kills a process
whose task runs past its ``timeout`` (a task with one is announced on the pipe), and when a
process ends reads what it held from Redis, to run it again, fail it or hand it back. On the
embedded broker a *feeder* thread takes a task only when a worker has room for it and writes
it down that worker's pipe, and the collector delivers the results. A task held by a dead
worker is run again on a fresh process, up to its ``max_retries``; then it fails with a
reason that says so. A task past its ``timeout`` has its process killed and fails as
``timeout``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import cloudpickle
import msgspec

from steersman.errors import ConfigurationError, EnvelopeError, PoolError
from steersman.queues.base import Queues
from steersman.task import (
    PRIORITIES,
    Result,
    WorkerInfo,
    decode_batch,
    encode_batch,
    lane_name,
)
from steersman.workers.execute import execute, timeout_failure

logger = logging.getLogger(__name__)

Mode = Literal["process", "thread"]
_pool_numbers = itertools.count(1)


def default_start_method() -> str:
    """``forkserver`` where it exists (safe with threads, quick to replace a dead worker),
    else ``spawn``. ``fork`` is never the default: the client process runs threads."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def _method_table(methods: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]]):
    if isinstance(methods, Mapping):
        table = dict(methods)
    else:
        table = {}
        for func in methods:
            name = getattr(func, "__name__", None)
            if not name or name == "<lambda>":
                raise ConfigurationError(
                    f"cannot tell the name of method {func!r}; pass a dict {{'name': function}}"
                )
            table[name] = func
    for name, func in table.items():
        if not callable(func):
            raise ConfigurationError(f"method {name!r} is {func!r}, which is not callable")
    if not table:
        raise ConfigurationError("a worker pool needs at least one method")
    return table


def wants_retry(result: Result) -> bool:
    """Whether a result is a failure its task asked to be run again after."""
    failure = result.failure
    return (
        result.complete
        and failure is not None
        and failure.kind in ("exception", "timeout")
        and result.retry_on_exception
        and result.attempt <= result.max_retries
    )


def _held_by(holder: str | None) -> dict[str, str]:
    """The keyword naming the worker process that holds a task, for a broker with serving
    workers (none otherwise: the broker's own client holds it)."""
    return {} if holder is None else {"holder": holder}


class Settlement:
    """Final results to deliver, and those that failed in a way their task asked to retry
    (their attempt raised here, once), sent by :meth:`send`; a partial result (a generator's
    yield) passes as it is. ``send`` may be called again after it failed (under
    :func:`persist`): what went out already is not sent twice, and no attempt is raised
    twice."""

    def __init__(self, results: Iterable[Result], holder: str | None = None) -> None:
        self.holder = holder  # the serving worker process that held their tasks
        self.retry: list[Result] = []
        self.deliver: list[Result] = []
        for result in results:
            if wants_retry(result):
                logger.info(
                    "task %s (%s) failed on attempt %d (%s); retrying",
                    result.task_id,
                    result.method,
                    result.attempt,
                    result.failure,
                )
                result.reset_for_retry()
                self.retry.append(result)
            else:
                self.deliver.append(result)

    def send(self, broker: Any) -> None:
        held = _held_by(self.holder)
        while self.retry:
            broker.requeue(self.retry[0], front=True, **held)
            self.retry.pop(0)
        if self.deliver:
            broker.put_results(self.deliver, **held)
            self.deliver = []


STOP_WAIT_FOR_BROKER = 5.0
"""Seconds a stopping pool waits, after its grace period, for threads still trying to reach
an unreachable broker (to deliver results or hand tasks back) before it leaves them: what
they held goes to other workers when its lease runs out."""


def persist(what: str, call: Callable[[], Any], give_up: threading.Event) -> Any:
    """Run a broker call that must not be skipped (delivering results, handing tasks back)
    until it succeeds: a broker away past its deadline, or answering with an error (out of
    memory, a read-only replica after a failover), makes the thread wait and try again,
    never die holding the tasks. Gives up (returns None) only once ``give_up`` is set; the
    broker's lease then hands what it held to others."""
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as error:
            if give_up.is_set():
                logger.error(
                    "%s: %s; giving up as the pool stops (its tasks run again elsewhere once "
                    "the lease runs out)",
                    what,
                    error,
                )
                return None
            logger.error("%s: %s; trying again in %.1f s", what, error, delay)
            give_up.wait(delay)
            delay = min(delay * 2, 10.0)


class WorkerPool:
    """A pool of local workers serving the queues of the methods it is given.

    Run one pool per group of methods, each group on its own queue, to give each group its
    own workers (a pool serves whole queues)::

        queues = Queues(methods={"simulate": "sim", "train": "ml"})
        with WorkerPool(queues, [simulate], workers=4), WorkerPool(queues, [train], workers=1):
            thinker.run()

    ``mode="process"`` (default) runs each worker in its own process: tasks run in parallel,
    ``cpu_threads`` takes effect, a crash or a timeout kills only that process and the pool
    replaces it. ``mode="thread"`` runs workers as threads of this process: no copies, but
    the GIL is shared and a timeout cannot stop a task. ``prefetch`` is how many tasks a
    process worker holds beyond the one it runs: more throughput for tiny tasks, worse
    balance for long ones. The default, ``"auto"``, prefetches up to
    :data:`AUTO_PREFETCH` tasks only while the pool's recent tasks run under
    :data:`AUTO_PREFETCH_BELOW` seconds, and none otherwise. It assumes a queue's tasks take
    about as long as each other: tiny tasks already sent to a worker wait behind a long one
    that arrives among them. Give tasks of very different lengths their own queues, or use
    ``prefetch=0``.
    """

    def __init__(
        self,
        queues: Queues,
        methods: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
        *,
        workers: int = 1,
        mode: Mode = "process",
        start_method: str | None = None,
        prefetch: int | Literal["auto"] = "auto",
        name: str | None = None,
        lanes: list[str] | None = None,
    ) -> None:
        self.queues = queues
        self.methods = _method_table(methods)
        for method in self.methods:
            queues.queue_of(method)  # raises, naming the declared methods, if unknown
        if lanes:
            # Served in exactly this order (a standalone worker's --queues sim:high,sim).
            self.lanes = list(lanes)
            self.serves = list(dict.fromkeys(lane.split(":")[0] for lane in self.lanes))
        else:
            self.serves = list(dict.fromkeys(queues.queue_of(m) for m in self.methods))
            self.lanes = [lane_name(q, p) for p in PRIORITIES for q in self.serves]
        if workers < 1:
            raise ConfigurationError(f"workers must be at least 1, got {workers}")
        if mode not in ("process", "thread"):
            raise ConfigurationError(f"mode must be 'process' or 'thread', got {mode!r}")
        if prefetch != "auto" and (not isinstance(prefetch, int) or prefetch < 0):
            raise ConfigurationError(f"prefetch must be 'auto' or 0 or more, got {prefetch!r}")
        self.n_workers = workers
        self.mode: Mode = mode
        self.start_method = start_method or default_start_method()
        if self.start_method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                f"start method {self.start_method!r} is not available here; available: "
                f"{', '.join(multiprocessing.get_all_start_methods())}"
            )
        self.prefetch = prefetch
        self.name = name or f"pool{next(_pool_numbers)}-{'+'.join(self.serves)}"
        self._impl: _ProcessWorkers | _ThreadWorkers | None = None

    def start(self) -> WorkerPool:
        """Start the workers. Returns the pool, so ``pool = WorkerPool(...).start()`` works."""
        if self._impl is not None:
            raise PoolError(f"worker pool {self.name} is already started")
        self._check_siblings()
        impl_type = _ProcessWorkers if self.mode == "process" else _ThreadWorkers
        self._impl = impl_type(self)
        try:
            self._impl.start()
        except BaseException:
            # Refused halfway (Redis refusing the first heartbeat, say): what started stops,
            # or its processes would keep this one from exiting.
            impl, self._impl = self._impl, None
            self.queues._pools.discard(self)
            with contextlib.suppress(Exception):
                impl.stop(0.0)
            raise
        logger.info(
            "started %s: %d %s worker(s) on %s",
            self.name,
            self.n_workers,
            self.mode,
            ", ".join(self.lanes),
        )
        return self

    def _check_siblings(self) -> None:
        """Refuse to share a queue with a running pool of other methods: each task of the
        queue would go to whichever pool took it first, and fail there if that pool lacks
        its method."""
        for other in list(self.queues._pools):
            if other._impl is None:
                continue
            shared = [q for q in self.serves if q in other.serves]
            if shared and set(other.methods) != set(self.methods):
                raise ConfigurationError(
                    f"pools {other.name} and {self.name} both serve queue {shared[0]!r} but "
                    f"run different methods ({', '.join(sorted(other.methods))} vs "
                    f"{', '.join(sorted(self.methods))}): a task goes to whichever pool takes "
                    "it first. Give each group of methods its own queue, e.g. "
                    "Queues(methods={'simulate': 'sim', 'train': 'ml'})"
                )
        self.queues._pools.add(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking tasks, let running ones finish for up to ``timeout`` seconds, then kill
        what is left. Tasks the workers had not finished go back to the broker."""
        if self._impl is None:
            return
        self._impl.stop(timeout)
        self._impl = None
        logger.info("stopped %s", self.name)

    def idle_seconds(self) -> float | None:
        """Seconds since the pool last held a task, or ``None`` while it holds some."""
        if self._impl is None:
            return None
        return self._impl.idle_seconds()

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (empty for a thread pool)."""
        if self._impl is None:
            return []
        return self._impl.worker_pids()

    def wait_for_workers(self, timeout: float | None = None) -> bool:
        """Block until every worker process is up and waiting for work. Returns False if
        ``timeout`` passes first; raises :class:`PoolError` if the pool gave up starting
        workers (they kept dying before they were ready)."""
        if self._impl is None:
            raise PoolError(f"worker pool {self.name} is not started")
        return self._impl.wait_ready(timeout)

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        # Leaving on an error (an agent failed, Ctrl-C): do not wait for running tasks.
        # They go back to the broker untouched, so nothing is lost.
        self.stop(timeout=0.0 if exc_type is not None else 10.0)


# ----------------------------------------------------------------------------- threads
class _ThreadWorkers:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.stop_flag = _new_flag()
        self.abandon = threading.Event()  # stop() gave up waiting for the broker
        self.threads: list[threading.Thread] = []
        self.cancelled: set[str] = set()  # running tasks someone asked to cancel
        self.running: set[str] = set()
        self.lock = threading.Lock()

    def start(self) -> None:
        handlers = getattr(self.pool.queues.broker, "cancel_handlers", None)
        if handlers is not None:
            handlers.append(self._cancel)
        for index in range(self.pool.n_workers):
            worker_id = worker_id_for(f"{self.pool.name}-t{index}")
            thread = threading.Thread(
                target=self._serve,
                args=(worker_id,),
                name=f"{self.pool.name}-t{index}",
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)

    def _serve(self, worker_id: str) -> None:
        pool = self.pool
        broker = pool.queues.broker
        while not self.stop_flag.is_set():
            try:
                task = broker.get_task(pool.lanes, stop=self.stop_flag)
            except Exception as error:
                logger.error("%s cannot take tasks: %s; trying again", pool.name, error)
                self.stop_flag.wait(1.0)
                continue
            if task is None:
                continue
            task.timestamps.picked_up = time.time()
            with self.lock:
                self.running.add(task.task_id)
            for result in execute(
                task, pool.methods.get(task.method), worker_id, own_process=False
            ):
                result.timestamps.result_queued = time.time()
                if result.complete:
                    with self.lock:
                        self.running.discard(task.task_id)
                        cancelled = task.task_id in self.cancelled
                        self.cancelled.discard(task.task_id)
                    if cancelled:
                        # A thread cannot be stopped: the task ran on, and its outcome is
                        # replaced by what was asked for.
                        result.finish_failed(
                            "cancelled",
                            "Cancelled",
                            "cancelled on request; a thread worker cannot stop a running "
                            "task, so it ran to the end and its outcome was dropped",
                        )
                settlement = Settlement([result])
                persist(
                    "delivering a result",
                    lambda s=settlement: s.send(broker),
                    self.abandon,
                )

    def _cancel(self, task_ids: list[str]) -> None:
        with self.lock:
            self.cancelled |= set(task_ids) & self.running

    def stop(self, timeout: float) -> None:
        handlers = getattr(self.pool.queues.broker, "cancel_handlers", None)
        with contextlib.suppress(AttributeError, ValueError):
            handlers.remove(self._cancel)
        self.stop_flag.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.abandon.set()
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            logger.warning("thread workers still running a task after %.1f s: %s", timeout, alive)

    def worker_pids(self) -> list[int]:
        return []

    def idle_seconds(self) -> float | None:
        return None  # not tracked for threads

    def wait_ready(self, timeout: float | None) -> bool:
        return True


def _new_flag():
    from steersman.flag import Flag

    return Flag()


# ---------------------------------------------------------------------------- processes
def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "it vanished"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


MAX_BOOT_FAILURES = 5
"""Workers in a row that may die before they are ready before a pool stops replacing them."""

DRAIN_LIMIT = 64
"""Messages the collector reads from one worker before it looks at the others again."""

AUTO_PREFETCH = 64
"""Tasks a worker may hold beyond the one it runs, with ``prefetch="auto"``, for short tasks."""
AUTO_PREFETCH_SECONDS = 0.1
"""With ``prefetch="auto"``, a worker holds no more than about this much work, expected from
the recent pace, beyond its running task (a task much longer than the recent ones is not
foreseen: what waits behind it waits until it ends)."""
AUTO_PREFETCH_BELOW = 0.005
"""Running time (seconds, recent average) under which ``prefetch="auto"`` prefetches."""


def worker_id_for(label: str, pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}:{label}"


def _shield_forkserver(context) -> None:
    """Start the fork server ignoring SIGTERM (it already ignores SIGINT), as the workers do.

    Batch systems send SIGTERM to every process of a job; the server must outlive it, or
    its workers (which die with their parent) would die before their grace period ends.
    An ignored signal stays ignored across exec, so ignoring it while the server starts is
    enough. Only the main thread may change signal handling; elsewhere this does nothing.
    """
    if context.get_start_method() != "forkserver":
        return
    if threading.current_thread() is not threading.main_thread():
        return
    from multiprocessing import forkserver

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process when its parent dies, so a worker whose
    pool was SIGKILLed does not run on unseen (its tasks go to others after the lease).
    With the fork server that parent is the server, which lives as long as any process it
    started: there the end of the pool's pipe says the pool is gone (see _wait_for_stop)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _own_group() -> None:
    """Lead a process group of its own, so that killing a worker (for a timeout, a cancel,
    a stop) also kills the programs its task started (a quantum-chemistry code, a shell)."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # in the same session: a terminal or batch system still sees it


def _kill(worker: _Worker) -> None:
    """Kill a worker process and whatever its task started (its process group)."""
    pid = worker.process.pid
    if worker.process.exitcode is not None:
        return  # ended and reaped: its pid may belong to another process by now
    try:
        if pid and os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
    except OSError:
        pass  # already gone, or not a group of its own: the process alone
    worker.process.kill()


def _kill_leftovers(pid: int | None) -> None:
    """Kill what is left of the process group of a worker that ended (programs its task
    started); the group's id stays taken while any member lives, so it names no other."""
    if pid:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _worker_main(
    conn: multiprocessing.connection.Connection,
    methods_blob: bytes,
    label: str,
    finished: Any,
):
    """Entry point of a worker process fed by its pool: read batches of tasks, write
    results, until told to stop.

    ``finished`` (a shared integer) counts the tasks this process has finished, so the pool
    knows a task is done while its result is still on the way.
    """
    # Ctrl-C and SIGTERM are the parent's to handle: it lets running tasks finish first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    _own_group()
    worker_id = worker_id_for(label)
    methods = cloudpickle.loads(methods_blob)
    conn.send_bytes(b"ready")
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the client is gone
        if not data:
            return
        picked_up = time.time()
        try:
            tasks = decode_batch(data)
        except EnvelopeError as error:
            print(
                f"steersman worker {worker_id}: dropped a garbled batch: {error}", file=sys.stderr
            )
            continue
        for task in tasks:
            task.timestamps.picked_up = picked_up
            # Each result leaves before the next task starts: the pool then knows that the
            # first task it still counts as in flight is the one running, and blames a
            # crash or a timeout on the right task.
            for result in execute(task, methods.get(task.method), worker_id, own_process=True):
                result.timestamps.result_queued = time.time()
                if result.complete:
                    # From now on the pool does not kill this process for the task's timeout,
                    # however long the result takes to reach the broker.
                    finished.value += 1
                conn.send_bytes(encode_batch([result]))


TIMED = b"\x01"
"""First byte of a serving worker's note that it started a task with a timeout (a batch of
results, msgpack, never starts with it)."""
LOGGED = b"\x02"
"""First byte of a log record a serving worker passes to its pool, which logs it: one log
for the whole worker, formatted as its process formats its own."""
_note = msgspec.msgpack.Encoder()
_note_decoder = msgspec.msgpack.Decoder(tuple[str, float, float])
_record_decoder = msgspec.msgpack.Decoder(tuple[int, str, str])


class _Pipe:
    """A worker process's end of its pipe, written by more than one thread (its tasks, its
    log records, its outbox): one message at a time."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.lock:
            self.conn.send_bytes(data)


class _ToPool(logging.Handler):
    """Pass a worker process's log records to its pool over the pipe."""

    def __init__(self, pipe: _Pipe, level: int) -> None:
        super().__init__(level)
        self.pipe = pipe

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.pipe.send(LOGGED + _note.encode((record.levelno, record.name, message)))
        except Exception:  # the pool is gone: nobody to tell
            self.handleError(record)


RUNNING_BYTES = 512
"""Room for the id and method of the task a serving worker runs, shared with its pool."""


def _wait_for_stop(conn: multiprocessing.connection.Connection, stop: Any, grace: float) -> None:
    """Set ``stop`` when the pool says so: the flag's waker ends a wait for tasks that is
    blocked in Redis at once. If the pool is gone instead (its process killed), stop as
    well (the task running may finish and be delivered; those not started go back), and
    if this process still runs ``grace`` seconds later, end it and what its task started,
    as if it had died with its parent (which, with the fork server, lives as long as this
    process does): nobody renews its lease now, and before the lease runs out and its task
    goes to another worker, it must stop running unseen."""
    try:
        conn.recv_bytes()
    except (EOFError, OSError):
        stop.set()
        time.sleep(grace)
        if os.getpgid(0) == os.getpid():  # a group of its own (see _own_group)
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    stop.set()


class _Outbox:
    """Results a serving worker delivers from a thread of their own, so that none waits
    behind the next task: while one delivery is on its way the next results gather, and go
    in one call (tiny tasks are delivered many at a time, a lone one at once)."""

    def __init__(self, broker: Any, stop: threading.Event) -> None:
        self.broker = broker
        self.stop = stop
        self.cond = threading.Condition()
        self.waiting: list[Result] = []
        self.sending = False
        threading.Thread(target=self._run, name="steersman-outbox", daemon=True).start()

    def put(self, result: Result) -> None:
        with self.cond:
            self.waiting.append(result)
            self.cond.notify_all()

    def drain(self) -> None:
        """Return once everything put so far is delivered (or given up as the pool stops:
        its tasks stay in this process's held list, for the pool to hand back)."""
        with self.cond:
            while self.waiting or self.sending:
                self.cond.wait()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.waiting:
                    self.cond.wait()
                batch, self.waiting = self.waiting, []
                self.sending = True
            try:
                settlement = Settlement(batch)
                persist("delivering results", lambda s=settlement: s.send(self.broker), self.stop)
            finally:
                with self.cond:
                    self.sending = False
                    self.cond.notify_all()


def _serving_main(
    conn: multiprocessing.connection.Connection,
    methods_blob: bytes,
    label: str,
    spec: dict[str, Any],
    lanes: list[str],
    prefetch: int | str,
    running: Any,
    holding: Any,
    started: Any,
    log_level: int = logging.WARNING,
):
    """Entry point of a worker process that takes its own tasks from Redis and delivers
    their results itself, as a client of its own whose lease its pool renews.

    The pool learns what it needs without a message per task: ``running`` (shared) holds the
    id and method of the task running now, ``holding`` how many tasks this process holds,
    ``started`` when the running task started; a task with a timeout is announced on the
    pipe, so the pool can kill the process when it runs over. Whatever this process holds
    when it dies, the pool finds in its held list in Redis. Told to stop, it finishes the
    task it runs and hands back those it has not started.
    """
    from steersman.brokers.redis import RedisBroker
    from steersman.flag import Flag

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    _own_group()
    pipe = _Pipe(conn)
    root = logging.getLogger()
    root.handlers = [_ToPool(pipe, log_level)]
    root.setLevel(log_level)
    worker_id = worker_id_for(label)
    methods = cloudpickle.loads(methods_blob)
    # Listening to the pool before waiting on Redis: a process that waits out refused
    # writes still stops when told to, or when its pool is gone.
    stop = Flag()
    # Half its lease: the pool's last renewal left it two thirds of one or more.
    grace = spec["lease_seconds"] / 2
    threading.Thread(target=_wait_for_stop, args=(conn, stop, grace), daemon=True).start()
    broker = RedisBroker.for_worker_process(spec, stop)
    if broker is None:
        return
    outbox = _Outbox(broker, stop)
    auto = prefetch == "auto"
    capacity = 1 if auto else 1 + int(prefetch)
    recent: float | None = None
    carried: list[Result] = []  # final results that go out with the next take
    # Their tasks count as held until the take says they are delivered: a pool that stops
    # when idle must not stop a process with a result still to deliver.

    def delivered() -> None:
        nonlocal carried
        carried = []
        holding.value = 0

    pipe.send(b"ready")
    while not stop.is_set():
        try:
            tasks = broker.get_tasks(
                lanes, capacity, stop=stop, deliver=carried, on_delivered=delivered
            )
        except Exception as error:  # Redis answered with an error (it waits out lost links)
            if carried:
                persist("delivering a result", lambda c=carried: broker.put_results(c), stop)
                carried = []
                holding.value = 0
            logger.error("worker %s cannot take tasks: %s; trying again", worker_id, error)
            stop.wait(1.0)
            continue
        carried = []  # delivered (get_tasks returns only once they are)
        holding.value = len(tasks)
        for index, task in enumerate(tasks):
            if stop.is_set():
                outbox.drain()
                for unstarted in reversed(tasks[index:]):
                    persist(
                        "handing a task back",
                        lambda t=unstarted: broker.requeue(t, front=True),
                        threading.Event(),  # never given up: the pool kills after its grace
                    )
                break
            if task.timeout is not None:
                # Its process may be killed: the results on their way arrive first.
                outbox.drain()
            task.timestamps.picked_up = time.time()
            running.value = f"{task.task_id} {task.method}".encode()[: RUNNING_BYTES - 1]
            started.value = time.monotonic()
            if task.timeout is not None:
                pipe.send(TIMED + _note.encode((task.task_id, task.timeout, started.value)))
            partial = False
            for result in execute(task, methods.get(task.method), worker_id, own_process=True):
                result.timestamps.result_queued = time.time()
                if not result.complete:
                    partial = True
                    outbox.put(result)
                    continue
                running.value = b""  # finished: its timeout no longer applies
                if auto and result.time_running is not None:
                    recent, capacity = _learn_pace(recent, result.time_running)
                if index < len(tasks) - 1 or broker.left_waiting(lanes):
                    # Delivered while the next task runs, or while this process takes the
                    # next ones from its lane: the delivery and the take reach Redis
                    # together (with appendfsync always, they share a disk sync).
                    outbox.put(result)
                else:
                    # Nothing waits: delivered from here (no hand-over to a thread), after
                    # what is on its way (this task's partial results among it), in the
                    # round trip of the next take, ahead of its wait.
                    outbox.drain()
                    settlement = Settlement([result])
                    if settlement.retry:
                        persist("delivering a result", lambda s=settlement: s.send(broker), stop)
                    else:
                        carried = settlement.deliver
            if partial:
                # Its final result goes out before the next task starts: should this process
                # die meanwhile, the whole generator would run again (the parts it delivered
                # would not go out twice, but the work would be done twice).
                outbox.drain()
            holding.value = len(tasks) - index - 1 + len(carried)
    outbox.drain()
    if carried:
        persist("delivering a result", lambda: broker.put_results(carried), stop)
    holding.value = 0


def _learn_pace(recent: float | None, running: float) -> tuple[float, int]:
    """The recent average running time, and the tasks a worker may hold with
    ``prefetch="auto"`` at that pace."""
    recent = running if recent is None else 0.8 * recent + 0.2 * running
    if recent < AUTO_PREFETCH_BELOW:
        ahead = int(AUTO_PREFETCH_SECONDS / recent) if recent > 0 else AUTO_PREFETCH
        return recent, 1 + max(1, min(AUTO_PREFETCH, ahead))
    return recent, 1


@dataclass(eq=False)
class _Worker:
    index: int
    process: Any
    conn: multiprocessing.connection.Connection
    worker_id: str
    inflight: deque[Result] = field(default_factory=deque)
    head_since: float = 0.0  # monotonic time the first in-flight task started (about)
    ready: bool = False
    timed_out: str | None = None  # id of the task this worker was killed for
    cancelled: set[str] = field(default_factory=set)  # ids someone asked to cancel
    alive: bool = True
    poller: Any = None  # select.poll on conn, made once: Connection.poll builds a selector
    finished: Any = None  # shared: tasks the process finished (its results may be on the way)
    finals: int = 0  # final results read from the process
    # A serving worker (takes its own tasks from Redis):
    consumer: str | None = None  # its client id in Redis
    running: Any = None  # shared: "id method" of the task it runs, empty between tasks
    holding: Any = None  # shared: how many tasks it holds
    started: Any = None  # shared: when (monotonic) the task it runs started
    timed: tuple[str, float, float] | None = None  # (id, timeout, start) of its timed task

    def running_task(self) -> str:
        """Id of the task the serving worker runs now ('' if none)."""
        return self.running.value.decode(errors="replace").partition(" ")[0]

    def finishing(self) -> bool:
        """Whether the first task in flight is finished and its result on its way."""
        return self.finished is not None and self.finished.value > self.finals

    def __post_init__(self) -> None:
        self.poller = select.poll()
        self.poller.register(self.conn.fileno(), select.POLLIN)

    def has_data(self) -> bool:
        """Whether the worker wrote something (or hung up) that was not read yet."""
        return bool(self.poller.poll(0))


class _ProcessWorkers:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.broker = pool.queues.broker
        self.context = multiprocessing.get_context(pool.start_method)
        self.methods_blob = cloudpickle.dumps(pool.methods)
        # On Redis, worker processes take their own tasks and deliver their own results
        # (see _serving_main): no feeder, and no hop through this process per task.
        self.serving = hasattr(self.broker, "process_spec")
        self.spawned = itertools.count()
        self.lock = threading.Condition()
        self.workers: list[_Worker] = []
        self.stop_flag = _new_flag()
        self.abandon = threading.Event()  # stop() gave up waiting for the broker
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.feeder = threading.Thread(target=self._feed, name=f"{pool.name}-feeder", daemon=True)
        self.collector = threading.Thread(
            target=self._collect, name=f"{pool.name}-collector", daemon=True
        )
        self.auto = pool.prefetch == "auto"
        # Tasks a worker may hold; with "auto" it grows once tasks prove short.
        self.capacity = 1 if self.auto else 1 + pool.prefetch
        self.recent_running: float | None = None
        # Pipes of dead workers, closed at stop: the feeder may still be writing to one.
        self.boot_failures = 0
        self.gave_up: str | None = None  # why the pool stopped replacing its workers
        self.idle_since: float | None = time.monotonic()
        self.closed_later: list[multiprocessing.connection.Connection] = []

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        _shield_forkserver(self.context)
        for index in range(self.pool.n_workers):
            self.workers.append(self._spawn(index))
        # A remote broker asks pools what they run (for status) and relays cancel requests.
        for hooks, hook in (("describers", self._describe), ("cancel_handlers", self._cancel)):
            if hasattr(self.broker, hooks):
                getattr(self.broker, hooks).append(hook)
        self.collector.start()
        if self.serving:
            # The serving workers' leases ride on this client's heartbeat.
            self.broker.keep_alive("worker")
        else:
            self.feeder.start()

    def _describe(self) -> dict[str, Any]:
        with self.lock:
            if self.serving:
                running = [
                    w.running.value.decode(errors="replace")
                    for w in self.workers
                    if w.alive and w.running.value
                ]
                held = sum(w.holding.value for w in self.workers if w.alive)
            else:
                running = [
                    f"{w.inflight[0].task_id} {w.inflight[0].method}"
                    for w in self.workers
                    if w.alive and w.inflight
                ]
                held = sum(len(w.inflight) for w in self.workers)
        return {
            "pools": [self.pool.name],
            "lanes": self.pool.lanes,
            "processes": self.pool.n_workers,
            "running": running,
            "prefetched": held - len(running),
        }

    def _cancel(self, task_ids: list[str]) -> None:
        """Stop tasks someone cancelled: kill the processes holding them."""
        wanted = set(task_ids)
        holds: dict[int, set[str]] = {}
        if self.serving:
            with self.lock:
                serving = [w for w in self.workers if w.alive]
            # Called from the heartbeat: Redis was just reachable.
            holds = {id(w): set(self.broker.held_ids(w.consumer)) for w in serving}
        with self.lock:
            for worker in self.workers:
                if self.serving:
                    hit = holds.get(id(worker), set()) & wanted
                else:
                    hit = {t.task_id for t in worker.inflight} & wanted
                if worker.alive and hit and not hit <= worker.cancelled:
                    worker.cancelled |= hit
                    logger.warning(
                        "task(s) %s cancelled; stopping worker %s",
                        ", ".join(sorted(hit)),
                        worker.worker_id,
                    )
                    _kill(worker)

    def _spawn(self, index: int) -> _Worker:
        label = f"{self.pool.name}-w{index}"
        parent_conn, child_conn = self.context.Pipe(duplex=True)
        finished = self.context.Value("q", 0, lock=False)
        extra: dict[str, Any] = {}
        if self.serving:
            spec = self.broker.process_spec(f"{label}.{next(self.spawned)}")
            extra = {
                "consumer": spec["consumer"],
                "running": self.context.Array("c", RUNNING_BYTES, lock=False),
                "holding": self.context.Value("i", 0, lock=False),
                "started": self.context.Value("d", 0.0, lock=False),
            }
            # Its lease is renewed from the start: it beats once itself before taking.
            self.broker.adopt(spec["consumer"])
            target, args = (
                _serving_main,
                (
                    child_conn,
                    self.methods_blob,
                    label,
                    spec,
                    self.pool.lanes,
                    self.pool.prefetch,
                    extra["running"],
                    extra["holding"],
                    extra["started"],
                    logging.getLogger("steersman").getEffectiveLevel(),
                ),
            )
        else:
            target, args = _worker_main, (child_conn, self.methods_blob, label, finished)
        process = self.context.Process(target=target, args=args, name=label, daemon=True)
        try:
            process.start()
        except BaseException:
            if extra:
                self.broker.retire(extra["consumer"])
            raise
        finally:
            child_conn.close()
        worker_id = worker_id_for(label, process.pid)
        return _Worker(
            index=index,
            process=process,
            conn=parent_conn,
            worker_id=worker_id,
            finished=finished,
            **extra,
        )

    def stop(self, timeout: float) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self.stop_flag.set()
        for hooks, hook in (("describers", self._describe), ("cancel_handlers", self._cancel)):
            with contextlib.suppress(AttributeError, ValueError):
                getattr(self.broker, hooks).remove(hook)
        deadline = time.monotonic() + timeout
        if not self.serving and self.feeder.ident is not None:
            self.feeder.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            workers = [w for w in self.workers if w.alive]
        if self.feeder.is_alive():
            # Blocked writing to a busy worker (killing the workers unblocks it), or handing
            # tasks back to a broker that is away.
            for worker in workers:
                _kill(worker)
            self.feeder.join(STOP_WAIT_FOR_BROKER)
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send_bytes(b"")
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.is_alive():
                logger.warning(
                    "worker %s still busy after %.1f s; killing it", worker.worker_id, timeout
                )
                _kill(worker)
        if self.collector.ident is None:
            # start() failed before the collector began: nobody else buries them (gives
            # back what they took, stops renewing their leases).
            self.abandon.set()  # Redis refusing or away: their leases hand back the rest
            for worker in workers:
                self._bury(worker)
        self._wake()
        if self.collector.ident is not None:
            self.collector.join(max(0.0, deadline - time.monotonic()) + STOP_WAIT_FOR_BROKER)
        if self.collector.is_alive() or self.feeder.is_alive():
            # Still trying to reach the broker: stop trying. What they held goes to other
            # workers when its lease runs out.
            self.abandon.set()
            self._wake()
            self.collector.join(STOP_WAIT_FOR_BROKER)
            if self.feeder.ident is not None:
                self.feeder.join(STOP_WAIT_FOR_BROKER)
        if self.collector.is_alive() or self.feeder.is_alive():
            logger.error("%s: threads still waiting for the broker; leaving them", self.pool.name)
            return  # they may still use the wake pipe and the workers' connections
        for conn in self.closed_later:
            conn.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def worker_pids(self) -> list[int]:
        with self.lock:
            return [w.process.pid for w in self.workers if w.alive and w.process.pid]

    def idle_seconds(self) -> float | None:
        with self.lock:
            if any(w.inflight or (w.holding is not None and w.holding.value) for w in self.workers):
                self.idle_since = None
                return None
            if self.idle_since is None:
                self.idle_since = time.monotonic()
            return time.monotonic() - self.idle_since

    def wait_ready(self, timeout: float | None) -> bool:
        from steersman.flag import deadline_after, wait_for

        def settled() -> bool:
            live = [w for w in self.workers if w.alive]
            return self.gave_up is not None or (
                len(live) == self.pool.n_workers and all(w.ready for w in live)
            )

        with self.lock:
            ready = wait_for(self.lock, settled, deadline_after(timeout))
            if self.gave_up is not None:
                raise PoolError(self.gave_up)
            return ready

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"x")

    # ---------------------------------------------------------------------------- feeder
    def _has_room(self) -> bool:
        return any(self._can_take(w) for w in self.workers)

    def _can_take(self, worker: _Worker) -> bool:
        # Only workers that said "ready": boot and import time must not count against the
        # first task's timeout.
        return worker.alive and worker.ready and len(worker.inflight) < self.capacity

    def _room(self) -> int:
        return sum(
            max(0, self.capacity - len(w.inflight)) for w in self.workers if self._can_take(w)
        )

    def _feed(self) -> None:
        from steersman.flag import wait_for

        while True:
            with self.lock:
                wait_for(self.lock, lambda: self.stopping or self._has_room(), None)
                if self.stopping:
                    return
                room = self._room()
            try:
                tasks = self.broker.get_tasks(self.pool.lanes, room, stop=self.stop_flag)
            except Exception as error:
                # The broker waited out its deadline, or answered with an error: a pool never
                # gives up, but waits a little before it asks again.
                logger.error("%s cannot take tasks: %s; trying again", self.pool.name, error)
                self.stop_flag.wait(1.0)
                continue
            if not tasks:
                continue
            sends: list[tuple[_Worker, list[Result]]] = []
            with self.lock:
                self.idle_since = None
                wait_for(self.lock, lambda: self.stopping or self._has_room(), None)
                pending = deque(tasks)
                while pending and not self.stopping and self._has_room():
                    worker = min(
                        (w for w in self.workers if self._can_take(w)),
                        key=lambda w: len(w.inflight),
                    )
                    batch = [pending.popleft()]
                    while pending and len(worker.inflight) + len(batch) < self.capacity:
                        batch.append(pending.popleft())
                    if not worker.inflight:
                        worker.head_since = time.monotonic()
                    worker.inflight.extend(batch)
                    sends.append((worker, batch))
            # Taken but no worker has room now (one died, or the pool is stopping).
            for task in reversed(pending):
                persist(
                    "handing a task back",
                    lambda t=task: self.broker.requeue(t, front=True),
                    self.abandon,
                )
            for worker, batch in sends:
                try:
                    message = encode_batch(batch)
                except (TypeError, ValueError, OverflowError) as error:
                    self._refuse(worker, batch, error)
                    continue
                # If the worker died, the collector gives its tasks back.
                with contextlib.suppress(OSError):
                    worker.conn.send_bytes(message)
            if any(t.timeout is not None for t in tasks):
                self._wake()  # the collector must know the new deadlines
            if self.stopping:
                return

    def _refuse(self, worker: _Worker, batch: list[Result], error: Exception) -> None:
        """Fail tasks that cannot be put on the wire, instead of losing them."""
        with self.lock:
            for task in batch:
                self._remove_inflight(worker, task.task_id)
            self.lock.notify_all()
        for task in batch:
            task.finish_failed(
                "exception",
                "SerializationError",
                f"the task could not be sent to a worker: {error}",
            )
        persist("delivering results", lambda: self.broker.put_results(batch), self.abandon)

    # ------------------------------------------------------------------------- collector
    def _collect(self) -> None:
        # One selector for the pool's life (building one per wait costs more than the wait).
        selector = selectors.DefaultSelector()
        selector.register(self.wake_r, selectors.EVENT_READ, None)
        watched: dict[int, _Worker] = {}
        try:
            while True:
                with self.lock:
                    live = [w for w in self.workers if w.alive]
                    if self.stopping and not live:
                        return
                    deadline = self._next_deadline(live)
                for worker in live:
                    if id(worker) not in watched:
                        watched[id(worker)] = worker
                        selector.register(
                            worker.conn.fileno(), selectors.EVENT_READ, (worker, False)
                        )
                        selector.register(
                            worker.process.sentinel, selectors.EVENT_READ, (worker, True)
                        )
                # Capped: select refuses waits of weeks (a task's timeout may be that long).
                timeout = (
                    None if deadline is None else min(max(0.0, deadline - time.monotonic()), 3600)
                )
                readable: list[_Worker] = []
                ended: list[_Worker] = []
                for key, _ in selector.select(timeout):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self.wake_r, 4096)
                    else:
                        (ended if key.data[1] else readable).append(key.data[0])
                for worker in readable:
                    if worker not in ended:
                        self._drain(worker)
                for worker in ended:
                    selector.unregister(worker.conn.fileno())
                    selector.unregister(worker.process.sentinel)
                    del watched[id(worker)]
                    self._drain(worker, limit=None)
                    self._bury(worker)
                self._enforce_timeouts()
        finally:
            selector.close()

    def _next_deadline(self, live: list[_Worker]) -> float | None:
        if self.serving:
            return min(
                (w.timed[2] + w.timed[1] for w in live if w.timed and w.timed_out is None),
                default=None,
            )
        deadlines = [
            w.head_since + w.inflight[0].timeout
            for w in live
            if w.inflight
            and w.inflight[0].timeout is not None
            and w.timed_out is None
            and not w.finishing()
        ]
        return min(deadlines, default=None)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        if self.serving:
            self._enforce_served_timeouts(now)
            return
        with self.lock:
            for worker in self.workers:
                if (
                    not worker.alive
                    or not worker.inflight
                    or worker.timed_out is not None
                    or worker.finishing()  # done: its result is on the way
                ):
                    continue
                head = worker.inflight[0]
                if head.timeout is not None and now >= worker.head_since + head.timeout:
                    worker.timed_out = head.task_id
                    logger.warning(
                        "task %s (%s) exceeded its timeout of %g s; killing worker %s",
                        head.task_id,
                        head.method,
                        head.timeout,
                        worker.worker_id,
                    )
                    _kill(worker)

    def _enforce_served_timeouts(self, now: float) -> None:
        with self.lock:
            for worker in self.workers:
                if not worker.alive or worker.timed is None or worker.timed_out is not None:
                    continue
                task_id, timeout, started = worker.timed
                if now < started + timeout:
                    continue
                worker.timed = None
                if worker.running_task() != task_id or worker.started.value != started:
                    continue  # it finished in time (a run of it now is another run)
                worker.timed_out = task_id
                logger.warning(
                    "task %s exceeded its timeout of %g s; killing worker %s",
                    task_id,
                    timeout,
                    worker.worker_id,
                )
                _kill(worker)

    def _drain(self, worker: _Worker, limit: int | None = DRAIN_LIMIT) -> None:
        """Read what the worker has written: at most ``limit`` messages, so one chatty
        worker cannot keep the collector from deaths, deadlines and other workers."""
        gathered: list[Result] = []
        try:
            self._read_results(worker, limit, gathered)
        finally:
            if gathered:
                self._settle(gathered)

    def _settle(self, results: list[Result], holder: str | None = None) -> None:
        settlement = Settlement(results, holder)
        persist("delivering results", lambda: settlement.send(self.broker), self.abandon)

    def _read_results(self, worker: _Worker, limit: int | None, gathered: list[Result]) -> None:
        finished: list[Result] = []
        try:
            for _ in itertools.count() if limit is None else range(limit):
                try:
                    if not worker.has_data():
                        return
                    data = worker.conn.recv_bytes()
                except (EOFError, OSError):
                    return
                if data == b"ready":
                    with self.lock:
                        worker.ready = True
                        self.lock.notify_all()
                    continue
                if data[:1] == LOGGED:
                    try:
                        level, name, message = _record_decoder.decode(data[1:])
                    except msgspec.DecodeError as error:
                        logger.error("worker %s sent a garbled note: %s", worker.worker_id, error)
                        continue
                    logging.getLogger(name).log(level, "%s (%s)", message, worker.worker_id)
                    continue
                if data[:1] == TIMED:
                    try:
                        note = _note_decoder.decode(data[1:])
                    except msgspec.DecodeError as error:
                        logger.error("worker %s sent a garbled note: %s", worker.worker_id, error)
                        continue
                    with self.lock:
                        worker.timed = note
                    continue
                try:
                    results = decode_batch(data)
                except EnvelopeError as error:
                    logger.error("worker %s sent a garbled result: %s", worker.worker_id, error)
                    continue
                complete = [r for r in results if r.complete]
                worker.finals += len(complete)
                finished += complete
                gathered.extend(results)
                if len(gathered) >= DRAIN_LIMIT:
                    self._release(worker, finished)
                    self._settle(list(gathered))
                    gathered.clear()
        finally:
            self._release(worker, finished)

    def _release(self, worker: _Worker, finished: list[Result]) -> None:
        """Free the slots of finished tasks, in one locked step for a whole drained batch."""
        if not finished:
            return
        with self.lock:
            for result in finished:
                self._remove_inflight(worker, result.task_id)
                if self.auto:
                    self._learn_running_time(result)
            worker.head_since = time.monotonic()
            self.lock.notify_all()
        finished.clear()

    def _learn_running_time(self, result: Result) -> None:
        if result.time_running is not None:
            self.recent_running, self.capacity = _learn_pace(
                self.recent_running, result.time_running
            )

    @staticmethod
    def _remove_inflight(worker: _Worker, task_id: str) -> None:
        if worker.inflight and worker.inflight[0].task_id == task_id:
            worker.inflight.popleft()
            return
        for task in worker.inflight:
            if task.task_id == task_id:
                worker.inflight.remove(task)
                return

    def _bury(self, worker: _Worker) -> None:
        """A worker process ended: give its tasks back or fail them, and replace it."""
        worker.process.join()
        _kill_leftovers(worker.process.pid)
        exitcode = worker.process.exitcode
        with self.lock:
            worker.alive = False
            held = list(worker.inflight)
            worker.inflight.clear()
            self.workers.remove(worker)
            replace = not self.stopping
            stopping = self.stopping
            self.lock.notify_all()
        self.closed_later.append(worker.conn)
        how = _describe_exit(exitcode)
        if not worker.ready and stopping and exitcode == 0:
            pass  # told to stop while it waited for Redis to let it begin
        elif not worker.ready:
            self.boot_failures += 1
            logger.error(
                "worker %s of %s died before it was ready (%s); can its methods be imported?",
                worker.worker_id,
                self.pool.name,
                how,
            )
            if self.boot_failures >= MAX_BOOT_FAILURES:
                reason = (
                    f"{self.pool.name}: {self.boot_failures} workers in a row died while "
                    f"starting ({how}); not starting more. Can the worker processes import "
                    "the methods (are they defined in an importable module, not in __main__ "
                    "of an interactive session)?"
                )
                logger.error("%s", reason)
                replace = False
                with self.lock:
                    self.gave_up = reason
                    self.lock.notify_all()
        else:
            self.boot_failures = 0
        holder = worker.consumer
        running: Result | None = None
        if self.serving:
            held, running = self._served_held(worker)
        elif held:
            running = held[0]
        if held:
            unstarted = [t for t in held if t is not running]
            cancelled = [t for t in held if t.task_id in worker.cancelled]
            for task in reversed(unstarted):
                if task.task_id not in worker.cancelled:
                    self._hand_back(task, holder)
            if cancelled:
                for task in cancelled:
                    task.finish_failed(
                        "cancelled",
                        "Cancelled",
                        f"cancelled on request; worker {worker.worker_id} stopped",
                    )
                settlement = Settlement(cancelled, holder)
                persist(
                    "delivering cancelled results",
                    lambda: settlement.send(self.broker),
                    self.abandon,
                )
            if running is None or running.task_id in worker.cancelled:
                pass
            elif (worker.cancelled or worker.timed_out is not None) and (
                running.task_id != worker.timed_out
            ):
                # Stopped for another task, not this one: to cancel a task it held ahead, or
                # for a task past its timeout that finished just before the kill. Not the
                # running task's fault: it goes back untouched.
                self._hand_back(running, holder)
            else:
                self._settle_lost(worker, running, how)
        elif replace:
            logger.warning("worker %s died (%s) while idle", worker.worker_id, how)
        if holder is not None:
            # What it held is settled (or, with Redis away past the stop, left to its lease).
            self.broker.retire(holder)
        if replace:
            fresh = self._spawn(worker.index)
            with self.lock:
                if not self.stopping:
                    self.workers.append(fresh)
                    self.lock.notify_all()
                    return
            # stop() began while this worker was starting: it will not be told to stop.
            fresh.process.kill()
            fresh.process.join()
            fresh.conn.close()
            if fresh.consumer is not None:
                self.broker.retire(fresh.consumer)

    def _settle_lost(self, worker: _Worker, task: Result, how: str) -> None:
        info = WorkerInfo(
            host=socket.gethostname(), pid=worker.process.pid or 0, worker_id=worker.worker_id
        )
        if worker.timed_out == task.task_id:
            task.worker = info
            task.complete = True
            task.set_failure(timeout_failure(task.timeout or 0.0, killed=True))
            task.timestamps.result_queued = time.time()
            self._settle([task], worker.consumer)
            return
        if self.stopping:
            # Not the task's fault: hand it back untouched for whoever serves the queue next.
            self._hand_back(task, worker.consumer)
            return
        if task.attempt <= task.max_retries:
            logger.warning(
                "worker %s died (%s) running task %s (%s), attempt %d; running it again",
                worker.worker_id,
                how,
                task.task_id,
                task.method,
                task.attempt,
            )
            task.reset_for_retry()
            self._hand_back(task, worker.consumer)
            return
        logger.error(
            "worker %s died (%s) running task %s (%s); no retries left",
            worker.worker_id,
            how,
            task.task_id,
            task.method,
        )
        task.worker = info
        task.fail_as_lost(f"the worker process running this task died ({how})", task.attempt)
        self._settle([task], worker.consumer)

    def _served_held(self, worker: _Worker) -> tuple[list[Result], Result | None]:
        """What an ended serving worker held, from its held list in Redis, and which of it
        was running (None if it was between tasks). Nothing if Redis stayed away past the
        pool's stop: its lease then hands it on."""
        tasks = persist(
            "reading the tasks of an ended worker",
            lambda: self.broker.held_tasks(worker.consumer),
            self.abandon,
        )
        if not tasks:
            return [], None
        running_id = worker.running_task()
        running = next((t for t in tasks if t.task_id == running_id), None)
        return tasks, running

    def _hand_back(self, task: Result, holder: str | None = None) -> None:
        persist(
            "handing a task back",
            lambda: self.broker.requeue(task, front=True, **_held_by(holder)),
            self.abandon,
        )
