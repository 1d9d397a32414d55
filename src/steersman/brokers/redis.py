"""The Redis broker: tasks and results in Redis, for many processes and machines.

Layout (every key under the namespace ``{ns}``, so runs sharing one Redis never meet):

- ``{ns}:task``        hash  task id -> signed envelope of a task not yet finished
- ``{ns}:laneof``      hash  task id -> lane, for handing a task back
- ``{ns}:lost``        hash  task id -> leases that ran out while a consumer held it
- ``{ns}:lane:L``      list  ids waiting in lane L (``sim:high``, ``sim``, ``sim:low``)
- ``{ns}:bell:Q``      list  tokens that wake workers of several lanes blocked on queue Q
                         (at most 64); a worker of one lane blocks on the lane itself
- ``{ns}:held:C``      list  ids client C has taken and not finished (running or prefetched);
                         a worker process of a pool is a client ``P/label`` of its own, whose
                         lease its pool's client ``P`` renews
- ``{ns}:hb:C``        string, expires after the lease: client C is alive
- ``{ns}:alive``       string, expires after a lease: some client beat within the last one
- ``{ns}:noreap``      string, expires after a lease: nobody had beaten for a whole lease
                         (Redis was away): nobody reaps until the live ones beat again
- ``{ns}:info:C``      hash, expires: host, pid, role and current task of C, for ``status``
- ``{ns}:consumers``   set   clients that may hold tasks or unacknowledged results
- ``{ns}:result:T``    list  signed envelopes of results on topic T
- ``{ns}:unacked:C:T`` list  results C took from topic T and has not acknowledged
- ``{ns}:useq:C:T``    string, expires: the number of C's last fetch from topic T ('!'
                         after it if that fetch found the record of the one before gone)
- ``{ns}:utopics:C``   set   topics C holds unacknowledged results of
- ``{ns}:done:ID``     string, expires: the final result of ID was delivered (once only)
- ``{ns}:parts``       hash, expires: task id -> place of the last partial result delivered
                         (attempt and part), until its final result
- ``{ns}:key:K``       string, expires: the id of the task submitted with user key K
- ``{ns}:sub:T``       string, expires: a digest of the ids of a submission of 100 tasks
                         or more, to know it if the same tasks are sent again
- ``{ns}:failed:ID``   string, expires: the final result of a task that failed
- ``{ns}:failedidx``   sorted set, expires: failed task ids by time
- ``{ns}:stats``       hash, expires: ``done:Q`` and ``failed:Q`` counts per queue
- ``{ns}:cancel``      set, expires: ids of running tasks asked to stop
- ``{ns}:blob:SHA``    string, expires: inputs or a value too big to travel inline
- ``{ns}:incompatible`` list, expires: ids of tasks written by a release with another wire
                         format, set aside (not run, not dropped) by a worker of this one
- ``{ns}:incompatible-results:T`` list, expires: such results of topic T, set aside by a
                         reader of this release

Every change that moves a task between these places is one Lua script, so a crash between
two steps cannot lose or duplicate a task. A task is taken with ``LMOVE`` into its
consumer's held list; if the consumer stops heart-beating, a live client hands its held
tasks back (the *reaper*), counting a lost attempt. A final result is pushed only if its
``done`` marker did not exist: a task may run twice, its result is delivered once. A reader
moves results into its own unacknowledged list (``BLMOVE`` when it has to wait) and
acknowledges them when it comes back for more, so a reader that dies holding results gives
them back too. A blocked wait is ended by ``CLIENT UNBLOCK`` when its stop flag is set.

Scripts build key names from the namespace, so the broker needs one Redis server (or a
replicated primary), not a Redis Cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import select
import socket
import struct
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import msgspec
import redis

from steersman.errors import (
    BrokerRefused,
    BrokerUnavailable,
    ConfigurationError,
    EnvelopeError,
    EnvelopeVersionError,
    SerializationError,
    ValueMissingError,
)
from steersman.flag import PLAIN_EVENT_CHECK_SECONDS, Flag
from steersman.task import Failure, Result, decode, encode, lanes_of

logger = logging.getLogger(__name__)

HMAC_KEY_ENV = "STEERSMAN_HMAC_KEY"
SIGNATURE_BYTES = 32
MiB = 1024 * 1024
BLOB_CACHE_BYTES = 256 * MiB
"""At most this much of recently read values by reference is kept in a client's memory."""
REAP_PERIOD = 1.0
"""Seconds between looks for lapsed leases (one live client looks each time): a dead client's
tasks move on within about this long after its lease runs out."""
_length = struct.Struct(">I").pack
SUBMIT_TOKEN_MIN = 100
"""A submission of this many tasks or more is recorded by a token (a digest of its ids), so
that done-markers are looked for only when the same tasks are sent again; smaller ones are
checked task by task and leave no record."""


class _Pool(redis.ConnectionPool):
    """redis-py's connection pool, with a cheaper look at each connection it hands out.

    The pool makes sure a connection has nothing left to read (a reply nobody read, or Redis
    having closed it) before it is used. redis-py looks with a non-blocking read through its
    parser, which raises and catches an exception each time (a lend and a return cost 7 µs
    of Python with redis-py 6.4, against 3.5 here); here a look at the parser's buffer and
    one ``poll(2)`` of the socket say the same. A connection found with something to read,
    or whose look fails, is connected afresh, as redis-py does."""

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        self._checkpid()
        with self._lock:
            try:
                connection = self._available_connections.pop()
            except IndexError:
                connection = self.make_connection()
            self._in_use_connections.add(connection)
        try:
            connection.connect()
            try:
                stale = _unread(connection)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                stale = True  # redis-py's own parser reads a closed connection as an error
            if stale:
                connection.disconnect()
                connection.connect()
        except BaseException:
            self.release(connection)
            raise
        return connection


def _unread(connection: Any) -> bool:
    """Whether ``connection`` has bytes to read: in its parser, its TLS layer or its socket
    (where a closed connection reads as end of file)."""
    reader = getattr(connection._parser, "_reader", None)
    if reader is None or not hasattr(reader, "has_data"):
        return bool(connection.can_read())  # another parser: redis-py's own look
    sock = connection._sock
    if reader.has_data() or (hasattr(sock, "pending") and sock.pending()):
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _token(tasks: Sequence[Result]) -> str:
    if len(tasks) < SUBMIT_TOKEN_MIN:
        return ""
    ids = b"".join(t.task_id.encode() for t in tasks)
    return hashlib.blake2b(ids, digest_size=16).hexdigest()


_SUBMIT = """
-- ARGV: ns, ttl, packed: per task id, lane, queue, envelope, key ('' if none), each
-- a 4-byte big-endian length and the bytes (one argument instead of five per task); token:
-- a digest of the ids, so the same tasks sent again give the same token ('' for a few).
-- Writes are gathered and made once per lane at the end: fewer commands, a shorter AOF.
local ns, ttl, packed = ARGV[1], ARGV[2], ARGV[3]
-- Only tasks sent before can have been queued and have finished since: only then is each
-- task's done-marker looked for (a third of the script's time otherwise).
local again = ARGV[4] == ''
    or not redis.call('SET', ns .. ':sub:' .. ARGV[4], '1', 'NX', 'EX', ttl)
local out, bells, lanes, order = {}, {}, {}, {}
local pos = 1
local function field()
  local size
  size, pos = struct.unpack('>I4', packed, pos)
  local value = string.sub(packed, pos, pos + size - 1)
  pos = pos + size
  return value
end
local function each(call, key, items)
  -- one command per up to 4,000 arguments (Lua's unpack has a limit)
  for i = 1, #items, 4000 do
    redis.call(call, key, unpack(items, i, math.min(i + 3999, #items)))
  end
end
local envelopes, laneof = {}, {}
local new = {}
while pos <= #packed do
  local id, lane, queue, envelope, key = field(), field(), field(), field(), field()
  local first = false
  if key ~= '' then
    local record = ns .. ':key:' .. key
    first = redis.call('GET', record)
    if first and first ~= id and not new[first]
        and redis.call('HEXISTS', ns .. ':task', first) == 0
        and redis.call('EXISTS', ns .. ':done:' .. first) == 0 then
      first = false  -- that task was cancelled or purged unrun: the key is free again
    end
    if not first then redis.call('SET', record, id, 'EX', ttl) end
  end
  if first and first ~= id then
    out[#out + 1] = first
  elseif new[id] or redis.call('HEXISTS', ns .. ':task', id) == 1
      or (again and redis.call('EXISTS', ns .. ':done:' .. id) == 1) then
    out[#out + 1] = id  -- a retried submission that had already landed
  else
    new[id] = true
    envelopes[#envelopes + 1] = id
    envelopes[#envelopes + 1] = envelope
    laneof[#laneof + 1] = id
    laneof[#laneof + 1] = lane
    if not lanes[lane] then
      lanes[lane] = {}
      order[#order + 1] = lane
    end
    local ids = lanes[lane]
    ids[#ids + 1] = id
    bells[queue] = (bells[queue] or 0) + 1
    out[#out + 1] = id
  end
end
each('HSET', ns .. ':task', envelopes)
each('HSET', ns .. ':laneof', laneof)
for _, lane in ipairs(order) do each('RPUSH', ns .. ':lane:' .. lane, lanes[lane]) end
for queue, n in pairs(bells) do
  -- A full bell already wakes whoever waits on it (or nobody does: workers of one lane wait
  -- on the lane itself), so it takes nothing more.
  local bell = ns .. ':bell:' .. queue
  local room = 64 - redis.call('LLEN', bell)
  if room > 0 then
    local tokens = {}
    for i = 1, math.min(n, room) do tokens[i] = '1' end
    redis.call('RPUSH', bell, unpack(tokens))
    redis.call('EXPIRE', bell, ttl)
  end
end
return out
"""

_TAKE = """
-- ARGV: ns, consumer, max, lane1..laneN (highest priority first)
local ns = ARGV[1]
-- A consumer reaped while it lives (it, or the client that renews its lease, was frozen
-- past the lease) takes nothing until a heartbeat lists it again: nobody would hand back
-- what it took.
if redis.call('SISMEMBER', ns .. ':consumers', ARGV[2]) == 0 then
  return redis.error_reply('REAPED this client was reaped; it takes nothing until it beats')
end
local held = ns .. ':held:' .. ARGV[2]
local want = tonumber(ARGV[3])
local out, n = {}, 0
for i = 4, #ARGV do
  while n < want do
    local id = redis.call('LMOVE', ns .. ':lane:' .. ARGV[i], held, 'LEFT', 'RIGHT')
    if not id then break end
    local envelope = redis.call('HGET', ns .. ':task', id)
    if envelope then
      out[#out + 1] = id
      out[#out + 1] = envelope
      out[#out + 1] = redis.call('HGET', ns .. ':lost', id) or '0'
      n = n + 1
    else
      redis.call('LREM', held, -1, id)  -- cancelled or finished meanwhile
    end
  end
end
return out
"""

_BACK_TO_LANE = """
-- Put a held id back at the front of its lane and ring its queue's bell (which wakes a
-- worker of several lanes); returns its lane, or nil if the task is gone. Prepended to the
-- scripts that use it.
local function back_to_lane(ns, id, ttl)
  local lane = redis.call('HGET', ns .. ':laneof', id)
  if not lane then return nil end
  redis.call('LPUSH', ns .. ':lane:' .. lane, id)
  local bell = ns .. ':bell:' .. string.match(lane, '^([^:]+)')
  redis.call('RPUSH', bell, '1')
  redis.call('LTRIM', bell, -64, -1)
  redis.call('EXPIRE', bell, ttl)
  return lane
end
-- A consumer reaped while it lives (it, or the client that renews its lease, was frozen
-- past the lease) holds nothing the reaper did not hand back but what its waits moved
-- since, and nobody would reap its list again: those go back to the front of their lanes.
-- Returns whether it was reaped.
local function hand_back_if_reaped(ns, consumer, ttl)
  if redis.call('SISMEMBER', ns .. ':consumers', consumer) == 1 then return false end
  local held = ns .. ':held:' .. consumer
  while true do
    local id = redis.call('RPOP', held)
    if not id then break end
    back_to_lane(ns, id, ttl)
  end
  return true
end
"""

