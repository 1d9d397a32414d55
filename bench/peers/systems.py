"""One adapter per benchmarked system (and setting), behind one small interface.

Every adapter starts its system with 2 worker processes in ``start()`` and stops all of it
in ``stop()``. The workloads (``workloads.py``) only use:

- ``submit(kind, *args)`` -> a handle, and ``submit_many(kind, argslist)`` -> handles;
- ``result(handle, timeout)`` -> the task's value, raising ``TaskFailed`` if the system
  reports the task failed and ``TimeoutError`` if nothing came within ``timeout``;
- ``gather(handles, timeout)``: every value, in any order;
- ``next_done(pending, timeout)`` -> ``(handle, value)`` of a finished task among
  ``pending``. Systems without "first of these to finish" wait on the oldest, which with
  FIFO queues and equal tasks is the one that finishes first anyway.

``kind`` is the name of a function of ``tasks.py``: ``noop``, ``sleep``, ``marked_sleep``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import tasks

BENCH = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent
WORKERS = 2


class TaskFailed(Exception):
    """The system reported the task as failed (the reason is the message)."""


def short(error: BaseException | str, limit: int = 90) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def spawn(argv: list[str], workdir: Path, name: str, env: dict | None = None):
    """A worker command in its own session (so ``kill_group`` takes all its processes),
    its output in a log file of the run."""
    log = open(workdir / f"{name}-{uuid.uuid4().hex[:6]}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    log.close()  # the child holds its own copy of the descriptor
    return process


def kill_group(process: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process's session, then SIGKILL whatever is left after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:.0f} s")
        time.sleep(0.05)


class Adapter:
    """Base: ``gather`` and ``next_done`` on top of ``result``; ``submit_many`` on
    ``submit``. Subclasses override what their system does natively."""

    system = ""  # row label: the system
    setting = ""  # row label: the setting
    needs_redis = False
    redis_fsync: str | None = None  # "always": bench/redis_broker.py's server (AOF)
    n_noop = 3000  # tasks in the no-op throughput workload (a)

    def __init__(self, workdir: Path, redis_url: str | None = None) -> None:
        self.workdir = workdir
        self.redis_url = redis_url

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def submit(self, kind: str, *args) -> Any:
        raise NotImplementedError

    def submit_many(self, kind: str, argslist: list[tuple]) -> list:
        return [self.submit(kind, *args) for args in argslist]

    def result(self, handle, timeout: float) -> Any:
        raise NotImplementedError

    def gather(self, handles: list, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        return [self.result(h, max(0.1, deadline - time.monotonic())) for h in handles]

    def next_done(self, pending: list, timeout: float) -> tuple[Any, Any]:
        return pending[0], self.result(pending[0], timeout)

    def kill(self, pid: int) -> None:
        """The fault of workload (e): SIGKILL the process that runs the task."""
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- futures
class FuturesAdapter(Adapter):
    """Systems whose handles are ``concurrent.futures.Future``s (ProcessPool, Parsl)."""

    def result(self, handle, timeout):
        try:
            return handle.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no result within {timeout:.0f} s") from None
        except Exception as error:
            raise TaskFailed(short(error)) from None

    def next_done(self, pending, timeout):
        done, _ = concurrent.futures.wait(
            pending, timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        if not done:
            raise TimeoutError(f"no result within {timeout:.0f} s")
        handle = next(iter(done))
        return handle, self.result(handle, 0)


class ProcessPool(FuturesAdapter):
    system, setting = "ProcessPoolExecutor (floor)", "2 processes"
    n_noop = 20_000  # a run of about 2 s at ~10k/s

    def start(self):
        self.pool = concurrent.futures.ProcessPoolExecutor(WORKERS)
        self.pool.submit(tasks.noop).result(60)

    def stop(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in list((self.pool._processes or {}).values()):
            with contextlib.suppress(Exception):
                process.kill()

    def submit(self, kind, *args):
        return self.pool.submit(getattr(tasks, kind), *args)


# ---------------------------------------------------------------------------- steersman
class QueueAdapter(Adapter):
    """Systems whose results come back in arrival order from one queue (steersman,
    Colmena): the handle is the task id; results that are not the one waited for wait in
    ``stash``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stash: dict[str, Any] = {}

    def next_result(self, timeout: float) -> tuple[str, Any]:
        """(task id, value or a TaskFailed instance) of the next result to arrive."""
        raise NotImplementedError

    def _take(self, handle):
        value = self.stash.pop(handle)
        if isinstance(value, TaskFailed):
            raise value
        return value

    def result(self, handle, timeout):
        deadline = time.monotonic() + timeout
        while handle not in self.stash:
            task_id, value = self.next_result(max(0.01, deadline - time.monotonic()))
            self.stash[task_id] = value
        return self._take(handle)

    def next_done(self, pending, timeout):
        for handle in pending:
            if handle in self.stash:
                return handle, self._take(handle)
        task_id, value = self.next_result(timeout)
        self.stash[task_id] = value
        return task_id, self._take(task_id)

    def gather(self, handles, timeout):
        missing = set(handles) - self.stash.keys()
        deadline = time.monotonic() + timeout
        while missing:  # one set operation per result: the check must not grow with n
            task_id, value = self.next_result(max(0.01, deadline - time.monotonic()))
            self.stash[task_id] = value
            missing.discard(task_id)
        return [self._take(h) for h in handles]


