"""The Redis broker: tasks and results in Redis, for many processes and machines.

Layout (every key under the namespace ``{ns}``, so runs sharing one Redis never meet):

- ``{ns}:task``     hash  task id -> signed envelope of a task not yet finished
- ``{ns}:laneof``   hash  task id -> lane, for handing a task back
- ``{ns}:lost``     hash  task id -> times its consumer's lease ran out while holding it
- ``{ns}:lane:L``   list  ids waiting in lane L (``sim:high``, ``sim``, ``sim:low``)
- ``{ns}:bell:Q``   list  tokens that wake consumers blocked on queue Q
- ``{ns}:held:C``   list  ids consumer C has taken and not finished
- ``{ns}:hb:C``     string, expires after the lease: consumer C is alive
- ``{ns}:consumers`` set  consumers that may hold tasks
- ``{ns}:result:T`` list  signed envelopes of results on topic T
- ``{ns}:done:ID``  string, expires: the final result of ID was delivered (once only)
- ``{ns}:key:K``    string, expires: the id of the task submitted with user key K

Every change that moves a task between these places is one Lua script, so a crash between
two steps cannot lose or duplicate a task. A task is taken with ``LMOVE`` into its
consumer's held list; if the consumer stops heart-beating, any live consumer hands its held
tasks back (the *reaper*), counting a lost attempt. A final result is pushed only if its
``done`` marker did not exist: a task may run twice, its result is delivered once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from urllib.parse import urlparse

import redis

from steersman.errors import ConfigurationError, EnvelopeError, SteersmanError
from steersman.flag import Flag
from steersman.task import Result, decode, encode

logger = logging.getLogger(__name__)

HMAC_KEY_ENV = "STEERSMAN_HMAC_KEY"
SIGNATURE_BYTES = 32


class BrokerUnavailable(SteersmanError):
    """Redis could not be reached within the deadline."""


_SUBMIT = """
-- KEYS: task, laneof, lane, bell, keyrec ; ARGV: id, lane, envelope, ttl, has_key
if ARGV[5] == '1' then
  local first = redis.call('SET', KEYS[5], ARGV[1], 'NX', 'GET', 'EX', ARGV[4])
  if first then return first end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -64, -1)
return ARGV[1]
"""

_TAKE = """
-- KEYS: task, lost, held, lane1..laneN
for i = 4, #KEYS do
  local id = redis.call('LMOVE', KEYS[i], KEYS[3], 'LEFT', 'RIGHT')
  if id then
    local envelope = redis.call('HGET', KEYS[1], id)
    if envelope then
      return {id, envelope, redis.call('HGET', KEYS[2], id) or '0'}
    end
    redis.call('LREM', KEYS[3], 1, id)  -- cancelled or finished meanwhile
  end
end
return nil
"""

_DELIVER = """
-- KEYS: result, done, task, laneof, lost, held ; ARGV: id, envelope, ttl, final
if ARGV[4] == '0' then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  return 1
end
local first = redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3])
if first then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('LREM', KEYS[6], 1, ARGV[1])
if first then return 1 end
return 0
"""

_REQUEUE = """
-- KEYS: task, held, lane, bell ; ARGV: id, envelope, front
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then
  redis.call('LPUSH', KEYS[3], ARGV[1])
else
  redis.call('RPUSH', KEYS[3], ARGV[1])
end
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -64, -1)
return 1
"""

_REAP = """
-- KEYS: held, hb, consumers, laneof, lost ; ARGV: consumer, namespace
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local moved = 0
while true do
  local id = redis.call('RPOP', KEYS[1])
  if not id then break end
  local lane = redis.call('HGET', KEYS[4], id)
  if lane then
    redis.call('LPUSH', ARGV[2] .. ':lane:' .. lane, id)
    redis.call('HINCRBY', KEYS[5], id, 1)
    local queue = string.match(lane, '^([^:]+)')
    redis.call('RPUSH', ARGV[2] .. ':bell:' .. queue, '1')
    moved = moved + 1
  end