_TAKEN = """
-- ARGV: ns, consumer, lane, ttl. Sent in the same round trip right after this consumer's
-- BLMOVE from the lane into its held list: reads what that moved (the last id held), so a
-- worker woken by a task has it whole without asking again. Also says how many wait in
-- the lane.
local ns = ARGV[1]
local held = ns .. ':held:' .. ARGV[2]
if hand_back_if_reaped(ns, ARGV[2], ARGV[4]) then
  return redis.error_reply('REAPED this client was reaped; it takes nothing until it beats')
end
local left = redis.call('LLEN', ns .. ':lane:' .. ARGV[3])
local id = redis.call('LINDEX', held, -1)
if not id then return {false, false, '0', left} end
local envelope = redis.call('HGET', ns .. ':task', id)
if not envelope then
  redis.call('LREM', held, -1, id)  -- cancelled or finished meanwhile
  return {id, false, '0', left}
end
return {id, envelope, redis.call('HGET', ns .. ':lost', id) or '0', left}
"""

_HELD = """
-- ARGV: ns, consumer, ttl. The ids this consumer holds, to find those a take whose reply
-- was lost moved (none if it was reaped while it lives: see hand_back_if_reaped).
if hand_back_if_reaped(ARGV[1], ARGV[2], ARGV[3]) then
  return redis.error_reply('REAPED this client was reaped; it takes nothing until it beats')
end
return redis.call('LRANGE', ARGV[1] .. ':held:' .. ARGV[2], 0, -1)
"""

_DELIVER = """
-- ARGV: ns, consumer, ttl, now, then per result: id, topic, queue, final ('1' for a final
-- result, else the place of a partial one: attempt * 2^32 + part), failed, envelope, key
-- ('' if none: a final result renews its key's record, so the key outlives the task by ttl).
-- Expiries, counters and deletions are made once per call, not once per result. A partial
-- result goes out only if it comes after the last one of its task that did (a delivery
-- repeated after a lost reply is not pushed twice) and before its task's final one.
local ns, ttl, now = ARGV[1], ARGV[3], ARGV[4]
local held = ns .. ':held:' .. ARGV[2]
local parts = ns .. ':parts'
local delivered = 0
local topics, counts, finished = {}, {}, {}
local any_failed, any_parts = false, false
local cancels = redis.call('EXISTS', ns .. ':cancel') == 1
for i = 5, #ARGV, 7 do
  local id, topic, queue = ARGV[i], ARGV[i+1], ARGV[i+2]
  local final, failed, envelope, key = ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6]
  local results = ns .. ':result:' .. topic
  if final ~= '1' then
    local last = tonumber(redis.call('HGET', parts, id) or '-1')
    if tonumber(final) > last and redis.call('EXISTS', ns .. ':done:' .. id) == 0 then
      redis.call('RPUSH', results, envelope)
      redis.call('HSET', parts, id, final)
      topics[results] = true
      any_parts = true
      delivered = delivered + 1
    end
  else
    if redis.call('SET', ns .. ':done:' .. id, '1', 'NX', 'EX', ttl) then
      redis.call('RPUSH', results, envelope)
      topics[results] = true
      delivered = delivered + 1
      if key ~= '' then
        local record = ns .. ':key:' .. key
        local holder = redis.call('GET', record)
        if not holder or holder == id then redis.call('SET', record, id, 'EX', ttl) end
      end
      local counter = (failed == '1' and 'failed:' or 'done:') .. queue
      counts[counter] = (counts[counter] or 0) + 1
      if failed == '1' then
        redis.call('SET', ns .. ':failed:' .. id, envelope, 'EX', ttl)
        redis.call('ZADD', ns .. ':failedidx', now, id)
        any_failed = true
      end
    end
    finished[#finished + 1] = id
    redis.call('LREM', held, 1, id)
    if cancels then redis.call('SREM', ns .. ':cancel', id) end
  end
end
-- An expiry is renewed once a minute (a tenth of a short ttl) of it has run: a read each
-- time, where a write each time would lengthen the append-only file; what was delivered
-- still lives at least that much less than ttl.
local slack = math.min(60, tonumber(ttl) / 10)
local function keep(key)
  if redis.call('TTL', key) < tonumber(ttl) - slack then redis.call('EXPIRE', key, ttl) end
end
for results in pairs(topics) do keep(results) end
if any_parts then keep(parts) end
local stats = ns .. ':stats'
local counted = false
for counter, n in pairs(counts) do
  redis.call('HINCRBY', stats, counter, n)
  counted = true
end
if counted then keep(stats) end
if any_failed then
  -- the index outlives no failure it lists (each record expires after ttl)
  redis.call('ZREMRANGEBYSCORE', ns .. ':failedidx', '-inf', tonumber(now) - tonumber(ttl))
  redis.call('EXPIRE', ns .. ':failedidx', ttl)
end
for i = 1, #finished, 4000 do
  local j = math.min(i + 3999, #finished)
  redis.call('HDEL', ns .. ':task', unpack(finished, i, j))
  redis.call('HDEL', ns .. ':laneof', unpack(finished, i, j))
  redis.call('HDEL', ns .. ':lost', unpack(finished, i, j))
  redis.call('HDEL', parts, unpack(finished, i, j))
end
return delivered
"""

_REQUEUE = """
-- ARGV: ns, consumer, id, lane, queue, envelope, front, ttl
-- The envelope now carries the whole attempt count, so lost leases are not counted again.
-- Only a task this consumer still holds and that has no final result goes back: a call
-- retried after a lost reply, or for a task the reaper already handed on, changes nothing.
local ns, id, lane = ARGV[1], ARGV[3], ARGV[4]
if redis.call('LREM', ns .. ':held:' .. ARGV[2], 1, id) == 0
    or redis.call('EXISTS', ns .. ':done:' .. id) == 1 then
  return 0
end
redis.call('HSET', ns .. ':task', id, ARGV[6])
redis.call('HSET', ns .. ':laneof', id, lane)
redis.call('HDEL', ns .. ':lost', id)
-- The record of its partial results stays: run again under the same attempt (it went back
-- untouched, from a worker stopping or from a process that died as its final result went
-- out), it yields the same parts again, and only those not delivered yet go out; a later
-- attempt's parts all come after them.
if ARGV[7] == '1' then
  redis.call('LPUSH', ns .. ':lane:' .. lane, id)
else
  redis.call('RPUSH', ns .. ':lane:' .. lane, id)
end
redis.call('RPUSH', ns .. ':bell:' .. ARGV[5], '1')
redis.call('LTRIM', ns .. ':bell:' .. ARGV[5], -64, -1)
redis.call('EXPIRE', ns .. ':bell:' .. ARGV[5], ARGV[8])
return 1
"""

_BEAT = """
-- ARGV: ns, consumer, lease_ms. Renews the consumer's lease. If nobody in the namespace beat
-- for a whole lease (Redis was down, or restarted, and every lease lapsed meanwhile), nobody
-- reaps anybody for one lease: the live clients beat again first.
local ns, c, ms = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', ns .. ':hb:' .. c, '1', 'PX', ms)
redis.call('SADD', ns .. ':consumers', c)
-- The mark lives as long as the longest lease that renews it: a client of a short lease must
-- not let it lapse under one of a longer lease, which would then hold off every reap.
local left = redis.call('PTTL', ns .. ':alive')
if left == -2 then redis.call('SET', ns .. ':noreap', '1', 'PX', ms) end
if left < tonumber(ms) then redis.call('SET', ns .. ':alive', '1', 'PX', ms) end
return 1
"""

_REAP = """
-- ARGV: ns, lock_ms, force, ttl
local ns, ttl = ARGV[1], ARGV[4]
if ARGV[3] ~= '1' and (redis.call('EXISTS', ns .. ':noreap') == 1
    or not redis.call('SET', ns .. ':reaplock', '1', 'NX', 'PX', ARGV[2])) then
  return -1
end
local moved = 0
for _, c in ipairs(redis.call('SMEMBERS', ns .. ':consumers')) do
  if redis.call('EXISTS', ns .. ':hb:' .. c) == 0 then
    local held = ns .. ':held:' .. c
    while true do
      local id = redis.call('RPOP', held)
      if not id then break end
      if back_to_lane(ns, id, ttl) then
        redis.call('HINCRBY', ns .. ':lost', id, 1)
        moved = moved + 1
      end
    end
    local topics = ns .. ':utopics:' .. c
    for _, topic in ipairs(redis.call('SMEMBERS', topics)) do
      local unacked = ns .. ':unacked:' .. c .. ':' .. topic
      local n = 0
      while true do
        local item = redis.call('RPOP', unacked)
        if not item then break end
        redis.call('LPUSH', ns .. ':result:' .. topic, item)
        n = n + 1
      end
      if n > 0 then redis.call('EXPIRE', ns .. ':result:' .. topic, ttl) end
      moved = moved + n
    end
    for _, topic in ipairs(redis.call('SMEMBERS', topics)) do
      redis.call('DEL', ns .. ':useq:' .. c .. ':' .. topic)
    end
    redis.call('DEL', topics, ns .. ':info:' .. c)
    redis.call('SREM', ns .. ':consumers', c)
  end
end
return moved
"""

_TAKE_RESULTS = """
-- ARGV: ns, consumer, topic, max, ttl, fetch: this reader's number for this fetch, taken:
-- how many results its previous fetch moved (all handed out since). A fetch with a new
-- number acknowledges those (the first `taken` of the unacknowledged list); any after them
-- were moved by a wait whose reply was lost and come first in this batch. The same number
-- again is a retry after a lost reply and returns the same batch.
local ns, c, topic = ARGV[1], ARGV[2], ARGV[3]
-- The first element of the reply is '1' if the record of this reader's previous fetch is
-- gone (someone reaped it, and what it had taken went back to the topic), else '0'.
local unacked = ns .. ':unacked:' .. c .. ':' .. topic
local seq = ns .. ':useq:' .. c .. ':' .. topic
local previous = redis.call('GET', seq)
-- The record is the fetch's number, with '!' after it if that fetch found the previous
-- one's record gone: asked again, it says so again (its first reply may be what was lost).
if previous == ARGV[6] or previous == ARGV[6] .. '!' then
  local again = redis.call('LRANGE', unacked, 0, -1)
  table.insert(again, 1, previous == ARGV[6] and '0' or '1')
  return again
end
local lost = (not previous and ARGV[6] ~= '1') and '1' or '0'
local taken = tonumber(ARGV[7])
if lost == '0' and taken > 0 then redis.call('LTRIM', unacked, taken, -1) end
redis.call('SET', seq, lost == '1' and ARGV[6] .. '!' or ARGV[6], 'EX', ARGV[5])
redis.call('SADD', ns .. ':utopics:' .. c, topic)
redis.call('EXPIRE', ns .. ':utopics:' .. c, ARGV[5])
local items = redis.call('LRANGE', unacked, 0, -1)
table.insert(items, 1, lost)
-- LMOVE one at a time rather than LPOP + RPUSH: the AOF then records each move, not each
-- result's bytes a second time.
local results = ns .. ':result:' .. topic
for _ = #items, tonumber(ARGV[4]) do
  local item = redis.call('LMOVE', results, unacked, 'LEFT', 'RIGHT')
  if not item then break end
  items[#items + 1] = item
end
if #items > 1 then redis.call('EXPIRE', unacked, ARGV[5]) end
return items
"""