def steersman_value(result) -> Any:
    if result.success:
        return result.value
    return TaskFailed(short(f"{result.failure.kind}: {result.failure.message}"))


class SteersmanEmbedded(QueueAdapter):
    system, setting = "steersman embedded", "defaults (prefetch auto)"
    # As for every system, enough tasks for a run of a second or more (at ~30k/s), so the
    # figure is the steady rate, not the first tasks' start-up.
    n_noop = 30_000

    def start(self):
        from steersman import Queues, WorkerPool

        kinds = ["noop", "sleep", "marked_sleep"]
        self.queues = Queues(methods=kinds)
        self.pool = WorkerPool(self.queues, [getattr(tasks, k) for k in kinds], workers=WORKERS)
        self.pool.__enter__()
        self.pool.wait_for_workers(60)

    def stop(self):
        self.pool.__exit__(None, None, None)
        self.queues.close()

    def submit(self, kind, *args):
        return self.queues.send_inputs(*args, method=kind)

    def next_result(self, timeout):
        from steersman import ResultTimeout

        try:
            result = self.queues.get_result(timeout=timeout)
        except ResultTimeout:
            raise TimeoutError(f"no result within {timeout:.0f} s") from None
        return result.task_id, steersman_value(result)


class SteersmanRedis(SteersmanEmbedded):
    """As ``bench/redis_broker.py`` runs it: its redis-server (AOF, fsync always), HMAC
    signing, default 10 s leases, one standalone ``steersman worker --concurrency 2``."""

    system, setting = "steersman Redis", "signed, leases, send_batch"
    n_noop = 20_000  # a run of about 1.5 s at ~13k/s
    needs_redis = True
    redis_fsync = "always"
    layout = (WORKERS,)  # standalone workers, by their --concurrency

    def start(self):
        from redis_broker import KEY
        from steersman import Queues
        from steersman.brokers.redis import RedisBroker

        namespace = f"peers{uuid.uuid4().hex[:8]}"
        argv = [sys.executable, "-m", "steersman.cli", "worker", "--redis", self.redis_url]
        argv += ["--namespace", namespace, "--queues", "default"]
        for kind in ("noop", "sleep", "marked_sleep"):
            argv += ["--method", f"tasks:{kind}"]
        env = {"STEERSMAN_HMAC_KEY": KEY}
        self.workers = [
            spawn([*argv, "--concurrency", str(n)], self.workdir, "steersman-worker", env)
            for n in self.layout
        ]
        self.broker = RedisBroker(self.redis_url, namespace, hmac_key=KEY)
        self.queues = Queues(methods=["noop", "sleep", "marked_sleep"], broker=self.broker)
        self.gather([self.submit("noop")], 60)  # the worker is up and serving

    def stop(self):
        try:
            self.queues.close()
        finally:
            for worker in self.workers:
                kill_group(worker, grace=10)

    def submit_many(self, kind, argslist):
        return self.queues.send_batch(argslist, method=kind)


class SteersmanRedisEverysec(SteersmanRedis):
    """The same with the AOF synced once a second: survives a crash of Redis (fault test (b)
    passes with it too), not a power loss; no fsync between a submission and its answer."""

    setting = "the same, AOF fsync everysec"
    redis_fsync = "everysec"


class SteersmanRedisLease(SteersmanRedis):
    """Two standalone workers of 1 process each; (e) kills the whole worker that runs the
    task (every process of its session: the worker, its process and what that started), as
    a lost host would, so the task comes back through the lease to the other worker."""

    setting = "2 workers × 1 process; (e) kills the whole worker: lease path"
    layout = (1, 1)

    def kill(self, pid):
        # The task's process leads a process group of its own (so a timeout kills what it
        # started); the whole worker is its session.
        session = os.getsid(pid)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.getsid(int(entry)) == session:
                        os.kill(int(entry), signal.SIGKILL)


