"""The one message model: a task and its result are the same object, from submission to receipt.

A :class:`Result` is created by :meth:`Queues.send_inputs`, travels to a worker, gains a value
or a failure there, and comes back to the thinker. Every hop stamps a time, so the overhead of
the machinery (round trip on the client's clock minus running time on the worker's clock) is
always visible.

On the wire a Result is a msgpack envelope (msgspec), versioned by :data:`ENVELOPE_VERSION`.
Fields added in later releases carry defaults and are ignored by older readers; a change that
older readers cannot survive bumps the version, and a reader refuses an envelope whose version
it does not know with a clear :class:`EnvelopeError`. User inputs and values are opaque bytes
inside the envelope, made by pickle (cloudpickle for what pickle cannot handle).
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import time
from typing import Any, Literal

import cloudpickle
import msgspec

from steersman.errors import EnvelopeError, EnvelopeVersionError, SerializationError

ENVELOPE_VERSION = 2
"""Version of the wire format. Readers accept exactly the versions they know. Version 1 was a
msgpack map per struct; version 2 is a msgpack array in field order."""

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
"""Lanes of a queue, in the order a worker serves them."""

FailureKind = Literal["exception", "timeout", "worker_lost", "cancelled"]


def lane_name(queue: str, priority: str) -> str:
    """Name of the lane that holds tasks of ``queue`` with ``priority`` (``sim:high``, ``sim``)."""
    return queue if priority == "normal" else f"{queue}:{priority}"


def lanes_of(queue: str) -> list[str]:
    """Lanes of ``queue``, highest priority first."""
    return [lane_name(queue, p) for p in PRIORITIES]


class ResourceRequest(msgspec.Struct, kw_only=True, omit_defaults=True, array_like=True):
    """Resources a task asks for, with Colmena's names.

    ``cpu_threads`` is applied by the worker that runs the task: it sets ``OMP_NUM_THREADS``
    and its kin and limits the BLAS/OpenMP thread pools already loaded in that process.
    ``None`` leaves the worker's defaults alone.
    """

    node_count: int = 1
    cpu_processes: int = 1
    cpu_threads: int | None = None
    slots: int = 1


class Failure(msgspec.Struct, kw_only=True, array_like=True):
    """Why a task did not succeed: an exception it raised, a timeout, a lost worker, a cancel."""

    kind: FailureKind
    type: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class WorkerInfo(msgspec.Struct, kw_only=True, array_like=True):
    """Where a task ran: host, process, worker identity and the versions of what ran it."""

    host: str
    pid: int
    worker_id: str
    versions: dict[str, str] = {}


class Timestamps(msgspec.Struct, kw_only=True, omit_defaults=True, array_like=True):
    """Wall-clock seconds (``time.time()``) at every hop of a task's life.

    ``created``, ``queued`` and ``result_received`` are read on the client's clock;
    ``picked_up`` to ``result_queued`` on the worker's.
    """

    created: float = 0.0
    queued: float | None = None
    picked_up: float | None = None
    started: float | None = None
    finished: float | None = None
    result_queued: float | None = None
    result_received: float | None = None


class Serialization(msgspec.Struct, kw_only=True, omit_defaults=True, array_like=True):
    """Time spent turning user objects into bytes and back, and how many bytes."""

    inputs_bytes: int = 0
    value_bytes: int = 0
    serialize_inputs: float = 0.0
    deserialize_inputs: float = 0.0
    serialize_value: float = 0.0
    deserialize_value: float = 0.0


class Result(msgspec.Struct, kw_only=True, dict=True, array_like=True):
    """A task and, once it ran, its outcome: the one message model of steersman.

    Users read ``args``, ``kwargs``, ``value``, ``success``, ``failure``, ``task_info``,
    ``time_running`` and ``overhead``; the rest is provenance.
    """

    v: int = ENVELOPE_VERSION
    task_id: str
    key: str | None = None
    method: str
    queue: str = "default"
    topic: str = "default"
    inputs: bytes | None = None
    keep_inputs: bool = True
    resources: ResourceRequest = msgspec.field(default_factory=ResourceRequest)
    priority: Priority = "normal"
    timeout: float | None = None
    max_retries: int = 3
    retry_on_exception: bool = False
    attempt: int = 1
    task_info: dict[str, Any] = {}
    complete: bool = False
    success: bool | None = None
    value_data: bytes | None = None
    failure: Failure | None = None
    # Inputs or a value too big to travel inline sit in the broker's value store under these.
    inputs_ref: str | None = None
    value_ref: str | None = None
    worker: WorkerInfo | None = None
    timestamps: Timestamps = msgspec.field(default_factory=Timestamps)
    serialization: Serialization = msgspec.field(default_factory=Serialization)
    part: int = 0
    """Which partial result of its attempt this is (1, 2, ...: what a generator yielded, in
    order); 0 for a final result. Lets a broker deliver a partial result once even if its
    delivery is repeated after a lost reply."""

    # ----------------------------------------------------------------- user-facing views
    @property
    def lane(self) -> str:
        """The lane of its queue this task waits in (``sim:high``, ``sim``, ``sim:low``)."""
        return lane_name(self.queue, self.priority)

    def _inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        cached = self.__dict__.get("_inputs_cache")
        if cached is None:
            if self.inputs is None:
                raise AttributeError(
                    f"task {self.task_id} was sent with keep_inputs=False; its inputs are gone"
                )
            start = time.perf_counter()
            cached = loads(self.inputs)
            self.serialization.deserialize_inputs += time.perf_counter() - start
            self.__dict__["_inputs_cache"] = cached
        return cached

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional inputs of the task."""
        return self._inputs()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword inputs of the task."""
        return self._inputs()[1]

    @property
    def value(self) -> Any:
        """What the method returned (or yielded, if intermediate); ``None`` if it failed."""
        if "_value_cache" not in self.__dict__:
            if self.value_data is None:
                self.__dict__["_value_cache"] = None
            else:
                start = time.perf_counter()
                self.__dict__["_value_cache"] = loads(self.value_data)
                self.serialization.deserialize_value += time.perf_counter() - start
        return self.__dict__["_value_cache"]

    def set_value(self, value: Any) -> None:
        """Record a successful outcome (used by workers)."""
        start = time.perf_counter()
        self.value_data = dumps(value, what=f"the value returned by method '{self.method}'")
        self.serialization.serialize_value += time.perf_counter() - start
        self.serialization.value_bytes = len(self.value_data)
        self.__dict__["_value_cache"] = value
        self.success = True
        self.failure = None

    def set_failure(self, failure: Failure) -> None:
        """Record a failed outcome."""
        self.success = False
        self.failure = failure
        self.value_data = None
        self.__dict__["_value_cache"] = None

    def reset_for_retry(self, attempt: int | None = None) -> None:
        """Clear the outcome so the task can run again, as attempt ``attempt`` (default: next)."""
        self.attempt = self.attempt + 1 if attempt is None else attempt
        self.success = None
        self.failure = None
        self.value_data = None
        self.value_ref = None
        self.complete = False
        self.__dict__.pop("_value_cache", None)
        ts = self.timestamps
        ts.picked_up = ts.started = ts.finished = ts.result_queued = None

    def finish_failed(self, kind: FailureKind, type: str, message: str) -> None:
        """Make this the final Result of a task that failed outside its method (cancelled,
        unsendable, its workers lost), stamped as queued now."""
        self.complete = True
        self.set_failure(Failure(kind=kind, type=type, message=message))
        self.timestamps.result_queued = time.time()

    def fail_as_lost(self, what_happened: str, attempts: int) -> None:
        """Make this the final Result of a task whose workers kept dying: no retries left."""
        self.finish_failed(
            "worker_lost",
            "WorkerLost",
            f"{what_happened} on each of {attempts} attempt(s); "
            f"max_retries={self.max_retries} is used up",
        )

    @property
    def time_running(self) -> float | None:
        """Seconds the method ran, on the worker's clock."""
        ts = self.timestamps
        if ts.started is None or ts.finished is None:
            return None
        return ts.finished - ts.started

    @property
    def round_trip(self) -> float | None:
        """Seconds from submission to receipt, on the client's clock."""
        ts = self.timestamps
        if ts.result_received is None:
            return None
        return ts.result_received - ts.created

    @property
    def overhead(self) -> float | None:
        """Round trip minus running time: what the machinery cost. Holds across hosts whose
        clocks differ, because each difference is taken on one clock."""
        trip = self.round_trip
        if trip is None:
            return None
        return trip - (self.time_running or 0.0)

    def __repr__(self) -> str:
        state = "pending" if self.success is None else ("ok" if self.success else "failed")
        return (
            f"Result(task_id={self.task_id!r}, method={self.method!r}, topic={self.topic!r}, "
            f"attempt={self.attempt}, complete={self.complete}, {state})"
        )