_RECEIVED = """
-- ARGV: ns, consumer, topic, fetch, taken, ttl. Sent right after this reader's BLMOVE from
-- the topic into its unacknowledged list, in the same round trip: acknowledges the previous
-- fetch (the first `taken` results of the list) and records this one. Made after the move,
-- these writes reach the append-only file with it, not in a sync of their own while the
-- result is on its way. Replies: whether the previous fetch's record was gone (reaped), how
-- many results wait in the topic, and how many are unacknowledged (0 after a move: a reap
-- came between and gave the moved result back to the topic).
local ns, c, topic, fetch, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local unacked = ns .. ':unacked:' .. c .. ':' .. topic
local seq = ns .. ':useq:' .. c .. ':' .. topic
if redis.call('SISMEMBER', ns .. ':consumers', c) == 0 then
  -- This reader was reaped while its wait was in place (it stopped answering for longer
  -- than its lease: frozen, cut off), and nobody would hand back what the wait just moved:
  -- everything it holds unacknowledged goes back to the topic, as the reap did, and the
  -- reply says so. (A live reader is listed again at its next heartbeat.)
  local results = ns .. ':result:' .. topic
  while true do
    local item = redis.call('RPOP', unacked)
    if not item then break end
    redis.call('LPUSH', results, item)
  end
  redis.call('EXPIRE', results, ttl)
  redis.call('DEL', seq)
  return {1, redis.call('LLEN', results), 0}
end
local previous = redis.call('GET', seq)
local lost = (not previous and fetch ~= '1') and 1 or 0
local taken = tonumber(ARGV[5])
if lost == 0 and previous ~= fetch and previous ~= fetch .. '!' and taken > 0 then
  redis.call('LTRIM', unacked, taken, -1)
end
-- As the take-results script records it: a fetch by this number asked next (this reply
-- lost) must say again that the previous record was gone.
local mark = (lost == 1 or previous == fetch .. '!') and '!' or ''
redis.call('SET', seq, fetch .. mark, 'EX', ttl)
redis.call('EXPIRE', ns .. ':utopics:' .. c, ttl)
redis.call('EXPIRE', unacked, ttl)
return {lost, redis.call('LLEN', ns .. ':result:' .. topic), redis.call('LLEN', unacked)}
"""

_RELEASE_RESULTS = """
-- ARGV: ns, consumer, topic, ttl, then the envelopes taken but not handed to the caller, in
-- order
local ns, c, topic = ARGV[1], ARGV[2], ARGV[3]
redis.call('DEL', ns .. ':unacked:' .. c .. ':' .. topic, ns .. ':useq:' .. c .. ':' .. topic)
redis.call('SREM', ns .. ':utopics:' .. c, topic)
for i = #ARGV, 5, -1 do redis.call('LPUSH', ns .. ':result:' .. topic, ARGV[i]) end
if #ARGV >= 5 then redis.call('EXPIRE', ns .. ':result:' .. topic, ARGV[4]) end
return 1
"""

_CANCEL = """
-- ARGV: ns, id1..idN. Takes the queued ones out of their lanes; returns their envelopes.
local ns = ARGV[1]
local queued = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local lane = redis.call('HGET', ns .. ':laneof', id)
  if lane and redis.call('LREM', ns .. ':lane:' .. lane, 0, id) > 0 then
    queued[#queued + 1] = redis.call('HGET', ns .. ':task', id)
    redis.call('HDEL', ns .. ':task', id)
    redis.call('HDEL', ns .. ':laneof', id)
    redis.call('HDEL', ns .. ':lost', id)
    redis.call('HDEL', ns .. ':parts', id)
  end
end
return queued
"""

_CANCEL_DELIVER = """
-- ARGV: ns, ttl, now, then (id, topic, queue, envelope of its cancelled Result, or '' if
-- the task was not found) per task. A queued task leaves its lane and its Result is
-- delivered in the same step, so a crash or a call repeated after a lost reply cannot
-- leave it removed without a Result. Tasks not queued (running) are flagged for their
-- worker to stop.
local ns, ttl, now = ARGV[1], ARGV[2], ARGV[3]
local queued, running = {}, {}
for i = 4, #ARGV, 4 do
  local id, topic, queue, envelope = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local lane = redis.call('HGET', ns .. ':laneof', id)
  -- No envelope: the task was not there when its Result was to be made; left as it is.
  if lane and envelope ~= '' and redis.call('LREM', ns .. ':lane:' .. lane, 0, id) > 0 then
    if redis.call('SET', ns .. ':done:' .. id, '1', 'NX', 'EX', ttl) then
      local results = ns .. ':result:' .. topic
      redis.call('RPUSH', results, envelope)
      redis.call('EXPIRE', results, ttl)
      redis.call('HINCRBY', ns .. ':stats', 'failed:' .. queue, 1)
      redis.call('EXPIRE', ns .. ':stats', ttl)
      redis.call('SET', ns .. ':failed:' .. id, envelope, 'EX', ttl)
      redis.call('ZADD', ns .. ':failedidx', now, id)
      redis.call('ZREMRANGEBYSCORE', ns .. ':failedidx', '-inf', tonumber(now) - tonumber(ttl))
      redis.call('EXPIRE', ns .. ':failedidx', ttl)
    end
    redis.call('HDEL', ns .. ':task', id)
    redis.call('HDEL', ns .. ':laneof', id)
    redis.call('HDEL', ns .. ':lost', id)
    redis.call('HDEL', ns .. ':parts', id)
    queued[#queued + 1] = id
  elseif redis.call('HEXISTS', ns .. ':task', id) == 1 then
    redis.call('SADD', ns .. ':cancel', id)
    redis.call('EXPIRE', ns .. ':cancel', ttl)
    running[#running + 1] = id
  end
end
return {queued, running}
"""

_CANCELLED_HELD = """
-- ARGV: ns, consumer1..consumerN. Ids these consumers hold that someone asked to cancel.
local ns = ARGV[1]
local out = {}
if redis.call('SCARD', ns .. ':cancel') == 0 then return out end
for i = 2, #ARGV do
  for _, id in ipairs(redis.call('LRANGE', ns .. ':held:' .. ARGV[i], 0, -1)) do
    if redis.call('SISMEMBER', ns .. ':cancel', id) == 1 then out[#out + 1] = id end
  end
end
return out
"""

_PURGE = """
-- ARGV: ns, lane1..laneN. Drops the queued tasks of these lanes; returns how many.
local ns = ARGV[1]
local n = 0
for i = 2, #ARGV do
  local lane = ns .. ':lane:' .. ARGV[i]
  for _, id in ipairs(redis.call('LRANGE', lane, 0, -1)) do
    redis.call('HDEL', ns .. ':task', id)
    redis.call('HDEL', ns .. ':laneof', id)
    redis.call('HDEL', ns .. ':lost', id)
    redis.call('HDEL', ns .. ':parts', id)
    n = n + 1
  end
  redis.call('DEL', lane)
  redis.call('DEL', ns .. ':bell:' .. string.match(ARGV[i], '^([^:]+)'))  -- its wake-ups
end
return n
"""

_REVIVE = """
-- ARGV: ns, id, lane, queue, envelope, ttl. Queues a failed task again, if still recorded
-- failed.
local ns, id, lane, queue = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('DEL', ns .. ':failed:' .. id) == 0 then return 0 end
redis.call('DEL', ns .. ':done:' .. id)
redis.call('ZREM', ns .. ':failedidx', id)
redis.call('HDEL', ns .. ':parts', id)  -- a fresh first attempt streams afresh
-- The counters may have expired a little before the failure record: not made anew here.
local stats = ns .. ':stats'
if (tonumber(redis.call('HGET', stats, 'failed:' .. queue)) or 0) > 0 then
  redis.call('HINCRBY', stats, 'failed:' .. queue, -1)
end
redis.call('HSET', ns .. ':task', id, ARGV[5])
redis.call('HSET', ns .. ':laneof', id, lane)
redis.call('RPUSH', ns .. ':lane:' .. lane, id)
redis.call('RPUSH', ns .. ':bell:' .. queue, '1')
redis.call('LTRIM', ns .. ':bell:' .. queue, -64, -1)
redis.call('EXPIRE', ns .. ':bell:' .. queue, ARGV[6])
return 1
"""


class _OverMemory(BrokerRefused, redis.exceptions.OutOfMemoryError):
    """Redis over its maxmemory, said in one line with what to do; still the class of
    error redis-py raises, for code that answers it as such."""


class _ReadOnly(BrokerRefused, redis.exceptions.ReadOnlyError):
    """Redis a read-only replica, said in one line with what to do (see _OverMemory)."""


def _refused(where: str, what: str, error: redis.ResponseError) -> redis.ResponseError:
    """``error`` said as a refusal with what to do, if it is one (over maxmemory, a read-only
    replica); else ``error`` itself."""
    if isinstance(error, redis.exceptions.ReadOnlyError):
        kind: type[redis.ResponseError] = _ReadOnly
        advice = (
            "it is a read-only replica: point the URL at the primary (after a failover, the "
            "new one)"
        )
    elif isinstance(error, redis.exceptions.OutOfMemoryError):
        kind = _OverMemory
        advice = (
            "it is over its maxmemory: free memory there (collect the results waiting, "
            "`steersman purge` a queue) or raise its limit (CONFIG SET maxmemory)"
        )
    else:
        return error
    said = str(error).rstrip(".")
    refused = kind(
        f"Redis at {where} refused a write during {what} ({said}); {advice}; the write it "
        "refused did not happen"
    )
    refused.__cause__ = error
    return refused


def _reaped(reply: Any) -> bool:
    """Whether a reply is Redis refusing a take because the client was reaped."""
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("REAPED")


def _is_loopback(url: str) -> bool:
    parsed = urlparse(url)
    host = parsed.hostname or "localhost"
    if host == "localhost" or parsed.scheme == "unix":
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
            try:
                with open(key[1:], "rb") as handle:
                    return handle.read().strip()
            except OSError as error:
                raise ConfigurationError(
                    f"cannot read the HMAC key file {key[1:]}: {error}"
                ) from None
        return key.encode()
    return key


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.1f} KiB"