# ---------------------------------------------------------------------------------- RQ
class RQ(Adapter):
    """Two ``rq worker`` processes; the default Worker forks a work horse per job."""

    system, setting = "RQ", "defaults (Worker: fork per job)"
    needs_redis = True
    n_noop = 300  # a fork per job: tens of tasks per second
    worker_class: str | None = None

    def start(self):
        from redis import Redis
        from rq import Queue, Worker

        self.connection = Redis.from_url(self.redis_url)
        self.queue = Queue("peers", connection=self.connection)
        rq = str(Path(sys.executable).parent / "rq")
        argv = [rq, "worker", "--url", self.redis_url, "--quiet"]
        if self.worker_class:
            argv += ["--worker-class", self.worker_class]
        self.workers = [spawn([*argv, "peers"], self.workdir, "rq") for _ in range(WORKERS)]
        wait_for(lambda: Worker.count(connection=self.connection) >= WORKERS, 60, "rq workers")

    def stop(self):
        for worker in self.workers:
            kill_group(worker)
        self.connection.close()

    def submit(self, kind, *args):
        return self.queue.enqueue(getattr(tasks, kind), *args)

    def result(self, handle, timeout):
        from rq.results import Result

        deadline = time.monotonic() + timeout
        while True:
            # Blocks on the job's result stream, whole seconds at a time.
            result = handle.latest_result(timeout=max(1, min(5, int(deadline - time.monotonic()))))
            if result is not None:
                if result.type == Result.Type.SUCCESSFUL:
                    return result.return_value
                raise TaskFailed(short(f"{result.type.name}: {result.exc_string or ''}"))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result within {timeout:.0f} s")


class RQTuned(RQ):
    """RQ's docs: SimpleWorker runs jobs in the worker process (no fork per job), and
    ``enqueue_many`` submits in one pipeline."""

    setting = "SimpleWorker + enqueue_many"
    n_noop = 3000
    worker_class = "rq.worker.SimpleWorker"

    def submit_many(self, kind, argslist):
        from rq import Queue

        function = getattr(tasks, kind)
        handles = []
        for base in range(0, len(argslist), 1000):
            jobs = [Queue.prepare_data(function, args) for args in argslist[base : base + 1000]]
            handles += self.queue.enqueue_many(jobs)
        return handles


# ------------------------------------------------------------------------------ Celery
class Celery(Adapter):
    """A ``celery worker -c 2`` (prefork pool: 2 processes), Redis broker and backend."""

    system, setting = "Celery", "defaults (prefetch ×4, early ack)"
    needs_redis = True
    n_noop = 2000
    tuned = False

    def start(self):
        os.environ["PEERS_REDIS_URL"] = self.redis_url
        os.environ["PEERS_CELERY_TUNED"] = "1" if self.tuned else "0"
        import celery_app

        self.app = celery_app
        celery = str(Path(sys.executable).parent / "celery")
        argv = [celery, "-A", "celery_app", "worker", "-c", str(WORKERS), "-l", "WARNING"]
        self.worker = spawn(argv, self.workdir, "celery")
        self.result(self.submit("noop"), 60)  # the worker is up and serving

    def stop(self):
        try:
            self.app.app.close()
        finally:
            kill_group(self.worker, grace=10)

    def submit(self, kind, *args):
        return getattr(self.app, kind).delay(*args)

    def result(self, handle, timeout):
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            return handle.get(timeout=timeout)
        except CeleryTimeout:
            raise TimeoutError(f"no result within {timeout:.0f} s") from None
        except Exception as error:
            raise TaskFailed(short(error)) from None


class CeleryTuned(Celery):
    setting = "prefetch ×16, acks_late + reject_on_worker_lost, group + join_native"
    tuned = True

    def submit_many(self, kind, argslist):
        from celery import group

        signature = getattr(self.app, kind)
        return list(group(signature.s(*args) for args in argslist).apply_async().results)

    def gather(self, handles, timeout):
        from celery.result import ResultSet

        try:
            return ResultSet(handles).join_native(timeout=timeout)
        except Exception as error:
            raise TaskFailed(short(error)) from None