end
redis.call('SREM', KEYS[3], ARGV[1])
return moved
"""

_CANCEL = """
-- KEYS: task, laneof ; ARGV: namespace, id1..idN
local removed = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local lane = redis.call('HGET', KEYS[2], id)
  if lane and redis.call('LREM', ARGV[1] .. ':lane:' .. lane, 0, id) > 0 then
    local envelope = redis.call('HGET', KEYS[1], id)
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    table.insert(removed, envelope)
  end
end
return removed
"""


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or "localhost"
    if host == "localhost" or urlparse(url).scheme == "unix":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_hmac_key(key: bytes | str | None = None) -> bytes | None:
    """The signing key: given, else ``$STEERSMAN_HMAC_KEY`` (the key, or ``@path`` of a file)."""
    if key is None:
        key = os.environ.get(HMAC_KEY_ENV)
        if not key:
            return None
    if isinstance(key, str):
        if key.startswith("@"):
            with open(key[1:], "rb") as handle:
                return handle.read().strip()
        return key.encode()
    return key


class RedisBroker:
    """Tasks and results in Redis, behind the same interface as :class:`LocalBroker`.

    ``namespace`` isolates runs that share one Redis. Messages are signed with HMAC-SHA256
    when a key is set (``hmac_key`` or ``$STEERSMAN_HMAC_KEY``); a Redis that is not on this
    machine is refused without a key unless ``insecure=True``, because unpickling what anyone
    who reaches Redis wrote runs their code. ``lease_seconds`` is how long a consumer may
    stop heart-beating before the tasks it holds go to others; ``ttl_seconds`` is how long
    results, done markers and key records live.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        namespace: str = "steersman",
        *,
        hmac_key: bytes | str | None = None,
        insecure: bool = False,
        lease_seconds: float = 10.0,
        ttl_seconds: int = 7 * 24 * 3600,
        connect_timeout: float = 60.0,
    ) -> None:
        if not namespace or ":" in namespace:
            raise ConfigurationError(f"namespace must be non-empty without ':', got {namespace!r}")
        self.url = url
        self.namespace = namespace
        self.key = load_hmac_key(hmac_key)
        if self.key is None and not insecure and not _is_loopback(url):
            raise ConfigurationError(
                f"refusing unsigned messages over {url}: set {HMAC_KEY_ENV} (or pass hmac_key=) "
                "on every client and worker, or pass insecure=True if the network is trusted"
            )
        self.lease_seconds = lease_seconds
        self.ttl_seconds = int(ttl_seconds)
        self.connect_timeout = connect_timeout
        self.redis = redis.Redis.from_url(url, socket_keepalive=True, health_check_interval=30)
        self.consumer = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._submit = self.redis.register_script(_SUBMIT)
        self._take = self.redis.register_script(_TAKE)
        self._deliver = self.redis.register_script(_DELIVER)
        self._requeue = self.redis.register_script(_REQUEUE)
        self._reap = self.redis.register_script(_REAP)
        self._cancel = self.redis.register_script(_CANCEL)
        self._heart: threading.Thread | None = None
        self._heart_stop = threading.Event()
        self._heart_lock = threading.Lock()

    # --------------------------------------------------------------------------- keys
    def _k(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # ------------------------------------------------------------------------ signing
    def _seal(self, task: Result) -> bytes:
        body = encode(task)
        if self.key is None:
            return body
        return hmac.new(self.key, body, hashlib.sha256).digest() + body

    def _open(self, data: bytes) -> Result:
        if self.key is not None:
            signature, body = data[:SIGNATURE_BYTES], data[SIGNATURE_BYTES:]
            expected = hmac.new(self.key, body, hashlib.sha256).digest()
            if len(data) <= SIGNATURE_BYTES or not hmac.compare_digest(signature, expected):
                raise EnvelopeError(
                    "message signature does not match: forged, or signed with another key"
                )
            data = body
        return decode(data)

    # ---------------------------------------------------------------------- resilience
    def _call(self, what: str, func, *args, **kwargs):
        """Run a Redis call, retrying with backoff until ``connect_timeout`` passes."""
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.05
        while True:
            try:
                return func(*args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if time.monotonic() + delay > deadline:
                    raise BrokerUnavailable(
                        f"Redis at {self.url} is unreachable ({error}) after "
                        f"{self.connect_timeout:g} s; is redis-server running there?"
                    ) from error
                logger.warning(
                    "Redis at %s unreachable during %s; retrying in %.2f s", self.url, what, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # --------------------------------------------------------------------------- tasks
    def put_task(self, task: Result) -> tuple[str, bool]:
        queue = task.queue
        key_record = self._k("key", task.key) if task.key is not None else self._k("key", "-")
        first = self._call(
            "submit",
            self._submit,
            keys=[
                self._k("task"),
                self._k("laneof"),
                self._k("lane", task.lane),
                self._k("bell", queue),
                key_record,
            ],
            args=[
                task.task_id,
                task.lane,
                self._seal(task),
                self.ttl_seconds,
                "1" if task.key else "0",
            ],
        )
        first = first.decode() if isinstance(first, bytes) else first
        return first, first == task.task_id

    def _ensure_heartbeat(self) -> None:
        with self._heart_lock:
            if self._heart is not None:
                return
            self._beat()
            self._heart = threading.Thread(
                target=self._heartbeat, name="steersman-redis-heartbeat", daemon=True
            )
            self._heart.start()

    def _beat(self) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self._k("hb", self.consumer), "1", px=int(self.lease_seconds * 1000))
        pipe.sadd(self._k("consumers"), self.consumer)
        pipe.execute()

    def _heartbeat(self) -> None:
        # A lease is a promise renewed on a timer: this is the one periodic loop by design.
        while not self._heart_stop.wait(self.lease_seconds / 3):
            try:
                self._beat()
                self.reap()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                logger.warning("heartbeat to Redis at %s failed: %s; retrying", self.url, error)

    def reap(self) -> int:
        """Hand back the tasks of consumers whose lease ran out; return how many moved."""
        moved = 0
        for member in self.redis.smembers(self._k("consumers")):
            consumer = member.decode()
            moved += self._reap(
                keys=[
                    self._k("held", consumer),
                    self._k("hb", consumer),
                    self._k("consumers"),
                    self._k("laneof"),
                    self._k("lost"),
                ],
                args=[consumer, self.namespace],
            )
        if moved:
            logger.warning("handed back %d task(s) held by consumers whose lease ran out", moved)
        return moved

    def get_task(
        self,
        lanes: Sequence[str],
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result | None:
        self._ensure_heartbeat()
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        bells = list(dict.fromkeys(self._k("bell", lane.split(":")[0]) for lane in lanes))
        wake_key = self._k("wake", uuid.uuid4().hex)
        token = None
        if isinstance(stop, Flag):
            token = stop.add_waker(lambda: self._ring(wake_key))
        try:
            while True:
                if stop is not None and stop.is_set():
                    return None
                found = self._call(
                    "take",
                    self._take,
                    keys=[self._k("task"), self._k("lost"), self._k("held", self.consumer)]
                    + [self._k("lane", lane) for lane in lanes],
                )
                if found:
                    task = self._accept(found)
                    if task is not None:
                        return task
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                block = 0 if remaining is None else max(remaining, 0.001)
                if stop is not None and not isinstance(stop, Flag):
                    block = 0.05 if block == 0 else min(block, 0.05)
                self._call("wait", self.redis.blpop, [*bells, wake_key], timeout=block)
        finally:
            if token is not None:
                stop.remove_waker(token)
            self.redis.delete(wake_key)

    def _ring(self, wake_key: str) -> None:
        try:
            self.redis.rpush(wake_key, "1")
            self.redis.expire(wake_key, 60)
        except redis.RedisError as error:
            logger.warning("could not wake a waiter: %s", error)

    def _accept(self, found) -> Result | None:
        task_id, data, lost = found[0].decode(), found[1], int(found[2])
        try:
            task = self._open(data)
        except EnvelopeError as error:
            logger.error("rejected task %s from Redis at %s: %s", task_id, self.url, error)
            self.redis.lrem(self._k("held", self.consumer), 1, task_id)
            self.redis.hdel(self._k("task"), task_id)
            return None
        task.attempt += lost
        if task.attempt > task.max_retries + 1:
            task.fail_as_lost("the worker holding this task stopped answering", task.attempt - 1)
            self.put_result(task)
            return None
        return task

    def requeue(self, task: Result, front: bool = True) -> None:
        self._call(
            "requeue",
            self._requeue,
            keys=[
                self._k("task"),
                self._k("held", self.consumer),
                self._k("lane", task.lane),
                self._k("bell", task.queue),
            ],
            args=[task.task_id, self._seal(task), "1" if front else "0"],
        )

    def cancel_queued(self, task_ids: set[str]) -> list[Result]:
        if not task_ids:
            return []
        removed = self._call(
            "cancel",
            self._cancel,
            keys=[self._k("task"), self._k("laneof")],
            args=[self.namespace, *task_ids],
        )
        tasks = []
        for data in removed:
            try:
                tasks.append(self._open(data))
            except EnvelopeError as error:
                logger.error("cancelled a task whose envelope is not readable: %s", error)
        return tasks

    def queue_depths(self) -> dict[str, int]:
        prefix = self._k("lane", "")
        depths = {}
        for key in self.redis.scan_iter(match=prefix + "*"):
            depths[key.decode()[len(prefix) :]] = self.redis.llen(key)
        return depths

    # ------------------------------------------------------------------------- results
    def put_result(self, result: Result) -> None:
        self._call(
            "deliver",
            self._deliver,
            keys=[
                self._k("result", result.topic),
                self._k("done", result.task_id),
                self._k("task"),
                self._k("laneof"),
                self._k("lost"),
                self._k("held", self.consumer),
            ],
            args=[
                result.task_id,
                self._seal(result),
                self.ttl_seconds,
                "1" if result.complete else "0",
            ],
        )

    def get_result(
        self,
        topic: str,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result | None:
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        wake_key = self._k("wake", uuid.uuid4().hex)
        results_key = self._k("result", topic)
        token = stop.add_waker(lambda: self._ring(wake_key)) if isinstance(stop, Flag) else None
        try:
            while True:
                if stop is not None and stop.is_set():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    data = self._call("result", self.redis.lpop, results_key)
                    return None if data is None else self._read_result(data)
                block = 0 if remaining is None else max(remaining, 0.001)
                if stop is not None and not isinstance(stop, Flag):
                    block = 0.05 if block == 0 else min(block, 0.05)
                popped = self._call(
                    "result", self.redis.blpop, [results_key, wake_key], timeout=block
                )
                if popped is None or popped[0].decode() == wake_key:
                    continue
                result = self._read_result(popped[1])
                if result is not None:
                    return result
        finally:
            if token is not None:
                stop.remove_waker(token)
            self.redis.delete(wake_key)

    def _read_result(self, data: bytes) -> Result | None:
        try:
            return self._open(data)
        except EnvelopeError as error:
            logger.error("rejected a result from Redis at %s: %s", self.url, error)
            return None

    # ---------------------------------------------------------------------------- close
    def close(self) -> None:
        """Stop heart-beating (tasks still held go to others after the lease) and disconnect."""
        self._heart_stop.set()
        if self._heart is not None:
            self._heart.join()
        self.redis.close()