Task = Result
"""A task in flight is a Result that has no outcome yet."""


def new_task_id() -> str:
    """32 random hex digits (128 random bits; a UUID4 has 122), five times quicker than uuid4."""
    return os.urandom(16).hex()


# --------------------------------------------------------------------- user objects to bytes
def dumps(obj: Any, what: str = "object") -> bytes:
    """Pickle ``obj``; fall back to cloudpickle for lambdas, closures and ``__main__`` classes."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as plain_error:  # PicklingError, TypeError, ValueError, RecursionError...
        try:
            return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            raise SerializationError(
                f"{what} cannot be serialized ({type(error).__name__}: {error}); "
                "pass plain data, or objects that pickle can handle"
            ) from plain_error


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`."""
    try:
        return pickle.loads(data)
    except Exception as error:
        raise SerializationError(
            f"could not deserialize ({type(error).__name__}: {error}); is the same code "
            "importable on both sides?"
        ) from error


# --------------------------------------------------------------------------- the envelope
# The structs are encoded as msgpack arrays in field order (``array_like``): no field names
# on the wire, so an envelope is less than half the size of a map. ``v`` comes first; a new
# release may add fields at the end only, and an older reader ignores what it does not know.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Result)
_batch_decoder = msgspec.msgpack.Decoder(list[Result])