# ------------------------------------------------------------------------------- Parsl
def htex_config(run_dir: Path, tuned: bool):
    """Parsl's HighThroughputExecutor on this machine: 2 workers (what its default, one
    per core, gives here anyway). Tuned: what Parsl's docs give for many short tasks —
    prefetching tasks beyond the idle workers and a shorter poll period — plus retries."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor

    options: dict[str, Any] = {"label": "htex", "max_workers_per_node": WORKERS}
    if tuned:
        options.update(prefetch_capacity=4, poll_period=1)
    return Config(
        executors=[HighThroughputExecutor(**options)],
        run_dir=str(run_dir / "runinfo"),
        retries=2 if tuned else 0,
    )


class Parsl(FuturesAdapter):
    system, setting = "Parsl", "HTEX defaults"
    n_noop = 2000
    tuned = False

    def start(self):
        import parsl

        self.dfk = parsl.load(htex_config(self.workdir, self.tuned))
        self.apps = {k: parsl.python_app(getattr(tasks, k)) for k in ("noop", "sleep")}
        self.apps["marked_sleep"] = parsl.python_app(tasks.marked_sleep)
        self.result(self.submit("noop"), 120)

    def stop(self):
        import parsl

        try:
            self.dfk.cleanup()
        finally:
            parsl.clear()

    def submit(self, kind, *args):
        return self.apps[kind](*args)


class ParslTuned(Parsl):
    setting = "HTEX prefetch_capacity=4, poll_period=1 ms, retries=2"
    tuned = True


# ------------------------------------------------------------------------------ Colmena
class Colmena(QueueAdapter):
    """Colmena's RedisQueues and its ParslTaskServer (a process of its own) running the
    HighThroughputExecutor as in the Parsl rows."""

    system, setting = "Colmena", "RedisQueues + ParslTaskServer defaults"
    needs_redis = True
    n_noop = 1000
    tuned = False

    def start(self):
        from colmena.queue.redis import RedisQueues
        from colmena.task_server import ParslTaskServer
        from redis import Redis

        port = Redis.from_url(self.redis_url).connection_pool.connection_kwargs["port"]
        options = {"keep_inputs": False} if self.tuned else {}
        self.queues = RedisQueues(
            topics=["default"], hostname="127.0.0.1", port=port, prefix=uuid.uuid4().hex, **options
        )
        methods = [tasks.noop, tasks.sleep, tasks.marked_sleep]
        config = htex_config(self.workdir, self.tuned)
        self.server = ParslTaskServer(methods, self.queues, config)
        self.server.start()
        first = self.submit("noop")
        deadline = time.monotonic() + 120
        while True:  # the server is up and serving, or it died (then say so)
            try:
                self.result(first, 2)
                break
            except TimeoutError:
                if not self.server.is_alive():
                    raise RuntimeError(
                        f"the Colmena task server exited with code {self.server.exitcode}"
                    ) from None
                if time.monotonic() > deadline:
                    raise

    def stop(self):
        try:
            self.queues.send_kill_signal()
            self.server.join(30)
        finally:
            if self.server.is_alive():
                self.server.kill()
                self.server.join(10)

    def submit(self, kind, *args):
        retries = {"max_retries": 2} if self.tuned else {}
        return self.queues.send_inputs(*args, method=kind, **retries)

    def next_result(self, timeout):
        from colmena.exceptions import TimeoutException

        try:
            result = self.queues.get_result(timeout=timeout)
        except TimeoutException:
            raise TimeoutError(f"no result within {timeout:.0f} s") from None
        if result is None:
            raise TaskFailed("the task server stopped")
        if result.success:
            return result.task_id, result.value
        info = result.failure_info
        return result.task_id, TaskFailed(short(info.exception if info else "failed"))


class ColmenaTuned(Colmena):
    setting = "keep_inputs=False, max_retries=2, tuned HTEX"
    tuned = True


# -------------------------------------------------------------------------------- Dask
class Dask(Adapter):
    """A LocalCluster of 2 worker processes with 1 thread each (nannies restart a killed
    worker); ``client.submit`` one task at a time."""

    system, setting = "Dask distributed", "client.submit one by one"

    def start(self):
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        )
        self.client = Client(self.cluster)
        self.result(self.submit("noop"), 60)

    def stop(self):
        try:
            self.client.close()
        finally:
            self.cluster.close()

    def submit(self, kind, *args):
        return self.client.submit(getattr(tasks, kind), *args, pure=False)

    def result(self, handle, timeout):
        from distributed import TimeoutError as DaskTimeout

        try:
            return handle.result(timeout=timeout)
        except (DaskTimeout, TimeoutError):
            raise TimeoutError(f"no result within {timeout:.0f} s") from None
        except Exception as error:
            raise TaskFailed(short(error)) from None

    def next_done(self, pending, timeout):
        from distributed import wait

        try:
            done, _ = wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            raise TimeoutError(f"no result within {timeout:.0f} s") from None
        handle = next(iter(done))
        return handle, self.result(handle, 60)  # finished; its value may still be on its way


class DaskTuned(Dask):
    setting = "client.map + client.gather"

    def submit_many(self, kind, argslist):
        columns = list(zip(*argslist, strict=True)) if argslist and argslist[0] else []
        if not columns:  # argument-less tasks: map over a dummy argument
            return self.client.map(tasks.noop, range(len(argslist)), pure=False)
        return self.client.map(getattr(tasks, kind), *columns, pure=False)

    def gather(self, handles, timeout):
        try:
            return self.client.gather(handles)
        except Exception as error:
            raise TaskFailed(short(error)) from None


# --------------------------------------------------------------------------------- Ray
class Ray(Adapter):
    """A local Ray instance with 2 CPUs (2 worker processes for 1-CPU tasks); default
    ``@ray.remote`` tasks, ``ray.get`` on each reference in turn."""

    system, setting = "Ray", "defaults, ray.get per task"
    n_noop = 2000

    def start(self):
        import ray

        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
        self.ray = ray
        self.remotes = {k: ray.remote(getattr(tasks, k)) for k in ("noop", "sleep")}
        self.remotes["marked_sleep"] = ray.remote(tasks.marked_sleep)
        self.result(self.submit("noop"), 120)

    def stop(self):
        self.ray.shutdown()

    def submit(self, kind, *args):
        return self.remotes[kind].remote(*args)

    def result(self, handle, timeout):
        from ray.exceptions import GetTimeoutError

        try:
            return self.ray.get(handle, timeout=timeout)
        except GetTimeoutError:
            raise TimeoutError(f"no result within {timeout:.0f} s") from None
        except Exception as error:
            raise TaskFailed(short(error)) from None

    def next_done(self, pending, timeout):
        done, _ = self.ray.wait(pending, num_returns=1, timeout=timeout)
        if not done:
            raise TimeoutError(f"no result within {timeout:.0f} s")
        return done[0], self.result(done[0], 60)


class RayTuned(Ray):
    """Ray's performance tips: one ``ray.get`` on the whole list instead of one per task."""

    setting = "ray.get on whole lists, ray.wait"

    def gather(self, handles, timeout):
        try:
            return self.ray.get(handles, timeout=timeout)
        except Exception as error:
            raise TaskFailed(short(error)) from None


