"""Running one task: inputs in, a Result (or a stream of them) out, every failure a value."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
import os
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from steersman.task import Failure, Result, Timestamps, worker_info

_current: contextvars.ContextVar[Result | None] = contextvars.ContextVar(
    "steersman_current_task", default=None
)

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def current_task() -> Result | None:
    """The task being run by this worker, for a method that wants its id, attempt or resources."""
    return _current.get()


@contextlib.contextmanager
def _thread_limits(n_threads: int | None, own_process: bool) -> Iterator[None]:
    """Give the task ``n_threads`` threads: environment for what it starts, and the limits of
    the BLAS/OpenMP pools already loaded here. Only a worker that owns its process may."""
    if n_threads is None or not own_process:
        yield
        return
    from threadpoolctl import threadpool_limits

    saved = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    os.environ.update(dict.fromkeys(THREAD_ENV_VARS, str(n_threads)))
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def exception_failure(error: BaseException) -> Failure:
    return Failure(
        kind="exception",
        type=type(error).__name__,
        message=str(error),
        traceback="".join(traceback.format_exception(error)),
    )


def _intermediate(task: Result, item: Any, part: int) -> Result:
    ts = task.timestamps
    partial = msgspec.structs.replace(
        task,
        inputs=None,
        complete=False,
        part=part,
        timestamps=Timestamps(
            created=ts.created,
            queued=ts.queued,
            picked_up=ts.picked_up,
            started=ts.started,
            finished=time.time(),
        ),
    )
    partial.__dict__.clear()
    partial.set_value(item)
    return partial


def execute(
    task: Result,
    func: Callable[..., Any] | None,
    worker_id: str,
    own_process: bool,
) -> Iterator[Result]:
    """Run ``task`` with ``func`` and yield its Results: one per value a generator yields
    (``complete=False``), then the final one. Never raises for what the task does."""
    task.worker = worker_info(worker_id)
    if task.timestamps.picked_up is None:
        task.timestamps.picked_up = time.time()
    token = _current.set(task)
    try:
        if func is None:
            task.timestamps.started = task.timestamps.finished = time.time()
            task.set_failure(
                Failure(
                    kind="exception",
                    type="UnknownMethodError",
                    message=f"method {task.method!r} is not registered on worker {worker_id}",
                )
            )
        else:
            yield from _run(task, func, own_process)
    finally:
        _current.reset(token)
    if not task.keep_inputs:
        task.inputs = None
        task.__dict__.pop("_inputs_cache", None)
    task.complete = True
    yield task


def _run(task: Result, func: Callable[..., Any], own_process: bool) -> Iterator[Result]:
    try:
        args, kwargs = task._inputs()
    except Exception as error:
        task.timestamps.started = task.timestamps.finished = time.time()
        task.set_failure(exception_failure(error))
        return
    with _thread_limits(task.resources.cpu_threads, own_process):
        task.timestamps.started = time.time()
        try:
            output = func(*args, **kwargs)
            if inspect.isgenerator(output):
                for part in itertools.count(1):
                    try:
                        item = next(output)
                    except StopIteration as stop:
                        output = stop.value
                        break
                    yield _intermediate(task, item, part)
            task.timestamps.finished = time.time()
        except BaseException as error:  # a task's failure is a value, even SystemExit
            task.timestamps.finished = time.time()
            task.set_failure(exception_failure(error))
            return
    if task.timeout is not None and task.time_running > task.timeout:
        # Reached only where the task could not be killed (thread workers).
        task.set_failure(timeout_failure(task.timeout, killed=False))
        return
    try:
        task.set_value(output)
    except Exception as error:
        task.set_failure(exception_failure(error))


def timeout_failure(timeout: float, killed: bool) -> Failure:
    how = "its worker process was killed" if killed else "it ran to the end, past its deadline"
    return Failure(
        kind="timeout",
        type="TaskTimeout",
        message=f"task exceeded its timeout of {timeout:g} s; {how}",
    )