def check_task_info(info: dict[str, Any]) -> None:
    """``task_info`` travels in the envelope itself: it must be plain data (str keys; str,
    numbers, bools, None, lists and dicts of them)."""
    try:
        _encoder.encode(info)
    except (TypeError, ValueError, OverflowError) as error:
        raise SerializationError(
            f"task_info must be plain data (strings, numbers, lists, dicts): {error}"
        ) from None


def encode(task: Result) -> bytes:
    """The wire form of a task or result."""
    return _encoder.encode(task)


def encode_batch(tasks: list[Result]) -> bytes:
    return _encoder.encode(tasks)


def _version_of(data: bytes) -> int | None:
    """The ``v`` of an envelope of any release (an array with ``v`` first, or a map with a
    ``v`` key, as version 1 wrote), or None if it is neither."""
    try:
        raw = msgspec.msgpack.decode(data)
    except Exception:  # msgspec raises UnicodeDecodeError too, for a garbled string
        return None
    version = (
        raw[0]
        if isinstance(raw, list) and raw
        else (raw.get("v") if isinstance(raw, dict) else None)
    )
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _refuse(data: bytes, error: Exception) -> EnvelopeError:
    version = _version_of(data)
    if version is not None and version != ENVELOPE_VERSION:
        return EnvelopeVersionError(
            f"message has envelope version {version}, this release reads version "
            f"{ENVELOPE_VERSION}; run workers and clients of compatible steersman releases"
        )
    return EnvelopeError(f"garbled message ({len(data)} bytes): {error}")


def decode(data: bytes) -> Result:
    """Read a task or result from its wire form; raise :class:`EnvelopeError` if it is not one."""
    try:
        task = _decoder.decode(data)
    except Exception as error:  # DecodeError, ValidationError, UnicodeDecodeError, ...
        raise _refuse(data, error) from error
    if task.v != ENVELOPE_VERSION:
        raise _refuse(data, ValueError("version mismatch"))
    return task


def decode_batch(data: bytes) -> list[Result]:
    try:
        tasks = _batch_decoder.decode(data)
    except Exception as error:  # DecodeError, ValidationError, UnicodeDecodeError, ...
        raise EnvelopeError(f"garbled batch ({len(data)} bytes): {error}") from error
    for task in tasks:
        if task.v != ENVELOPE_VERSION:
            raise _refuse(encode(task), ValueError("version mismatch"))
    return tasks


# --------------------------------------------------------------------------- provenance
_worker_info_cache: dict[str, WorkerInfo] = {}


def worker_info(worker_id: str) -> WorkerInfo:
    """Provenance of the current process, computed once per worker id."""
    info = _worker_info_cache.get(worker_id)
    if info is None:
        from steersman import __version__

        info = WorkerInfo(
            host=socket.gethostname(),
            pid=os.getpid(),
            worker_id=worker_id,
            versions={
                "python": sys.version.split()[0],
                "steersman": __version__,
                "msgspec": msgspec.__version__,
            },
        )
        _worker_info_cache[worker_id] = info
    return info