# ------------------------------------------------------------------------- raw echo
class RawEcho(Adapter):
    """The floor for one task at a time through Redis: the client LPUSHes a request, a
    worker process BRPOPs it and LPUSHes a reply (``bench/benchmethods.py``)."""

    system, setting = "raw redis-py echo (floor)", "LPUSH / BRPOP"
    needs_redis = True

    def start(self):
        import redis

        self.inbox, self.outbox = f"echo:{uuid.uuid4().hex}", f"echo:{uuid.uuid4().hex}"
        script = str(BENCH / "benchmethods.py")
        argv = [sys.executable, script, "echo", self.redis_url, self.inbox, self.outbox]
        self.worker = spawn(argv, self.workdir, "echo")
        self.client = redis.Redis.from_url(self.redis_url)

    def stop(self):
        try:
            self.client.lpush(self.inbox, b"stop")
            self.client.close()
        finally:
            kill_group(self.worker)

    def submit(self, kind, *args):
        if kind != "noop":
            raise NotImplementedError("the echo only answers no-ops")
        self.client.lpush(self.inbox, b"x")
        return None

    def result(self, handle, timeout):
        if self.client.brpop([self.outbox], timeout=max(1, int(timeout))) is None:
            raise TimeoutError(f"no reply within {timeout:.0f} s")
        return None


SYSTEMS: dict[str, type[Adapter]] = {
    "steersman-embedded": SteersmanEmbedded,
    "steersman-redis": SteersmanRedis,
    "steersman-redis-everysec": SteersmanRedisEverysec,
    "steersman-redis-lease": SteersmanRedisLease,
    "rq": RQ,
    "rq-tuned": RQTuned,
    "celery": Celery,
    "celery-tuned": CeleryTuned,
    "colmena": Colmena,
    "colmena-tuned": ColmenaTuned,
    "parsl": Parsl,
    "parsl-tuned": ParslTuned,
    "dask": Dask,
    "dask-tuned": DaskTuned,
    "ray": Ray,
    "ray-tuned": RayTuned,
    "processpool": ProcessPool,
    "echo": RawEcho,
}
# Only the echo skips workloads: it has no task to throw, sleep in or kill.
ECHO_ONLY = {"echo": ("roundtrip",)}
PEERS_NAMES = ("RQ", "Celery", "Colmena", "Parsl", "Dask distributed", "Ray")


def which_redis() -> str | None:
    return shutil.which("redis-server")