class _Reader:
    """One client's state for reading one topic."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fetch = 1  # the number of the next fetch; a retry reuses it
        self.taken = 0  # how many results the last fetch moved (the next one acknowledges)
        self.drained = False  # the last fetch emptied the topic: block for the next
        # Digests of the envelopes handed out from the unacknowledged fetch, and of those
        # handed out before a reap gave them back to the topic (not to be handed out again).
        self.handed: set[bytes] = set()
        self.skip: set[bytes] = set()
        # A wait for the next result sent along with a submission (see put_tasks): the
        # pooled connection it went out on, with Redis's id for that connection; its replies
        # are read by the next fetch.
        self.ahead: tuple[Any, int] | None = None


class RedisBroker:
    """Tasks and results in Redis, behind the same interface as :class:`LocalBroker`.

    ``namespace`` isolates runs that share one Redis. Messages are signed with HMAC-SHA256
    when a key is set (``hmac_key`` or ``$STEERSMAN_HMAC_KEY``); a Redis that is not on this
    machine is refused without a key unless ``insecure=True``, because unpickling what anyone
    who reaches Redis wrote runs their code. Passwords, ACL users and TLS go in the URL
    (``rediss://user:password@host:6380/0``).

    ``lease_seconds`` is how long a client may stop heart-beating before the tasks it holds go
    to others. ``ttl_seconds`` is how long every record the broker writes lives (results, done
    markers, key records, failed tasks, values by reference). ``connect_timeout`` is how long
    a call waits for an unreachable Redis before raising :class:`BrokerUnavailable`; ``None``
    waits for ever (what workers do). Inputs or values over ``inline_limit`` bytes travel by
    reference through ``value_store`` (Redis itself, or a directory every host shares);
    anything over ``max_payload_bytes`` is refused with a clear error.
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
        connect_timeout: float | None = 60.0,
        result_batch: int = 64,
        inline_limit: int = 1 * MiB,
        max_payload_bytes: int = 256 * MiB,
        value_store: str | os.PathLike | None = None,
    ) -> None:
        if not namespace or ":" in namespace:
            raise ConfigurationError(f"namespace must be non-empty without ':', got {namespace!r}")
        if lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be positive, got {lease_seconds!r}")
        self.url = url
        self.where = _redact(url)  # for messages: no password
        self.namespace = namespace
        self.key = load_hmac_key(hmac_key)
        if self.key is None and not insecure and not _is_loopback(url):
            raise ConfigurationError(
                f"refusing unsigned messages over {_redact(url)}: set {HMAC_KEY_ENV} "
                "(or pass hmac_key=) on every client and worker, or pass insecure=True if the "
                "network is trusted"
            )
        self.lease_seconds = lease_seconds
        self.ttl_seconds = int(ttl_seconds)
        self.connect_timeout = connect_timeout
        self.result_batch = result_batch
        self.inline_limit = inline_limit
        self.max_payload_bytes = max_payload_bytes
        self.value_dir = Path(value_store) if value_store is not None else None
        if self.value_dir is not None:
            try:
                self.value_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigurationError(
                    f"cannot use {self.value_dir} as the value store: {error.strerror}; name "
                    "a directory every client and worker can write"
                ) from None
        self._connect()
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.role = "client"
        self.describers: list[Callable[[], dict[str, Any]]] = []
        """Worker pools say here what they run now, for ``steersman status``."""
        self.cancel_handlers: list[Callable[[list[str]], None]] = []
        """Worker pools are told here which held tasks someone asked to cancel."""
        self.started = time.time()
        self._heart: threading.Thread | None = None
        self._heart_stop = threading.Event()
        self._heart_lock = threading.Lock()
        self._results_lock = threading.Lock()
        self._buffers: dict[str, deque[bytes]] = {}
        self._readers: dict[str, _Reader] = {}
        self._mine: set[str] = set()
        """Ids of tasks this client took and has not finished or handed back."""
        self._mine_lock = threading.Lock()
        self._take_unsure = False
        """A take failed in flight: its tasks may sit in our held list, never seen."""
        self._seen_empty: str | None = None
        """The one lane whose last take left it empty: the next take of that lane waits on
        it at once (``BLMOVE``) instead of first trying the take script, which would find
        nothing and cost a round trip per task to a worker kept idle between tasks."""
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        """Values by reference read lately, by digest (checked when read): a worker given
        the same big input task after task downloads it once."""
        self._blobs_size = 0
        self._blobs_lock = threading.Lock()
        self._closed = False
        self._adopted: set[str] = set()
        self._adopted_lock = threading.Lock()
        """Worker processes of pools on this client, whose leases this client renews."""
        self._beats_elsewhere = False  # a worker process: its pool's client beats for it
        self._reaped_said = -1e9  # when it last logged that it was reaped while it lived
        self._wait_loaded = False  # the script of a wait sent with a submission is loaded

    def _connect(self, socket_timeout: float | None = None) -> None:
        try:
            pool = _Pool.from_url(
                self.url,
                socket_keepalive=True,
                health_check_interval=30,
                socket_timeout=socket_timeout,
            )
            self.redis = redis.Redis.from_pool(pool)
        except ValueError as error:
            raise ConfigurationError(f"bad Redis URL {self.url!r}: {error}") from None
        scripts = {
            "submit": _SUBMIT,
            "take": _TAKE,
            "taken": _BACK_TO_LANE + _TAKEN,
            "held": _BACK_TO_LANE + _HELD,
            "deliver": _DELIVER,
            "requeue": _REQUEUE,
            "reap": _BACK_TO_LANE + _REAP,
            "beat": _BEAT,
            "take_results": _TAKE_RESULTS,
            "received": _RECEIVED,
            "release_results": _RELEASE_RESULTS,
            "cancel": _CANCEL,
            "cancel_deliver": _CANCEL_DELIVER,
            "cancelled_held": _CANCELLED_HELD,
            "purge": _PURGE,
            "revive": _REVIVE,
        }
        self._scripts = {name: self.redis.register_script(s) for name, s in scripts.items()}

    # ------------------------------------------------------------ worker processes
    def process_spec(self, label: str) -> dict[str, Any]:
        """What a worker process of a pool on this client needs to take tasks and deliver
        results itself, as a client of its own (see :meth:`for_worker_process`) whose lease
        this client renews (:meth:`adopt`)."""
        return {
            "url": self.url,
            "namespace": self.namespace,
            "consumer": f"{self.consumer}/{label}",
            "hmac_key": self.key,
            "lease_seconds": self.lease_seconds,
            "ttl_seconds": self.ttl_seconds,
            "inline_limit": self.inline_limit,
            "max_payload_bytes": self.max_payload_bytes,
            "value_store": None if self.value_dir is None else str(self.value_dir),
        }

    @classmethod
    def for_worker_process(
        cls, spec: dict[str, Any], stop: threading.Event | None = None
    ) -> RedisBroker | None:
        """The broker of a worker process (see :meth:`process_spec`). It waits for Redis as
        long as it takes, and beats once before it takes anything, so that what it takes is
        covered by a lease from the start; from then on its pool's client beats for it (a
        task that holds the GIL cannot starve that beat). None if ``stop`` is set first
        (the pool stops, or is gone)."""
        spec = dict(spec)
        consumer = spec.pop("consumer")
        broker = cls(**spec, insecure=True, connect_timeout=None)
        broker.consumer = consumer
        # Exactly the client's key, or none: not one this process's environment may hold.
        broker.key = spec["hmac_key"]
        broker.role = "worker"
        broker._beats_elsewhere = True
        delay = 0.5
        while True:
            try:
                broker._call("heartbeat", broker._renew, [consumer], give_up=stop)
                return broker
            except BrokerUnavailable:
                if stop is not None and stop.is_set():
                    return None
                raise
            except redis.ResponseError as error:
                # Redis refuses writes for now (over maxmemory, a replica in a failover):
                # waited out like a Redis away, not a death before ready, which would read
                # as methods that cannot be imported and, repeated, stop the pool.
                if stop is not None and stop.is_set():
                    return None
                logger.warning(
                    "worker process %s: its first heartbeat was refused: %s; trying again "
                    "in %.1f s",
                    consumer,
                    error,
                    delay,
                )
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    return None
                delay = min(delay * 2, 10.0)

    def adopt(self, consumer: str) -> None:
        """Renew the lease of ``consumer`` (a worker process of a pool on this client) with
        this client's own, until :meth:`retire`."""
        with self._adopted_lock:
            self._adopted.add(consumer)

    def retire(self, consumer: str) -> None:
        """Stop renewing the lease of an adopted consumer whose process ended, and remove it
        from Redis if it holds nothing; what it still holds goes to others once its lease
        runs out."""
        with self._adopted_lock:
            self._adopted.discard(consumer)
        self._remove_if_idle(consumer)

    def _remove_if_idle(self, consumer: str) -> None:
        """Remove a retired consumer from Redis if it holds nothing."""
        try:
            if self.redis.llen(self._k("held", consumer)) == 0:
                pipe = self.redis.pipeline()
                pipe.delete(self._k("hb", consumer))
                pipe.srem(self._k("consumers"), consumer)
                pipe.execute()
        except redis.RedisError as error:
            logger.warning("could not remove worker %s from Redis: %s", consumer, error)

    def held_tasks(self, consumer: str) -> list[Result]:
        """The tasks ``consumer`` holds, in the order it took them, with their lost leases
        counted in their attempt. One that cannot be read leaves the held list, logged."""
        ids = self.redis.lrange(self._k("held", consumer), 0, -1)
        if not ids:
            return []
        found = self._read_held(ids, holder=consumer)
        tasks = []
        for index in range(0, len(found), 3):
            task_id, data, lost = found[index].decode(), found[index + 1], int(found[index + 2])
            try:
                task = self._open(data, load_values=False)
            except EnvelopeError as error:
                logger.error("dropped held task %s: %s", task_id, error)
                self.redis.lrem(self._k("held", consumer), 1, task_id)
                continue
            task.attempt += lost
            tasks.append(task)
        return tasks

    def held_ids(self, consumer: str) -> list[str]:
        """Ids of the tasks ``consumer`` holds."""
        return [i.decode() for i in self.redis.lrange(self._k("held", consumer), 0, -1)]

    # --------------------------------------------------------------------------- keys
    def _k(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _reload(self, name: str, give_up: threading.Event | None = None) -> None:
        """Load a script sent by its digest in a pipeline (not through ``Script``, which
        loads itself): after a restart Redis has none, and answered NOSCRIPT."""
        self._call(
            "load script", self.redis.script_load, self._scripts[name].script, give_up=give_up
        )

    def _run(self, what: str, *args: Any) -> Any:
        return self._call(what, self._evalsha, what, args)

    def _evalsha(self, name: str, args: Sequence[Any]) -> Any:
        """Run script ``name`` by its digest on a pooled connection, loading it first if
        Redis answers that it has none (after a restart). redis-py's ``Script`` does the
        same through layers of dispatch that cost more than the script itself."""
        script = self._scripts[name]
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        try:
            packed = conn.pack_command("EVALSHA", script.sha, 0, self.namespace, *args)
            conn.send_packed_command(packed)
            try:
                return conn.read_response()
            except redis.exceptions.NoScriptError:
                conn.send_command("SCRIPT", "LOAD", script.script)
                conn.read_response()
            conn.send_packed_command(packed)
            return conn.read_response()
        finally:
            pool.release(conn)

    # ------------------------------------------------------------------------ signing
    def _seal(self, task: Result) -> bytes:
        task = self._externalize(task)
        body = encode(task)
        if self.key is None:
            return body
        return hmac.digest(self.key, body, "sha256") + body

    def _open(self, data: bytes, load_values: bool = True) -> Result:
        if self.key is not None:
            signature, body = data[:SIGNATURE_BYTES], data[SIGNATURE_BYTES:]
            expected = hmac.digest(self.key, body, "sha256")
            if len(data) <= SIGNATURE_BYTES or not hmac.compare_digest(signature, expected):
                raise EnvelopeError(
                    "message signature does not match: forged, or signed with another key"
                )
            data = body
        task = decode(data)
        if not load_values:
            return task
        if task.inputs_ref is not None:
            task.inputs = self._load_blob(task.inputs_ref)
            task.inputs_ref = None
        if task.value_ref is not None:
            task.value_data = self._load_blob(task.value_ref)
            task.value_ref = None
        return task

    # --------------------------------------------------------------------- value store
    def _externalize(self, task: Result) -> Result:
        """Check sizes; move inputs or a value over ``inline_limit`` to the value store."""
        limit = min(self.inline_limit, self.max_payload_bytes)
        if (task.inputs is None or len(task.inputs) <= limit) and (
            task.value_data is None or len(task.value_data) <= limit
        ):
            return task  # the usual case, checked without building anything
        changes: dict[str, Any] = {}
        for field, ref_field, what in (
            ("inputs", "inputs_ref", "inputs"),
            ("value_data", "value_ref", "value"),
        ):
            data = getattr(task, field)
            if data is None or len(data) <= limit:
                continue
            if len(data) > self.max_payload_bytes:
                raise SerializationError(
                    f"the {what} of task {task.task_id} ({task.method!r}) are {_size(len(data))}, "
                    f"over the broker's limit of {_size(self.max_payload_bytes)}: pass a file "
                    "path instead, or raise max_payload_bytes"
                )
            changes[field] = None
            changes[ref_field] = self._store_blob(data)
        return msgspec.structs.replace(task, **changes) if changes else task

    def _store_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self.value_dir is not None:
            path = self.value_dir / digest
            if not path.exists():
                partial = path.with_suffix(f".{uuid.uuid4().hex}.part")
                try:
                    partial.write_bytes(data)
                    partial.replace(path)
                except OSError as error:
                    # A full disk or a store gone: said now (a task refused, a result failed
                    # with the reason), not retried for ever while the lease keeps the task.
                    with contextlib.suppress(OSError):
                        partial.unlink()
                    raise SerializationError(
                        f"cannot write a value of {_size(len(data))} to the value store "
                        f"{self.value_dir}: {error.strerror or error}"
                    ) from None
        else:
            key = self._k("blob", digest)
            # The same value again (a search space sent with every inference round): renew
            # its time to live instead of uploading it once more.
            if not self._call("renew value", self.redis.expire, key, self.ttl_seconds):
                self._call("store value", self.redis.set, key, data, ex=self.ttl_seconds)
        self._remember_blob(digest, data)  # results bring inputs back by reference
        return digest

    def _load_blob(self, digest: str) -> bytes:
        with self._blobs_lock:
            cached = self._blobs.get(digest)
            if cached is not None:
                self._blobs.move_to_end(digest)
                return cached
        data = self._fetch_blob(digest)
        self._remember_blob(digest, data)
        return data

    def _remember_blob(self, digest: str, data: bytes) -> None:
        if len(data) > BLOB_CACHE_BYTES // 4:
            return
        with self._blobs_lock:
            if digest in self._blobs:
                self._blobs.move_to_end(digest)
                return
            self._blobs[digest] = data
            self._blobs_size += len(data)
            while self._blobs_size > BLOB_CACHE_BYTES:
                _, dropped = self._blobs.popitem(last=False)
                self._blobs_size -= len(dropped)

    def _fetch_blob(self, digest: str) -> bytes:
        if self.value_dir is not None:
            try:
                data = (self.value_dir / digest).read_bytes()
            except OSError as error:
                raise ValueMissingError(
                    f"value {digest[:12]} is missing from {self.value_dir} ({error.strerror}): "
                    "every client and worker must name the same shared directory "
                    "(value_store=, steersman worker --value-store)"
                ) from None
        else:
            data = self._call("load value", self.redis.get, self._k("blob", digest))
            if data is None:
                raise ValueMissingError(
                    f"value {digest[:12]} is not in Redis at {self.where}: it expired after "
                    "ttl_seconds, or its sender kept it in a value_store directory (start "
                    "workers with --value-store naming that directory)"
                )
        # The digest sits in the signed envelope, so checking it authenticates the value. The
        # envelope itself is authentic: its task or result is answered, not dropped.
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueMissingError(
                f"value {digest[:12]} in the value store does not match its digest: it was "
                "altered or corrupted there, and is not used"
            )
        return data

    # ---------------------------------------------------------------------- resilience
    def _call(self, what: str, func, *args, give_up: threading.Event | None = None, **kwargs):
        """Run a Redis call, retrying with backoff until ``connect_timeout`` passes, or until
        ``give_up`` is set (a worker that is stopping does not wait for Redis to return)."""
        deadline = (
            None if self.connect_timeout is None else (time.monotonic() + self.connect_timeout)
        )
        delay = 0.05
        while True:
            try:
                return func(*args, **kwargs)
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as error:
                # Waiting will not fix a wrong password or a missing permission.
                raise ConfigurationError(
                    f"Redis at {self.where} refused this client: {error}; check the "
                    "user and password in the URL and that user's ACL rules"
                ) from None
            except (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError) as error:
                raise _refused(self.where, what, error) from error
            except redis.exceptions.NoPermissionError as error:
                raise ConfigurationError(
                    f"Redis at {self.where} denied a command: {error}; the ACL user "
                    "needs +@all on the namespace's keys (~ns:*) or at least scripting, "
                    "list, hash, set, string and key commands and CLIENT ID / UNBLOCK"
                ) from None
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if "CERTIFICATE_VERIFY_FAILED" in str(error):
                    # Waiting will not make an untrusted certificate trusted.
                    raise ConfigurationError(
                        f"Redis at {self.where}: its TLS certificate is not trusted ({error}); "
                        "name the CA that signed it in the URL, "
                        "e.g. rediss://host:6380/0?ssl_ca_certs=/path/ca.pem"
                    ) from None
                if give_up is not None and give_up.is_set():
                    raise BrokerUnavailable(
                        f"Redis at {self.where} is unreachable ({error}); not waiting for it, "
                        f"as this {self.role} is stopping"
                    ) from error
                pause = delay
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BrokerUnavailable(
                            f"Redis at {self.where} is unreachable ({error}) after "
                            f"{self.connect_timeout:g} s; is redis-server running there?"
                        ) from error
                    pause = min(delay, left)
                if delay in (0.05, 5.0):  # the first retry, then one line per 5 s
                    logger.warning(
                        "Redis at %s unreachable during %s (%s); retrying in %.2f s",
                        self.where,
                        what,
                        error,
                        pause,
                    )
                if give_up is not None:
                    give_up.wait(pause)
                else:
                    time.sleep(pause)
                delay = min(delay * 2, 5.0)

    # --------------------------------------------------------------------------- tasks
    def put_task(self, task: Result) -> tuple[str, bool]:
        return self.put_tasks([task])[0]

    def put_tasks(self, tasks: Sequence[Result], chunk: int = 2000) -> list[tuple[str, bool]]:
        """Queue many tasks in few round trips; acknowledged, all of them, when this returns.

        If a chunk fails (an input too big, Redis away) after earlier ones were queued, the
        error carries their outcomes as ``submitted``: those tasks will run."""
        out: list[tuple[str, bool]] = []
        parts = [tasks[start : start + chunk] for start in range(0, len(tasks), chunk)]
        with contextlib.ExitStack() as stack:
            ahead = None
            if len(parts) > 1:
                # Seal and pack the next chunk while Redis runs this one: the wait for its
                # reply leaves the interpreter to the packing thread.
                ahead = stack.enter_context(
                    ThreadPoolExecutor(1, thread_name_prefix="steersman-pack")
                )
                packing = ahead.submit(self._pack, parts[0])
            for index, part in enumerate(parts):
                try:
                    packed = packing.result() if ahead is not None else self._pack(part)
                    if ahead is not None and index + 1 < len(parts):
                        packing = ahead.submit(self._pack, parts[index + 1])
                    firsts = None if ahead is not None else self._submit_waiting(part, packed)
                    if firsts is None:
                        firsts = self._run("submit", self.ttl_seconds, packed, _token(part))
                except BaseException as error:
                    if out:  # earlier chunks are queued: say so, so they are not forgotten
                        error.submitted = out  # type: ignore[attr-defined]
                        error.add_note(
                            f"{len(out)} of the {len(tasks)} tasks were queued before this "
                            "error; their results will arrive"
                        )
                    raise
                for task, first in zip(part, firsts, strict=True):
                    first = first.decode() if isinstance(first, bytes) else first
                    out.append((first, first == task.task_id))
        return out

    def _submit_waiting(self, tasks: Sequence[Result], packed: bytes) -> list[Any] | None:
        """Submit ``tasks`` and, in the same round trip, fetch the next results of their
        topic, if this client would fetch them now (it has read that topic before and handed
        out all it took). Returns the submit script's reply, or None if this was not done
        (the caller submits the usual way).

        If the last fetch emptied the topic, what goes along is the wait for the next
        result: a caller that sends a task and then waits for its result would otherwise
        start that wait only after the submission's reply, by when a fast worker may have
        delivered the result, and taking it would cost a write, and with ``appendfsync
        always`` a disk sync, of its own. Sent behind the submission, the wait is there
        first, and the move of the result is written with its delivery. Otherwise results
        may be waiting (a thinker that submits one task per result, with several in flight),
        and the fetch by number goes along: its writes share the submission's sync, and the
        next :meth:`get_result` finds them in hand."""
        topic = tasks[0].topic
        reader = self._readers.get(topic)
        if reader is None or any(t.topic != topic for t in tasks):
            return None
        self.keep_alive("client")
        if not reader.lock.acquire(blocking=False):
            return None  # another thread reads the topic: its wait is in place already
        try:
            with self._results_lock:
                if self._closed or self._buffers.get(topic) or reader.ahead is not None:
                    return None
            waiting = reader.drained
            if not self._wait_loaded:  # else their first use would find them missing
                self._reload("received")
                self._reload("take_results")
                self._wait_loaded = True
            pool = self.redis.connection_pool
            conn = None
            landed = False
            submit = self._scripts["submit"]
            commands: list[tuple[Any, ...]] = [
                ("EVALSHA", submit.sha, 0, self.namespace, self.ttl_seconds, packed, _token(tasks))
            ]
            if waiting:
                commands += self._wait_commands(topic, reader, self._block_seconds(None, None))
            else:
                commands.append(
                    (
                        "EVALSHA",
                        self._scripts["take_results"].sha,
                        0,
                        self.namespace,
                        *self._fetch_args(topic, reader),
                    )
                )
            try:
                conn = pool.get_connection()
                conn_id = self._client_id(conn)
                conn.send_packed_command(conn.pack_commands(commands))
                # The submission's reply, then the fetch's or the SADD's: an error reply comes
                # in its place, so neither is lost with the other.
                (firsts,) = self._replies(conn, 1)
                landed = not isinstance(firsts, redis.ResponseError)
                (behind,) = self._replies(conn, 1)
            except Exception as error:
                if landed:
                    # The submission landed; only what went behind it is unknown: the next
                    # fetch asks by number (this one's, if it ran: the same results).
                    conn.disconnect()
                    pool.release(conn)
                    reader.drained = False
                    return firsts
                # Redis away or the link broken: the usual way sorts it out. A submission is
                # safe to repeat, and the wait or the fetch may have moved results without
                # our knowing, so the next fetch asks by number (this one's: it returns what
                # this one took, and says again whether the record before was gone).
                logger.debug(
                    "submission with a fetch behind failed (%s); submitting plainly", error
                )
                if conn is not None:
                    conn.disconnect()
                    pool.release(conn)
                reader.drained = False
                return None
            if isinstance(firsts, redis.exceptions.NoScriptError) or isinstance(
                behind, redis.exceptions.NoScriptError
            ):
                self._wait_loaded = False  # Redis restarted: load them again at next use
            if waiting and isinstance(firsts, redis.ResponseError):
                # The wait went out with a submission that did not land: it is dropped with
                # its connection, and what it may have moved comes by the fetch by number.
                conn.disconnect()
                pool.release(conn)
                reader.drained = False
                return None
            if waiting:
                reader.ahead = (conn, conn_id)
            else:
                pool.release(conn)
                if isinstance(behind, redis.ResponseError):
                    reader.drained = False  # the next fetch asks by the same number
                else:
                    self._fetched(topic, reader, self._buffers[topic], behind)
            if isinstance(firsts, redis.ResponseError):
                return None  # submitted the usual way, which reports its error if it lasts
            return firsts
        finally:
            reader.lock.release()

    def pending(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The topic of each of ``task_ids`` that is queued or running (no final result)."""
        envelopes = self._call("read tasks", self.redis.hmget, self._k("task"), list(task_ids))
        out = {}
        for task_id, data in zip(task_ids, envelopes, strict=True):
            if data is None:
                continue
            try:
                out[task_id] = self._open(data, load_values=False).topic
            except EnvelopeError as error:
                logger.error("task %s is not readable here: %s", task_id, error)
        return out

    def _pack(self, tasks: Sequence[Result]) -> bytes:
        """The submit script's one argument for ``tasks``: id, lane, queue, signed envelope
        and key of each, each field its length and its bytes."""
        fields: list[bytes] = []
        for t in tasks:
            for value in (
                t.task_id.encode(),
                t.lane.encode(),
                t.queue.encode(),
                self._seal(t),
                (t.key or "").encode(),
            ):
                fields += (_length(len(value)), value)
        return b"".join(fields)

    def keep_alive(self, role: str) -> None:
        """Start renewing this client's lease (and those it adopted), if not yet begun."""
        with self._heart_lock:
            if role == "worker":
                self.role = "worker"
            if self._heart is not None or self._beats_elsewhere:
                return
            self._call("heartbeat", self._beat)
            self._heart = threading.Thread(
                target=self._heartbeat, name="steersman-redis-heartbeat", daemon=True
            )
            self._heart.start()

    def _beat(self) -> None:
        info: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "role": self.role,
            "started": self.started,
            "beat": time.time(),
        }
        for describe in list(self.describers):
            try:
                for name, value in describe().items():
                    if isinstance(value, list) and isinstance(info.get(name), list):
                        info[name] = info[name] + value
                    elif isinstance(value, int) and isinstance(info.get(name), int):
                        info[name] += value
                    else:
                        info[name] = value
            except Exception as error:  # status is best effort; the lease is not
                logger.debug("describing a pool failed: %s", error)
        with self._adopted_lock:
            adopted = list(self._adopted)
        self._renew([self.consumer, *adopted])
        # One retired while this beat renewed it is listed again: removed again. (Not by
        # holding the lock across the renewal: a call to Redis that hangs there would stop
        # the beat of every lease this client renews.)
        with self._adopted_lock:
            retired = [c for c in adopted if c not in self._adopted]
        for consumer in retired:
            self._remove_if_idle(consumer)
        info_key = self._k("info", self.consumer)
        pipe = self.redis.pipeline()
        pipe.hset(info_key, mapping={k: json.dumps(v) for k, v in info.items()})
        pipe.pexpire(info_key, int(3 * self.lease_seconds * 1000))
        pipe.execute()

    def _renew(self, consumers: list[str]) -> None:
        """Renew the leases of ``consumers`` (see the beat script)."""
        lease_ms = int(self.lease_seconds * 1000)
        for consumer in consumers:
            self._evalsha("beat", [consumer, lease_ms])

    def _heartbeat(self) -> None:
        # A lease is a promise renewed on a timer: this is the one periodic loop by design.
        # It beats every third of a lease, and looks for lapsed leases more often (every
        # REAP_PERIOD, live clients taking turns), so a dead client's tasks move on within
        # about REAP_PERIOD of its lease running out rather than a third of a lease.
        failing = False
        period = min(self.lease_seconds / 3, REAP_PERIOD)
        next_beat = 0.0
        while not self._heart_stop.wait(period):
            try:
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + self.lease_seconds / 3 - period / 2
                self.reap()
                if self.cancel_handlers:
                    with self._adopted_lock:
                        adopted = list(self._adopted)
                    ids = self._evalsha("cancelled_held", [self.consumer, *adopted])
                    for handler in list(self.cancel_handlers) if ids else ():
                        handler([i.decode() for i in ids])
                if failing:
                    logger.warning("heartbeat to Redis at %s is back", self.where)
                failing = False
            except Exception as error:  # the lease must outlive any error
                # Connection lost, out of memory, a read-only replica after a failover, a
                # cancel handler that raised: keep beating, or our tasks go to others.
                if not failing:
                    logger.warning(
                        "heartbeat to Redis at %s failed: %s; retrying", self.where, error
                    )
                failing = True

    def reap(self, force: bool = False) -> int:
        """Hand back the tasks and unacknowledged results of clients whose lease ran out.

        Live clients take turns (one reaps per :data:`REAP_PERIOD`, or third of a lease if
        shorter); ``force`` reaps now. Returns how many tasks and results moved.
        """
        lock_ms = max(1, int(min(self.lease_seconds / 3, REAP_PERIOD) * 1000 * 0.9))
        moved = self._evalsha("reap", [lock_ms, "1" if force else "0", self.ttl_seconds])
        if moved > 0:
            logger.warning(
                "handed back %d task(s) or result(s) held by clients whose lease ran out", moved
            )
        return max(moved, 0)

    def _blocking(
        self,
        stop: threading.Event | None,
        commands: Sequence[tuple[Any, ...]],
        errors: bool = False,
        first: Callable[[Any], None] | None = None,
    ) -> list[Any] | None:
        """Send ``commands`` (one of them blocks) in one round trip on a pooled connection.

        A :class:`Flag` ``stop`` ends the block at once with ``CLIENT UNBLOCK``, so a wait
        needs no wake list and no polling. Returns the replies, or None if ``stop`` was set.
        With ``errors``, a command's error reply is returned in its place, not raised, so
        the other replies are not lost with it; then ``first``, if given, is called with the
        first reply as soon as it comes, before the others (which may wait on the block).
        """
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        token = None
        try:
            conn_id = self._client_id(conn)
            if isinstance(stop, Flag):
                token = stop.add_waker(lambda: self._unblock(conn_id))
            if stop is not None and stop.is_set():
                return None
            conn.send_packed_command(conn.pack_commands(commands))
            if not errors:
                return [conn.read_response() for _ in commands]
            if first is None:
                return self._replies(conn, len(commands))
            replies = self._replies(conn, 1)
            first(replies[0])
            return replies + self._replies(conn, len(commands) - 1)
        except BaseException:
            conn.disconnect()  # a half-read reply must not reach the next user
            raise
        finally:
            if token is not None:
                stop.remove_waker(token)
            pool.release(conn)

    @staticmethod
    def _replies(conn: Any, count: int) -> list[Any]:
        """Read ``count`` replies; an error reply comes in its command's place, not raised,
        so the replies after it are not left unread on the connection."""
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as error:
                replies.append(error)
        return replies

    @staticmethod
    def _client_id(conn: Any) -> int:
        """Redis's id of this connection, asked once per socket (it changes on reconnect)."""
        known = getattr(conn, "_steersman_client_id", None)
        if known is not None and known[0] is conn._sock:
            return known[1]
        conn.send_command("CLIENT", "ID")
        client_id = int(conn.read_response())
        conn._steersman_client_id = (conn._sock, client_id)
        return client_id

    def _unblock(self, client_id: int) -> None:
        try:
            self.redis.execute_command("CLIENT", "UNBLOCK", client_id)
        except redis.RedisError as error:  # the wait then ends at its next check
            logger.warning("could not wake a waiter: %s", error)

    def _block_seconds(self, deadline: float | None, stop: threading.Event | None) -> float:
        """How long one blocking call may wait: to the deadline, and never more than a third
        of the lease, so that a client frozen while it waits (stopped, cut off) has no wait
        left in Redis by the time its lease runs out and it is reaped: that wait would move
        a task or result into lists nobody hands back. Bounded further when a stop must be
        noticed (a Flag wakes it at once; the bound covers a Flag set just before the call
        reached Redis, and a plain Event, which cannot wake anything)."""
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        bound = self.lease_seconds / 3
        if stop is not None:
            bound = min(bound, 2.0 if isinstance(stop, Flag) else PLAIN_EVENT_CHECK_SECONDS)
        return bound if remaining is None else min(remaining, bound)

    def get_task(
        self,
        lanes: Sequence[str],
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result | None:
        tasks = self.get_tasks(lanes, 1, timeout, stop)
        return tasks[0] if tasks else None

    def get_tasks(
        self,
        lanes: Sequence[str],
        max_count: int = 1,
        timeout: float | None = None,
        stop: threading.Event | None = None,
        deliver: Sequence[Result] = (),
        on_delivered: Callable[[], None] | None = None,
    ) -> list[Result]:
        """Take up to ``max_count`` tasks, first lanes first; wait for at least one.

        A worker of one lane waits with ``BLMOVE`` from the lane into its held list, so a
        task submitted to an idle worker is taken in the same step that wakes it; a worker
        of several lanes waits on the queues' bells, then takes in priority order.

        ``deliver`` are results to deliver first (as :meth:`put_results`). Before a wait in a
        lane seen empty, their delivery goes in the wait's round trip, ahead of it. They are
        delivered when this returns, whatever it returns, and ``on_delivered`` is called as
        soon as they are; if it raises, they may not be, and the caller delivers them again
        (a result delivered twice goes out once).
        """
        self.keep_alive("worker")
        ahead: list[Any] | None = None
        if deliver:
            ahead = [self.namespace, *self._deliver_args(deliver)]

        def settle() -> None:
            """Deliver ``deliver`` on a round trip of its own, if not done yet."""
            nonlocal ahead
            if ahead is not None:
                self._call("deliver", self._evalsha, "deliver", ahead[1:], give_up=stop)
                self._delivered(deliver)
                ahead = None
                if on_delivered is not None:
                    on_delivered()

        def delivered(reply: Any) -> None:
            """The reply of the delivery sent ahead of a wait: an error (the script forgotten
            in a restart, or a write refused) is answered by delivering on another
            connection while this one waits."""
            nonlocal ahead
            if not isinstance(reply, redis.ResponseError):
                self._delivered(deliver)
                ahead = None
                if on_delivered is not None:
                    on_delivered()
                return
            try:
                settle()
            except BaseException:
                self._take_unsure = True  # the wait behind may move a task nobody reads
                raise

        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        held = self._k("held", self.consumer)
        single = self._k("lane", lanes[0]) if len(lanes) == 1 else None
        bells = list(dict.fromkeys(self._k("bell", lane.split(":")[0]) for lane in lanes))
        while True:
            if stop is not None and stop.is_set():
                settle()
                return []
            if self._take_unsure:
                settle()
                self._take_unsure = False
                tasks = self._unsure(
                    lambda: self._accept(
                        self._call("recover taken tasks", self._unseen_held, give_up=stop)
                    )
                )
                if tasks:
                    return tasks
            expired = deadline is not None and time.monotonic() >= deadline
            if single is None or self._seen_empty != single or expired:
                settle()
                try:
                    found = self._call(
                        "take",
                        self._moving,
                        self._evalsha,
                        "take",
                        [self.consumer, max_count, *lanes],
                        give_up=stop,
                    )
                except redis.ResponseError as error:
                    if not _reaped(error):
                        raise
                    if self._wait_for_lease(deadline, stop):
                        return []
                    continue
                if single is not None and len(found) < 3 * max_count:
                    self._seen_empty = single
                if found:
                    tasks = self._unsure(self._accept, found)
                    if tasks:
                        return tasks
                    continue
            if deadline is not None and time.monotonic() >= deadline:
                settle()
                return []
            block = self._block_seconds(deadline, stop)
            if single is None:
                settle()
                self._call("wait", self._blocking, stop, [("BLPOP", *bells, block)], give_up=stop)
                continue
            taken = self._scripts["taken"]
            commands: list[tuple[Any, ...]] = []
            sent_ahead = ahead is not None
            if sent_ahead:
                commands.append(("EVALSHA", self._scripts["deliver"].sha, 0, *ahead))
            commands += [
                ("BLMOVE", single, held, "LEFT", "RIGHT", block),
                (
                    "EVALSHA",
                    taken.sha,
                    0,
                    self.namespace,
                    self.consumer,
                    lanes[0],
                    self.ttl_seconds,
                ),
            ]
            replies = self._call(
                "wait",
                self._moving,
                self._blocking,
                stop,
                commands,
                True,
                delivered if sent_ahead else None,
                give_up=stop,
            )
            if replies and sent_ahead:
                replies = replies[1:]
            task_id = replies[0] if replies else None
            if isinstance(task_id, redis.ResponseError):
                raise _refused(self.where, "wait", task_id)
            if task_id is not None:
                read = replies[1]
                if isinstance(read, redis.exceptions.NoScriptError):
                    # Not loaded (Redis restarted): run it again, which loads it.
                    read = self._unsure(self._read_taken, lanes[0], stop)
                if _reaped(read):
                    if self._wait_for_lease(deadline, stop):
                        return []
                    continue
                if isinstance(read, redis.ResponseError) or read[0] != task_id:
                    # It failed, or read something else: read the task on its own.
                    found, left = self._unsure(
                        self._call, "read task", self._read_held, [task_id], single, give_up=stop
                    )
                else:
                    found = [] if read[1] is None else read[:3]
                    left = read[3]
                self._seen_empty = single if left == 0 else None
                tasks = self._unsure(self._accept, found)
                if tasks:
                    return tasks

    def left_waiting(self, lanes: Sequence[str]) -> bool:
        """Whether this client's last take from ``lanes`` (a single lane) left tasks waiting
        in it, as far as the take saw (with several lanes, False: it cannot tell)."""
        return len(lanes) == 1 and self._seen_empty != self._k("lane", lanes[0])

    def _read_taken(self, lane: str, stop: threading.Event | None) -> Any:
        """The taken script on its own (as sent after a ``BLMOVE``); an error reply is
        returned, not raised."""
        try:
            return self._call(
                "read task",
                self._evalsha,
                "taken",
                [self.consumer, lane, self.ttl_seconds],
                give_up=stop,
            )
        except redis.ResponseError as error:
            return error

    def _wait_for_lease(self, deadline: float | None, stop: threading.Event | None) -> bool:
        """This client was reaped while it lives: wait a little for a heartbeat to list it
        again. Returns whether the caller's deadline or stop came first."""
        if time.monotonic() - self._reaped_said > 60:  # one line a minute while it lasts
            self._reaped_said = time.monotonic()
            logger.warning(
                "client %s was reaped (its lease ran out while it lived); taking nothing until "
                "its next heartbeat",
                self.consumer,
            )
        pause = min(self.lease_seconds / 3, 1.0)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        if stop is not None:
            stopped = stop.wait(pause)
        else:
            time.sleep(pause)
            stopped = False
        return stopped or (deadline is not None and time.monotonic() >= deadline)

    def _unsure(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a step that follows a take; if it fails, the taken tasks sit in our held list
        unseen, so the next fetch looks for them (``_take_unsure``)."""
        try:
            return func(*args, **kwargs)
        except BaseException:
            self._take_unsure = True
            raise

    def _moving(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a call that moves tasks into our held list, noting when its reply is lost."""
        try:
            return func(*args)
        except (redis.ConnectionError, redis.TimeoutError):
            self._take_unsure = True
            raise

    def _unseen_held(self) -> list[Any]:
        """Tasks in our held list that no reply told us about (a take whose reply was lost),
        as the take script returns them; without this they would wait for our lease to end,
        which never comes while we live."""
        try:
            ids = self._evalsha("held", [self.consumer, self.ttl_seconds])
        except redis.ResponseError as error:
            if not _reaped(error):
                raise
            return []  # put back in their lanes; the next take waits for a heartbeat
        with self._mine_lock:
            unseen = [i for i in ids if i.decode() not in self._mine]
        found = self._read_held(unseen) if unseen else []
        if found:
            logger.warning("took back %d task(s) whose take lost its reply", len(found) // 3)
        return found

    def _read_held(
        self, ids: list[bytes], lane: str | None = None, holder: str | None = None
    ) -> Any:
        """Envelopes and lost-lease counts of held ids, as the take script returns them; an
        id whose task is gone (cancelled or finished meanwhile) leaves the held list. Given
        a ``lane`` key, also returns how many ids wait in it, read in the same round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(self._k("task"), task_id)
            pipe.hget(self._k("lost"), task_id)
        if lane is not None:
            pipe.llen(lane)
        replies = pipe.execute()
        found: list[Any] = []
        for index, task_id in enumerate(ids):
            envelope, lost = replies[2 * index], replies[2 * index + 1]
            if envelope is None:
                self.redis.lrem(self._k("held", holder or self.consumer), -1, task_id)
            else:
                found += [task_id, envelope, lost or b"0"]
        return found if lane is None else (found, replies[-1])

    def _accept(self, found: list) -> list[Result]:
        tasks, exhausted = [], []
        for index in range(0, len(found), 3):
            task_id, data, lost = found[index].decode(), found[index + 1], int(found[index + 2])
            try:
                task = self._open(data)
            except ValueMissingError as error:
                # Authentic, but its inputs cannot be had here: a failed Result that says why,
                # not a task dropped without a word.
                logger.error("task %s cannot be run: %s", task_id, error)
                task = self._open(data, load_values=False)
                task.inputs_ref = None  # gone: the Result must not point at it
                task.attempt += lost
                task.finish_failed(
                    "exception", "ValueMissing", f"its inputs could not be loaded: {error}"
                )
                exhausted.append(task)
                continue
            except EnvelopeVersionError as error:
                # Intact, from another release: kept (its envelope stays in the task hash)
                # for a worker of that release, not run here and not dropped.
                aside = self._k("incompatible")
                logger.error(
                    "task %s from Redis at %s set aside in %s: %s",
                    task_id,
                    self.where,
                    aside,
                    error,
                )
                pipe = self.redis.pipeline(transaction=True)
                pipe.lrem(self._k("held", self.consumer), 1, task_id)
                pipe.rpush(aside, task_id)
                pipe.expire(aside, self.ttl_seconds)
                self._call("set aside", pipe.execute)
                continue
            except EnvelopeError as error:
                logger.error("rejected task %s from Redis at %s: %s", task_id, self.where, error)
                pipe = self.redis.pipeline()
                pipe.lrem(self._k("held", self.consumer), 1, task_id)
                for table in ("task", "laneof", "lost", "parts"):
                    pipe.hdel(self._k(table), task_id)
                self._call("reject", pipe.execute)
                continue
            task.attempt += lost
            if task.attempt > task.max_retries + 1:
                task.fail_as_lost(
                    "the worker holding this task stopped answering", task.attempt - 1
                )
                exhausted.append(task)
                continue
            tasks.append(task)
        if exhausted:
            # First: if this fails, none of the take is ours yet, and the next fetch takes it
            # all back from the held list (see _unsure).
            self.put_results(exhausted)
        with self._mine_lock:
            self._mine.update(t.task_id for t in tasks)
        return tasks

    def requeue(self, task: Result, front: bool = True, holder: str | None = None) -> None:
        """Hand a task this client (or ``holder``, a worker process it adopted) holds back to
        its lane. Only one still held and that has no final result goes back, so a call
        repeated after a lost reply is harmless."""
        self._run(
            "requeue",
            holder or self.consumer,
            task.task_id,
            task.lane,
            task.queue,
            self._seal(task),
            "1" if front else "0",
            self.ttl_seconds,
        )
        # Forgotten only once it has left the held list, so a fetch that looks for unseen
        # held tasks meanwhile does not take it back.
        with self._mine_lock:
            self._mine.discard(task.task_id)

    def cancel_queued(self, task_ids: set[str]) -> list[Result]:
        """Take the tasks among ``task_ids`` that wait in a lane out of it, without a Result
        (a thinker stopping early forgets them); return them."""
        ids = list(task_ids)
        if not ids:
            return []
        tasks = []
        for data in self._run("cancel", *ids):
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
        self.put_results([result])

    def put_results(self, results: Sequence[Result], holder: str | None = None) -> None:
        """Deliver results in one round trip; a final one only if none was delivered before.
        Their tasks leave the held list of this client, or of ``holder`` (a worker process
        it adopted)."""
        if results:
            self._run("deliver", *self._deliver_args(results, holder))
            self._delivered(results)

    def _deliver_args(self, results: Sequence[Result], holder: str | None = None) -> list[Any]:
        """The deliver script's arguments (after the namespace) for ``results``."""
        args: list[Any] = [holder or self.consumer, self.ttl_seconds, time.time()]
        for result in results:
            try:
                envelope = self._seal(result)
            except SerializationError as error:
                result.set_failure(
                    Failure(kind="exception", type="SerializationError", message=str(error))
                )
                envelope = self._seal(result)
            args += [
                result.task_id,
                result.topic,
                result.queue,
                "1" if result.complete else str((result.attempt << 32) + result.part),
                "1" if result.complete and not result.success else "0",
                envelope,
                (result.key or "") if result.complete else "",
            ]
        return args

    def _delivered(self, results: Sequence[Result]) -> None:
        with self._mine_lock:
            self._mine.difference_update(r.task_id for r in results if r.complete)

    def get_result(
        self,
        topic: str,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result | None:
        """Next result of ``topic``.

        Results are moved into this client's unacknowledged list, many at a time when many
        are waiting, else with a blocking ``BLMOVE`` that wakes the moment one is delivered;
        what one fetch took is acknowledged by the next fetch (or at :meth:`close`), so a
        reader that dies gives back what it had not finished with, and a fetch whose reply
        was lost is asked again under the same number and returns the same results.
        """
        self.keep_alive("client")
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with self._results_lock:
            reader = self._readers.setdefault(topic, _Reader())
            buffer = self._buffers.setdefault(topic, deque())
        while True:
            if not reader.lock.acquire(timeout=PLAIN_EVENT_CHECK_SECONDS):
                if (stop is not None and stop.is_set()) or (
                    deadline is not None and time.monotonic() >= deadline
                ):
                    return None
                continue  # another thread reads this topic now
            try:
                data = self._next_result(topic, reader, buffer, deadline, stop)
                if data is None:
                    return None
                try:
                    result = self._read_result(data, topic)
                except BaseException:
                    # Redis went away while loading a value by reference: keep the result
                    # for the next call, or the next fetch would acknowledge it unread.
                    with self._results_lock:
                        buffer.appendleft(data)
                    raise
                if result is not None:
                    digest = hashlib.blake2b(data, digest_size=16).digest()
                    # Counted as handed out by this fetch either way: if this fetch is given
                    # back too, what was handed out before must still not go out again.
                    reader.handed.add(digest)
                    if digest in reader.skip:  # handed out before a reap gave it back
                        reader.skip.discard(digest)
                        continue
            finally:
                reader.lock.release()
            if result is not None:
                return result

    def _next_result(
        self,
        topic: str,
        reader: _Reader,
        buffer: deque[bytes],
        deadline: float | None,
        stop: threading.Event | None,
    ) -> bytes | None:
        """The next envelope of ``topic`` (the caller holds ``reader.lock``), or None."""
        while True:
            with self._results_lock:
                if buffer:
                    return buffer.popleft()
            if not reader.drained:
                self._fetch_by_number(topic, reader, buffer)
                continue
            if (stop is not None and stop.is_set()) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                return None
            if reader.ahead is not None:
                replies = self._read_ahead(reader, deadline, stop)
                if replies is None:
                    return None  # the wait stays in place for the next call
            else:
                try:
                    replies = self._blocking(
                        stop,
                        self._wait_commands(topic, reader, self._block_seconds(deadline, stop)),
                        True,
                    )
                except (redis.ConnectionError, redis.TimeoutError):
                    replies = []
                if replies is None:
                    return None
            if not replies:
                # The move may have happened: ask again under the same fetch number through
                # the script, which returns that fetch's results and waits out the outage.
                reader.drained = False
                continue
            self._took(topic, reader, buffer, replies)

    def _fetch_by_number(
        self, topic: str, reader: _Reader, buffer: deque[bytes], retry: bool = True
    ) -> None:
        """Take up to ``result_batch`` results of ``topic`` into ``buffer`` with the script
        (which returns the same results if this fetch's number was asked before); with
        ``retry``, waits for Redis as any call does, else tries once."""
        args = self._fetch_args(topic, reader)
        reply = self._run("take_results", *args) if retry else self._evalsha("take_results", args)
        self._fetched(topic, reader, buffer, reply)

    def _fetch_args(self, topic: str, reader: _Reader) -> list[Any]:
        """The take-results script's arguments (after the namespace) for the next fetch."""
        return [
            self.consumer,
            topic,
            self.result_batch,
            self.ttl_seconds,
            reader.fetch,
            reader.taken,
        ]

    def _fetched(self, topic: str, reader: _Reader, buffer: deque[bytes], reply: list) -> None:
        """Account for the take-results script's reply: the results it took go into
        ``buffer``, and the fetch is recorded."""
        self._acknowledged(reader, topic, lost=reply[0] == b"1")
        items = reply[1:]
        reader.fetch += 1
        reader.taken = len(items)
        reader.drained = len(items) < self.result_batch
        with self._results_lock:
            buffer.extend(items)

    def _wait_commands(self, topic: str, reader: _Reader, block: float) -> list[tuple[Any, ...]]:
        """Commands that wait up to ``block`` seconds for the next result of ``topic``, move
        it into this client's unacknowledged list and acknowledge the previous fetch, in one
        round trip (see :meth:`_took` for their replies)."""
        received = self._scripts["received"]
        return [
            # Changes nothing (so syncs nothing) once the topic is listed, as the first
            # fetch (always the script) did; here for after a reap.
            ("SADD", self._k("utopics", self.consumer), topic),
            (
                "BLMOVE",
                self._k("result", topic),
                self._k("unacked", self.consumer, topic),
                "LEFT",
                "RIGHT",
                block,
            ),
            (
                "EVALSHA",
                received.sha,
                0,
                self.namespace,
                self.consumer,
                topic,
                reader.fetch,
                reader.taken,
                self.ttl_seconds,
            ),
        ]

    def _read_ahead(
        self, reader: _Reader, deadline: float | None, stop: threading.Event | None
    ) -> list[Any] | None:
        """The replies of the wait sent along with a submission, once they come; None if the
        deadline passes or ``stop`` is set first (the wait stays for the next call), and []
        if the connection failed (the caller then asks by fetch number)."""
        conn, conn_id = reader.ahead  # type: ignore[misc]
        token = None
        replies: list[Any] = [0]  # the first command's reply, read with the submission's
        try:
            if conn._sock is None:  # disconnected meanwhile: the wait is gone with it
                raise redis.ConnectionError("the connection of the wait was closed")
            if isinstance(stop, Flag):
                # Ends the wait in Redis, so its replies come at once.
                token = stop.add_waker(lambda: self._unblock(conn_id))
            if stop is not None and stop.is_set():
                return None
            while not conn.can_read(timeout=self._block_seconds(deadline, stop)):
                if (stop is not None and stop.is_set()) or (
                    deadline is not None and time.monotonic() >= deadline
                ):
                    return None
            replies += self._replies(conn, 2)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            replies = []
        finally:
            if token is not None:
                stop.remove_waker(token)  # type: ignore[union-attr]
        reader.ahead = None
        self.redis.connection_pool.release(conn)
        return replies

    def _took(self, topic: str, reader: _Reader, buffer: deque[bytes], replies: list[Any]) -> bool:
        """Account for the replies of :meth:`_wait_commands`: the result moved, if any, goes
        into ``buffer``; the fetch is recorded. False if it could not be (the next fetch must
        then ask by number: ``reader.drained`` is cleared)."""
        item, ack = replies[1], replies[2]
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                # The move may have happened without its acknowledgement step (an unloaded
                # script after a restart, out of memory): the script fetch sorts it out under
                # the same number, returning what the move took.
                reader.drained = False
                if not isinstance(reply, redis.exceptions.NoScriptError):
                    raise _refused(self.where, "wait", reply)
                self._reload("received")
                return False
        lost = ack[0] == 1
        self._acknowledged(reader, topic, lost=lost)
        if item is not None and lost and ack[2] == 0:
            # Reaped between the move and its acknowledgement, or our lease had run out and
            # the step gave everything back: the result went back to the topic with the rest
            # and comes again; handing it out now would make two. The next fetch is by
            # number (a wait would only give it back again until our next heartbeat).
            item = None
            reader.drained = False
        reader.fetch += 1
        reader.taken = 0 if item is None else 1
        if item is not None:
            with self._results_lock:
                buffer.append(item)
            reader.drained = ack[1] == 0
        return True

    def _acknowledged(self, reader: _Reader, topic: str, lost: bool) -> None:
        """A new fetch acknowledged the previous one. If that one's record was gone, another
        client had reaped this one (its lease ran out while it lived: a long network cut),
        and what it had taken went back to the topic: what was handed out already must not
        be handed out again when it comes back."""
        if lost and reader.handed:
            logger.warning(
                "results of topic %r taken by this client went back to the topic (its lease "
                "ran out: was Redis at %s out of reach?); %d already handed out are skipped "
                "when they come again",
                topic,
                self.where,
                len(reader.handed),
            )
            reader.skip |= reader.handed
        reader.handed = set()

    def _read_result(self, data: bytes, topic: str | None = None) -> Result | None:
        """The result in ``data``, or None if it is not readable (logged). One read from the
        results of ``topic`` that another release wrote is set aside, not dropped."""
        try:
            return self._open(data)
        except ValueMissingError as error:
            # The result is authentic but its value is gone: the reader learns why.
            logger.error("a result's value cannot be loaded: %s", error)
            result = self._open(data, load_values=False)
            result.value_ref = None
            result.set_failure(
                Failure(
                    kind="exception",
                    type="ValueMissing",
                    message=f"the task ran, but its value could not be loaded: {error}",
                )
            )
            return result
        except EnvelopeVersionError as error:
            if topic is None:  # a failed-task record: it stays where it is
                logger.error("a result in Redis at %s is not readable here: %s", self.where, error)
                return None
            # Intact, from another release: kept for a reader of that release, not dropped.
            aside = self._k("incompatible-results", topic)
            logger.error("a result from Redis at %s set aside in %s: %s", self.where, aside, error)
            pipe = self.redis.pipeline(transaction=True)
            pipe.rpush(aside, data)
            pipe.expire(aside, self.ttl_seconds)
            self._call("set aside", pipe.execute)
            return None
        except EnvelopeError as error:
            logger.error("rejected a result from Redis at %s: %s", self.where, error)
            return None

    # -------------------------------------------------------------------- administration
    def cancel(self, task_ids: Iterable[str]) -> tuple[int, int]:
        """Cancel tasks wherever they are: queued ones get a ``cancelled`` Result at once,
        running ones are stopped by their worker at its next heartbeat. Returns the counts
        ``(queued, running)``."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return 0, 0
        # The cancelled Results are made (and signed) here from the tasks' envelopes; the
        # script uses those of the tasks it finds queued.
        envelopes = self._call("read tasks", self.redis.hmget, self._k("task"), ids)
        args: list[Any] = [self.ttl_seconds, time.time()]
        unreadable: list[str] = []
        for task_id, data in zip(ids, envelopes, strict=True):
            topic, queue, sealed = "default", "default", b""
            if data is not None:
                try:
                    task = self._open(data, load_values=False)
                except EnvelopeError as error:
                    unreadable.append(f"{task_id} ({error})")
                    continue
                task.finish_failed("cancelled", "Cancelled", "cancelled while queued")
                topic, queue, sealed = task.topic, task.queue, self._seal(task)
            args += [task_id, topic, queue, sealed]
        if unreadable:
            # Without its envelope no Result could tell the thinker: cancel nothing.
            raise EnvelopeError(
                f"nothing cancelled: cannot read task(s) {'; '.join(unreadable)}; cancel "
                f"with the {HMAC_KEY_ENV} and the steersman release of the run that sent them"
            )
        queued, running = self._run("cancel_deliver", *args)
        return len(queued), len(running)

    def purge(self, queue: str) -> int:
        """Drop every queued task of ``queue`` (all its lanes); return how many went."""
        return int(self._run("purge", *lanes_of(queue)))

    def failed(self, limit: int | None = None) -> list[Result]:
        """Final Results of failed tasks, newest first (those not yet expired)."""
        end = -1 if limit is None else limit - 1
        ids = [i.decode() for i in self.redis.zrevrange(self._k("failedidx"), 0, end)]
        if not ids:
            return []
        datas = self.redis.mget([self._k("failed", i) for i in ids])
        out = []
        for task_id, data in zip(ids, datas, strict=True):
            if data is None:
                self.redis.zrem(self._k("failedidx"), task_id)
                continue
            result = self._read_result(data)
            if result is not None:
                out.append(result)
        return out

    def requeue_failed(self, task_ids: Iterable[str] | None = None) -> int:
        """Queue failed tasks again as fresh first attempts; all of them if no ids given."""
        if task_ids is None:
            ids = [i.decode() for i in self.redis.zrange(self._k("failedidx"), 0, -1)]
        else:
            ids = list(task_ids)
        count = 0
        for task_id in ids:
            data = self.redis.get(self._k("failed", task_id))
            if data is None:
                continue
            task = self._read_result(data)
            if task is None:
                continue
            if task.inputs is None and task.inputs_ref is not None:
                try:  # not loaded with the record if its value was missing
                    task.inputs, task.inputs_ref = self._load_blob(task.inputs_ref), None
                except ValueMissingError as error:
                    logger.error("task %s cannot be run again: its inputs: %s", task_id, error)
                    continue
            if task.inputs is None:
                logger.error(
                    "task %s was sent with keep_inputs=False: it cannot be run again", task_id
                )
                continue
            task.reset_for_retry(attempt=1)
            task.worker = None
            count += self._run(
                "revive", task_id, task.lane, task.queue, self._seal(task), self.ttl_seconds
            )
        return count

    def status(self) -> dict[str, Any]:
        """Per queue: depth, in flight, done, failed; per live client: what it is doing; and
        how many tasks and results of another release were set aside."""
        depths = self.queue_depths()
        queues: dict[str, dict[str, int]] = {}

        def row(queue: str) -> dict[str, int]:
            return queues.setdefault(queue, {"depth": 0, "in_flight": 0, "done": 0, "failed": 0})

        for lane, depth in depths.items():
            row(lane.split(":")[0])["depth"] += depth
        for field, count in self.redis.hgetall(self._k("stats")).items():
            kind, _, queue = field.decode().partition(":")
            row(queue)[kind] = int(count)
        clients: dict[str, dict[str, Any]] = {}
        held_by: dict[str, int] = {}
        for member in sorted(self.redis.smembers(self._k("consumers"))):
            consumer = member.decode()
            held = self.redis.lrange(self._k("held", consumer), 0, -1)
            held_by[consumer] = len(held)
            if held:
                for lane in self.redis.hmget(self._k("laneof"), held):
                    if lane is not None:
                        row(lane.decode().split(":")[0])["in_flight"] += 1
            raw = self.redis.hgetall(self._k("info", consumer))
            info = {k.decode(): json.loads(v) for k, v in raw.items()}
            info["id"] = consumer
            info["alive"] = bool(self.redis.exists(self._k("hb", consumer)))
            info["held"] = len(held)
            clients[consumer] = info
        for consumer, count in held_by.items():
            # A pool's worker processes are shown as part of their pool's client.
            parent = consumer.partition("/")[0]
            if parent != consumer and parent in clients:
                clients[parent]["held"] += count
                del clients[consumer]
        aside_results = sum(
            self.redis.llen(key)
            for key in self.redis.scan_iter(match=self._k("incompatible-results", "*"))
        )
        set_aside = {"tasks": self.redis.llen(self._k("incompatible")), "results": aside_results}
        return {
            "namespace": self.namespace,
            "queues": queues,
            "clients": list(clients.values()),
            "set_aside": set_aside,
        }

    # ---------------------------------------------------------------------------- close
    def _end_waits_ahead(self) -> set[str]:
        """End the waits sent along with submissions and unread, keeping what they took in
        the buffers (which :meth:`close` gives back to the topics); tries once, never waits
        for Redis. Returns the topics this could not be done for: what their waits took
        stays in this client's unacknowledged lists, for a reaper to hand back."""
        unsettled: set[str] = set()
        with self._results_lock:
            readers = list(self._readers.items())
        for topic, reader in readers:
            if not reader.lock.acquire(timeout=1.0):
                unsettled.add(topic)  # another thread is reading it, its wait in place
                continue
            try:
                if reader.ahead is None:
                    continue
                buffer = self._buffers[topic]
                self._unblock(reader.ahead[1])
                replies = self._read_ahead(reader, time.monotonic() + 5.0, None)
                if replies is None:  # no answer: the connection is given up
                    conn, _ = reader.ahead
                    conn.disconnect()
                    self.redis.connection_pool.release(conn)
                    reader.ahead = None
                elif replies and self._took(topic, reader, buffer, replies):
                    continue
                # What the wait may have moved is in our unacknowledged list: fetch it by
                # number, into the buffer.
                self._fetch_by_number(topic, reader, buffer, retry=False)
            except Exception as error:
                logger.warning(
                    "could not end a wait for results of %r (%s); what it took goes back to "
                    "the topic when this client's lease runs out",
                    topic,
                    error,
                )
                unsettled.add(topic)
            finally:
                reader.lock.release()
        return unsettled

    def close(self) -> None:
        """Give back results taken but not handed out, acknowledge the rest, stop
        heart-beating and disconnect. Tasks still held go to others after the lease."""
        if self._closed:
            return
        self._closed = True
        self._heart_stop.set()
        if self._heart is not None:
            self._heart.join()
        unsettled = self._end_waits_ahead()
        try:
            with self._results_lock:
                for topic, buffer in self._buffers.items():
                    if topic in unsettled:
                        continue  # left whole for the reaper: it may hold more than buffer
                    self._evalsha(
                        "release_results", [self.consumer, topic, self.ttl_seconds, *buffer]
                    )
                    buffer.clear()
            held = self.redis.llen(self._k("held", self.consumer))
            pipe = self.redis.pipeline()
            pipe.delete(self._k("info", self.consumer))
            if not held and not unsettled:
                pipe.delete(self._k("hb", self.consumer), self._k("utopics", self.consumer))
                pipe.srem(self._k("consumers"), self.consumer)
            pipe.execute()
        except redis.RedisError as error:
            logger.warning("could not tidy up in Redis at %s while closing: %s", self.where, error)
        self.redis.close()
