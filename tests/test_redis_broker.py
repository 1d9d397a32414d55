"""What only the Redis broker has to prove: signing, isolation, leases, results once."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

import msgspec
import pytest
import redis

import methods
from conftest import free_port, wait_until
from steersman import (
    BrokerRefused,
    ConfigurationError,
    Queues,
    ResultTimeout,
    SerializationError,
    SteersmanError,
    WorkerPool,
)
from steersman.brokers.redis import RedisBroker


def broker(server, namespace=None, **options):
    options.setdefault("hmac_key", b"test-signing-key")
    return RedisBroker(server.url, namespace=namespace or f"t{uuid.uuid4().hex[:10]}", **options)


def take_and_go_silent(server, namespace, lease_seconds):
    """A consumer takes the next task, then stops answering, as a killed host would."""
    doomed = broker(server, namespace, lease_seconds=lease_seconds)
    assert doomed.get_task(["default"], timeout=5) is not None
    doomed.close()  # no more heartbeats; its held task stays held until the lease runs out


def test_forged_and_garbled_tasks_are_rejected_and_the_worker_keeps_serving(redis_server, caplog):
    good = broker(redis_server)
    queues = Queues(methods=["add"], broker=good)
    forger = broker(redis_server, namespace=good.namespace, hmac_key=b"someone-else")
    Queues(methods=["add"], broker=forger).send_inputs(1, 1, method="add")
    # A garbled one: bytes pushed straight into the lane, as anyone reaching Redis could.
    raw = redis.Redis.from_url(redis_server.url)
    raw.hset(f"{good.namespace}:task", "junk", b"\x00garbage")
    raw.hset(f"{good.namespace}:laneof", "junk", "default")
    raw.rpush(f"{good.namespace}:lane:default", "junk")
    with caplog.at_level(logging.ERROR), WorkerPool(queues, [methods.add], mode="thread"):
        queues.send_inputs(2, 3, method="add")
        assert queues.get_result(timeout=30).value == 5
        with pytest.raises(ResultTimeout):
            queues.get_result(timeout=0.5)
    rejected = [r.message for r in caplog.records if "rejected task" in r.message]
    assert len(rejected) == 2
    assert any("signature does not match" in m for m in rejected)
    assert any("garbled" in m or "signature" in m for m in rejected)
    for b in (good, forger):
        b.close()


def test_a_task_of_another_wire_format_is_set_aside_not_dropped(redis_server, caplog):
    import hmac

    import msgspec

    good = broker(redis_server)
    queues = Queues(methods=["add"], broker=good)
    # A task as the release before array envelopes wrote it: a signed msgpack map, version 1.
    old = msgspec.msgpack.encode({"v": 1, "task_id": "old", "method": "add"})
    signed = hmac.digest(b"test-signing-key", old, "sha256") + old
    raw = redis.Redis.from_url(redis_server.url)
    raw.hset(f"{good.namespace}:task", "old", signed)
    raw.hset(f"{good.namespace}:laneof", "old", "default")
    raw.rpush(f"{good.namespace}:lane:default", "old")
    with caplog.at_level(logging.ERROR), WorkerPool(queues, [methods.add], mode="thread"):
        queues.send_inputs(2, 3, method="add")
        assert queues.get_result(timeout=30).value == 5
    aside = [r.message for r in caplog.records if "set aside" in r.message]
    assert len(aside) == 1 and "envelope version 1" in aside[0], aside
    # Kept for a worker of its release: the envelope is still there, its id listed aside.
    assert raw.lrange(f"{good.namespace}:incompatible", 0, -1) == [b"old"]
    assert raw.hget(f"{good.namespace}:task", "old") == signed
    # A result of that release waiting for this reader: set aside too, the next one read.
    raw.rpush(f"{good.namespace}:result:default", signed)
    with WorkerPool(queues, [methods.add], mode="thread"):
        queues.send_inputs(4, 5, method="add")
        assert queues.get_result(timeout=30).value == 9
    assert raw.lrange(f"{good.namespace}:incompatible-results:default", 0, -1) == [signed]
    assert good.status()["set_aside"] == {"tasks": 1, "results": 1}
    good.close()


def test_two_namespaces_on_one_redis_never_see_each_others_tasks(redis_server):
    first, second = broker(redis_server), broker(redis_server)
    queues_a = Queues(methods=["echo"], broker=first)
    queues_b = Queues(methods=["echo"], broker=second)
    for i in range(20):
        queues_a.send_inputs(("a", i), method="echo")
        queues_b.send_inputs(("b", i), method="echo")
    with WorkerPool(queues_a, [methods.echo], mode="thread", workers=2):
        seen = [queues_a.get_result(timeout=30).value[0] for _ in range(20)]
        with pytest.raises(ResultTimeout):
            queues_a.get_result(timeout=0.3)
    assert seen == ["a"] * 20
    assert second.queue_depths() == {"default": 20}
    for b in (first, second):
        b.close()


def test_task_of_a_consumer_whose_lease_runs_out_goes_to_another(redis_server):
    namespace = f"t{uuid.uuid4().hex[:10]}"
    client = broker(redis_server, namespace)
    queues = Queues(methods=["add"], broker=client)
    queues.send_inputs(20, 22, method="add")
    take_and_go_silent(redis_server, namespace, lease_seconds=0.3)
    rescuer = broker(redis_server, namespace, lease_seconds=0.3)
    start = time.monotonic()
    with WorkerPool(Queues(methods=["add"], broker=rescuer), [methods.add], mode="thread"):
        result = queues.get_result(timeout=30)
    assert result.value == 42
    assert result.attempt == 2
    assert time.monotonic() - start < 10
    for b in (client, rescuer):
        b.close()


def test_a_task_that_ran_twice_yields_one_result(redis_server):
    namespace = f"t{uuid.uuid4().hex[:10]}"
    client = broker(redis_server, namespace)
    queues = Queues(methods=["add"], broker=client)
    queues.send_inputs(1, 2, method="add")
    slow = broker(redis_server, namespace)
    task = slow.get_task(["default"], timeout=5)
    fast = broker(redis_server, namespace)
    # The slow consumer goes silent past its lease and is reaped; another runs the task and
    # reports first.
    slow._heart_stop.set()
    slow._heart.join()
    redis.Redis.from_url(redis_server.url).delete(f"{namespace}:hb:{slow.consumer}")
    assert fast.reap(force=True) == 1
    again = fast.get_task(["default"], timeout=5)
    again.set_value(3)
    again.complete = True
    fast.put_result(again)
    task.set_value(3)
    task.complete = True
    slow.put_result(task)  # the slow worker came back
    assert queues.get_result(timeout=10).value == 3
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.5)
    for b in (client, slow, fast):
        b.close()


def test_unsigned_messages_to_a_remote_redis_are_refused():
    with pytest.raises(ConfigurationError, match="refusing unsigned messages"):
        RedisBroker("redis://10.1.2.3:6379/0", hmac_key=None)
    RedisBroker("redis://10.1.2.3:6379/0", hmac_key=None, insecure=True).redis.close()


def test_max_retries_counts_lost_leases(redis_server):
    namespace = f"t{uuid.uuid4().hex[:10]}"
    client = broker(redis_server, namespace)
    queues = Queues(methods=["add"], broker=client)
    queues.send_inputs(1, 1, method="add", max_retries=0)
    take_and_go_silent(redis_server, namespace, lease_seconds=0.2)
    rescuer = broker(redis_server, namespace, lease_seconds=0.2)
    with WorkerPool(Queues(methods=["add"], broker=rescuer), [methods.add], mode="thread"):
        result = queues.get_result(timeout=30)
    assert result.success is False
    assert result.failure.kind == "worker_lost"
    assert "max_retries=0" in result.failure.message
    for b in (client, rescuer):
        b.close()


def _with_results(server, n):
    """A client with ``n`` results of its tasks waiting, and the worker that made them."""
    client = broker(server)
    queues = Queues(methods=["add"], broker=client)
    worker = broker(server, namespace=client.namespace)
    for i in range(n):
        queues.send_inputs(i, 1, method="add")
    for task in worker.get_tasks(["default"], n, timeout=5):
        task.set_value(sum(task.args))
        worker.put_result(task)
    return client, worker


def test_a_result_fetch_asked_again_under_its_number_returns_the_same_results(redis_server):
    # A fetch whose reply was lost (Redis restarted or the connection dropped after the move)
    # is asked again with the same number: it must return what it took, not acknowledge it.
    client, worker = _with_results(redis_server, 3)
    args = (client.consumer, "default", 64, 60)
    first = client._run("take_results", *args, 7, 0)[1:]  # after the reaped-or-not flag
    again = client._run("take_results", *args, 7, 0)[1:]
    assert len(first) == 3 and again == first
    # The next number acknowledges them: nothing comes back.
    assert client._run("take_results", *args, 8, 3)[1:] == []
    assert client._run("take_results", *args, 8, 3)[1:] == []
    worker.close()
    client.close()


def test_a_result_a_lost_wait_moved_comes_with_the_next_fetch(redis_server):
    # A blocking wait moves a result into the reader's unacknowledged list, then the
    # connection drops before its acknowledgement step ran: the next fetch must acknowledge
    # only what the previous fetch handed out and return the moved result, not drop it.
    client, worker = _with_results(redis_server, 4)
    args = (client.consumer, "default", 3, 60)
    assert len(client._run("take_results", *args, 1, 0)[1:]) == 3
    unacked = f"{client.namespace}:unacked:{client.consumer}:default"
    moved = client.redis.lmove(f"{client.namespace}:result:default", unacked, "LEFT", "RIGHT")
    assert client._run("take_results", *args, 2, 3)[1:] == [moved]
    assert client.redis.lrange(unacked, 0, -1) == [moved]
    assert client._run("take_results", *args, 3, 1)[1:] == []
    assert client.redis.llen(unacked) == 0
    worker.close()
    client.close()


def test_tasks_a_take_moved_but_never_reported_are_taken_back(redis_server):
    # The move into the held list happened, its reply was lost: while the worker lives no
    # lease ends, so the worker itself must notice and take the tasks on its next fetch.
    client = broker(redis_server)
    queues = Queues(methods=["add"], broker=client)
    worker = broker(redis_server, namespace=client.namespace)
    worker.keep_alive("worker")
    sent = queues.send_inputs(2, 2, method="add")
    raw = redis.Redis.from_url(redis_server.url)
    ns = client.namespace
    raw.lmove(f"{ns}:lane:default", f"{ns}:held:{worker.consumer}", "LEFT", "RIGHT")
    worker._take_unsure = True  # what a connection error during a take sets
    taken = worker.get_tasks(["default"], 1, timeout=5)
    assert [t.task_id for t in taken] == [sent]
    worker.close()
    client.close()


def test_a_worker_that_saw_its_lane_empty_still_takes_every_task_once_in_batches(
    redis_server,
):
    # After a take that emptied its lane, a worker waits on the lane directly (one task per
    # wake); once the lane is seen non-empty again it takes the rest in batches.
    client = broker(redis_server)
    queues = Queues(methods=["add"], broker=client)
    worker = broker(redis_server, namespace=client.namespace)
    assert worker.get_tasks(["default"], 5, timeout=0.2) == []
    assert worker._seen_empty is not None
    sent = set(queues.send_batch([(i, 1) for i in range(12)], method="add"))
    batches: list[int] = []
    while sum(batches) < 12:
        taken = worker.get_tasks(["default"], 5, timeout=5)
        assert taken, "tasks left in the lane were not taken"
        batches.append(len(taken))
        for task in taken:
            sent.discard(task.task_id)
            task.set_value(sum(task.args))
        worker.put_results(taken)
    assert not sent
    assert batches[0] == 1 and max(batches) == 5  # one on the wake, then batches
    assert sorted(queues.get_result(timeout=5).value for _ in range(12)) == list(range(1, 13))
    worker.close()
    client.close()


def test_a_stop_flag_wakes_a_blocked_wait_at_once(redis_server):
    import threading

    from steersman.flag import Flag

    client = broker(redis_server)
    client.keep_alive("client")
    raw = redis.Redis.from_url(redis_server.url)

    def blocked() -> int:
        return raw.info("clients")["blocked_clients"]

    for wait in (
        lambda stop: client.get_result("default", stop=stop),
        lambda stop: client.get_tasks(["default"], 1, stop=stop),
        lambda stop: client.get_tasks(["default", "other"], 1, stop=stop),
    ):
        stop = Flag()
        returned: list = []
        thread = threading.Thread(target=lambda w=wait, s=stop, r=returned: r.append(w(s)))
        before = blocked()
        thread.start()
        wait_until(lambda b=before: blocked() > b, what="the wait to block in Redis")
        started = time.monotonic()
        stop.set()
        thread.join(10)
        # Each blocking call is bounded at 2 s as a safety net; the flag must beat it.
        assert time.monotonic() - started < 1.5
        assert returned in ([None], [[]])
    client.close()


def test_a_submission_spanning_chunks_with_a_repeated_id_queues_each_task_once(redis_server):
    from steersman.task import Result, dumps, new_task_id

    b = broker(redis_server)
    tasks = [
        Result(task_id=new_task_id(), method="add", inputs=dumps(((i, 1), {})))
        for i in range(4500)  # three script calls of at most 2,000
    ]
    repeated = tasks[1234]
    answers = b.put_tasks([*tasks[:2500], repeated, *tasks[2500:]])
    assert len(answers) == 4501 and all(accepted for _, accepted in answers)
    raw = redis.Redis.from_url(redis_server.url)
    queued = [i.decode() for i in raw.lrange(f"{b.namespace}:lane:default", 0, -1)]
    assert queued == [t.task_id for t in tasks]  # each once, in order
    assert raw.hlen(f"{b.namespace}:task") == 4500
    # Taken and finished in one go: every final result delivered, the books emptied.
    taken = b.get_tasks(["default"], 4500, timeout=10)
    assert len(taken) == 4500
    for task in taken:
        task.complete, task.success = True, True
    b.put_results(taken)
    assert (
        raw.hlen(f"{b.namespace}:task") == 0 and raw.llen(f"{b.namespace}:held:{b.consumer}") == 0
    )
    assert raw.llen(f"{b.namespace}:result:default") == 4500
    assert raw.hget(f"{b.namespace}:stats", "done:default") == b"4500"
    b.close()


def test_a_requeue_asked_twice_queues_the_task_once(redis_server):
    # A requeue whose reply was lost is sent again: the second must change nothing, or two
    # workers would run the task; nor may a finished task come back.
    client = broker(redis_server)
    queues = Queues(methods=["add"], broker=client)
    worker = broker(redis_server, namespace=client.namespace)
    sent = queues.send_inputs(1, 1, method="add")
    task = worker.get_task(["default"], timeout=5)
    worker.requeue(task)
    worker.requeue(task)
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.lrange(f"{client.namespace}:lane:default", 0, -1) == [sent.encode()]
    again = worker.get_task(["default"], timeout=5)
    again.set_value(2)
    again.complete = True
    worker.put_result(again)
    worker.requeue(again)  # finished: stays finished
    assert raw.llen(f"{client.namespace}:lane:default") == 0
    assert queues.get_result(timeout=5).value == 2
    worker.close()
    client.close()


def test_the_key_of_a_cancelled_task_can_be_used_again(redis_server):
    # A keyed task cancelled (or purged) before it ran never yields a result; sending it
    # again under its key must queue it, not point at the cancelled one.
    client = broker(redis_server)
    queues = Queues(methods=["add"], broker=client)
    first = queues.send_inputs(1, 2, method="add", key="k1")
    assert client.cancel_queued({first})
    second = queues.send_inputs(1, 2, method="add", key="k1")
    assert second != first
    assert queues.send_inputs(1, 2, method="add", key="k1") == second  # queued: kept
    worker = broker(redis_server, namespace=client.namespace)
    task = worker.get_task(["default"], timeout=5)
    assert task.task_id == second
    task.set_value(3)
    task.complete = True
    worker.put_result(task)
    assert queues.get_result(timeout=5).value == 3
    assert queues.send_inputs(1, 2, method="add", key="k1") == second  # done: kept
    worker.close()
    client.close()


def deliver_values(worker, values):
    """Take one task per value and deliver that value as its result."""
    for value in values:
        task = worker.get_task(["default"], timeout=5)
        task.set_value(value)
        task.complete = True
        worker.put_result(task)


def test_a_live_client_whose_lease_ran_out_gets_each_result_once(redis_server, caplog):
    # A thinker cut off from Redis for longer than its lease is reaped while it lives: what
    # it had taken goes back to the topic. It must still see each result once: the ones it
    # had handed out are not handed out again, the ones it had not are read again.
    thinker = broker(redis_server)
    queues = Queues(methods=["add"], broker=thinker)
    for i in range(5):
        queues.send_inputs(i, 0, method="add")
    worker = broker(redis_server, namespace=thinker.namespace)
    deliver_values(worker, range(5))
    first = queues.get_result(timeout=5)  # takes all 5, hands out 1
    thinker._heart_stop.set()  # the cut: no heartbeats
    thinker._heart.join()
    raw = redis.Redis.from_url(redis_server.url)
    raw.delete(f"{thinker.namespace}:hb:{thinker.consumer}")
    assert worker.reap(force=True) == 5
    queues.send_inputs(5, 0, method="add")
    deliver_values(worker, [5])  # another result arrives meanwhile
    # The link is back; the thinker reads on before any heartbeat of its own.
    with caplog.at_level(logging.WARNING):
        rest = [queues.get_result(timeout=5).value for _ in range(5)]
    assert sorted([first.value, *rest]) == [0, 1, 2, 3, 4, 5]
    assert "went back to the topic" in caplog.text
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.5)
    worker.close()
    thinker.close()


def test_nobody_is_reaped_for_a_lease_after_every_lease_lapsed(redis_server):
    # After Redis was down (or restarted) for longer than a lease, every heartbeat key has
    # lapsed, live clients' too: nobody may take anybody's tasks until the live ones could
    # beat again. Then reaping resumes, and takes only the dead one's tasks.
    lease = 1.0
    client = broker(redis_server, lease_seconds=lease)
    queues = Queues(methods=["add"], broker=client)
    queues.send_inputs(1, 1, method="add")
    worker = broker(redis_server, client.namespace, lease_seconds=lease)
    assert worker.get_task(["default"], timeout=5) is not None
    worker._heart_stop.set()  # the worker does not come back
    worker._heart.join()
    client.keep_alive("client")  # the client lives on, beating every third of a lease
    raw = redis.Redis.from_url(redis_server.url)
    ns = client.namespace
    raw.delete(f"{ns}:alive", f"{ns}:hb:{worker.consumer}", f"{ns}:hb:{client.consumer}")
    client._beat()  # the first beat after the outage
    assert raw.exists(f"{ns}:noreap")
    assert client.reap() == 0  # the worker has had no chance to beat yet
    assert raw.llen(f"{ns}:held:{worker.consumer}") == 1
    # The client's own heartbeat reaps once the window ends: the dead worker's task goes on.
    wait_until(lambda: raw.llen(f"{ns}:lane:default") == 1, 10, "the task to be handed on")
    assert raw.llen(f"{ns}:held:{worker.consumer}") == 0
    for b in (worker, client):
        b.close()


def test_the_heartbeat_outlives_errors_other_than_a_lost_connection(redis_server, caplog):
    # A cancel handler that raises (or Redis answering an error, e.g. out of memory) must not
    # stop the heartbeat, or the client's tasks would go to others while it runs them.
    client = broker(redis_server, lease_seconds=0.3)
    queues = Queues(methods=["add"], broker=client)
    task_id = queues.send_inputs(1, 1, method="add")
    worker = broker(redis_server, client.namespace, lease_seconds=0.3)
    assert worker.get_task(["default"], timeout=5) is not None
    calls = []

    def handler(ids):
        calls.append(ids)
        raise RuntimeError("a handler that fails")

    worker.cancel_handlers.append(handler)
    client.cancel([task_id])
    with caplog.at_level(logging.WARNING):
        wait_until(lambda: len(calls) >= 3, 10, "three heartbeats after the failure")
    assert worker._heart.is_alive()
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.exists(f"{client.namespace}:hb:{worker.consumer}")
    assert "a handler that fails" in caplog.text
    worker.cancel_handlers.clear()
    for b in (worker, client):
        b.close()


def test_a_result_whose_value_cannot_be_loaded_yet_is_kept_for_the_next_call(own_redis):
    # The value travels by reference; Redis goes away between fetching the result and loading
    # its value. The call fails, and the result must still come on the next call.
    thinker = broker(own_redis, connect_timeout=1, inline_limit=64)
    queues = Queues(methods=["add"], broker=thinker)
    for i in range(2):
        queues.send_inputs(i, 0, method="add")
    worker = broker(own_redis, thinker.namespace, inline_limit=64)
    deliver_values(worker, [b"a" * 1000, b"b" * 1000])
    worker.close()
    first = queues.get_result(timeout=5)  # fetches both; the second waits in the buffer
    own_redis.kill()
    with pytest.raises(SteersmanError, match="unreachable"):
        queues.get_result(timeout=5)
    own_redis.start()
    second = queues.get_result(timeout=10)
    assert sorted([first.value, second.value]) == [b"a" * 1000, b"b" * 1000]
    thinker.close()


def test_cancelling_twice_delivers_one_cancelled_result_that_tells_what_it_was(redis_server):
    # Removing a queued task and delivering its cancelled Result are one script; asking
    # again (as a call retried after a lost reply does) adds nothing.
    client = broker(redis_server)
    queues = Queues(methods=["add"], broker=client)
    task_id = queues.send_inputs(1, 2, method="add")
    admin = broker(redis_server, client.namespace)
    assert admin.cancel([task_id]) == (1, 0)
    assert admin.cancel([task_id]) == (0, 0)
    result = queues.get_result(timeout=5)
    assert result.task_id == task_id and result.failure.kind == "cancelled"
    assert result.args == (1, 2)  # the Result still tells what was cancelled
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.5)
    assert [r.task_id for r in admin.failed()] == [task_id]
    for b in (admin, client):
        b.close()


def test_a_batch_that_fails_midway_keeps_counting_what_was_queued(redis_server):
    # The second chunk holds an input over the size limit: the first chunk is already
    # queued, so its results are expected (counted), and the error says so.
    client = broker(redis_server, max_payload_bytes=4096, inline_limit=1024)
    queues = Queues(methods=["echo"], broker=client)
    inputs = [(i,) for i in range(2000)] + [(b"x" * 8192,)]
    with pytest.raises(SerializationError) as caught:
        queues.send_batch(inputs, method="echo")
    assert "2000 of the 2001 tasks were queued" in str(caught.value.__notes__)
    assert queues.active_count() == 2000
    worker = broker(redis_server, client.namespace)
    with WorkerPool(Queues(methods=["echo"], broker=worker), [methods.echo], mode="thread"):
        values = sorted(queues.get_result(timeout=30).value for _ in range(2000))
    assert values == list(range(2000))
    assert queues.active_count() == 0
    for b in (worker, client):
        b.close()


def test_one_key_twice_in_one_batch_queues_one_task(redis_server):
    client = broker(redis_server)
    queues = Queues(methods=["add"], broker=client)
    ids = queues.send_batch([(1, 1), (2, 2)], method="add", keys=["same", "same"])
    assert ids[0] == ids[1]
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.llen(f"{client.namespace}:lane:default") == 1
    assert queues.active_count() == 1
    client.close()


def test_a_fetch_that_may_not_wait_still_looks_at_a_lane_seen_empty(redis_server):
    client = broker(redis_server)
    queues = Queues(methods=["add"], broker=client)
    worker = broker(redis_server, client.namespace)
    assert worker.get_tasks(["default"], 5, timeout=0) == []
    queues.send_batch([(i, i) for i in range(3)], method="add")
    assert len(worker.get_tasks(["default"], 5, timeout=0)) == 3
    for b in (worker, client):
        b.close()


def test_worker_processes_take_their_own_tasks_under_leases_their_pool_renews(
    redis_server, tmp_path
):
    # Each worker process of a pool on Redis is a client of its own: it takes tasks into its
    # own held list and delivers their results, and its lease rides on the pool's client.
    client = broker(redis_server, lease_seconds=1.0)
    ns = client.namespace
    queues = Queues(methods=["add", "wait_for_file"], broker=client)
    raw = redis.Redis.from_url(redis_server.url)
    with WorkerPool(queues, [methods.add, methods.wait_for_file], workers=2) as pool:
        pool.wait_for_workers(30)
        for i in range(5):
            queues.send_inputs(i, 1, method="add")
            assert queues.get_result(timeout=30).value == i + 1
        gate = tmp_path / "gate"
        queues.send_inputs(str(gate), method="wait_for_file")
        wait_until((tmp_path / "gate.started").exists, 30, "the task to start")
        own = [c.decode() for c in raw.smembers(f"{ns}:consumers")]
        workers = [c for c in own if c.startswith(client.consumer + "/")]
        assert len(workers) == 2
        holding = [c for c in workers if raw.llen(f"{ns}:held:{c}") == 1]
        assert len(holding) == 1
        assert raw.llen(f"{ns}:held:{client.consumer}") == 0
        # The worker's lease (1 s) is renewed by the pool's client: seen renewed four times.
        hb, last, renewals = f"{ns}:hb:{holding[0]}", [raw.pttl(f"{ns}:hb:{holding[0]}")], []

        def renewed() -> bool:
            left = raw.pttl(hb)
            assert left > 0, "the worker's lease ran out"
            if left > last[-1]:
                renewals.append(left)
            last.append(left)
            return len(renewals) >= 4  # over a whole lease

        wait_until(renewed, 10, "four renewals of the worker's lease")
        # status shows the pool's client holding the task, not each process apart.
        [shown] = client.status()["clients"]
        assert shown["id"] == client.consumer and shown["held"] == 1
        gate.touch()
        assert queues.get_result(timeout=30).success
    # Stopped: the worker processes left Redis, holding nothing.
    assert not [c for c in raw.smembers(f"{ns}:consumers") if b"/" in c]
    assert not raw.keys(f"{ns}:held:*/*")
    client.close()


def test_waits_carry_on_when_redis_has_forgotten_the_scripts(redis_server):
    # After a restart Redis has no scripts: the ones sent right after a blocking move
    # (reading the task, acknowledging the reader's fetch) fail with NOSCRIPT. The moved
    # task and result must still arrive, once.
    import threading

    client = broker(redis_server)
    queues = Queues(methods=["add"], broker=client)
    worker = broker(redis_server, client.namespace)
    raw = redis.Redis.from_url(redis_server.url)
    queues.send_inputs(1, 1, method="add")
    task = worker.get_task(["default"], timeout=5)
    task.set_value(2)
    worker.put_result(task)
    assert queues.get_result(timeout=5).value == 2  # the reader now waits when it comes back
    raw.script_flush()
    taken = []
    waiting = threading.Thread(target=lambda: taken.append(worker.get_task(["default"], 10)))
    waiting.start()
    wait_until(
        lambda: any(c.get("cmd") == "blmove" for c in raw.client_list()), 10, "a blocked take"
    )
    queues.send_inputs(2, 2, method="add")
    waiting.join(15)
    assert taken and taken[0].args == (2, 2)
    taken[0].set_value(4)
    worker.put_result(taken[0])
    raw.script_flush()
    assert queues.get_result(timeout=10).value == 4
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.5)
    for b in (worker, client):
        b.close()


def test_a_submission_sent_again_after_its_tasks_ran_queues_nothing(redis_server):
    # The reply to a submission was lost and the same tasks are sent again (by the broker's
    # retry or by the caller) after they ran and finished: none is queued and run again.
    from steersman.task import Result, dumps, new_task_id

    b = broker(redis_server)
    raw = redis.Redis.from_url(redis_server.url)
    for n in (1, 150):  # a few tasks are checked one by one; many carry a token
        tasks = [
            Result(task_id=new_task_id(), method="add", inputs=dumps(((1, 1), {})))
            for _ in range(n)
        ]
        first = b.put_tasks(tasks)
        assert all(accepted for _, accepted in first)
        taken = b.get_tasks(["default"], n, timeout=5)
        for task in taken:
            task.set_value(2)
            task.complete = True
        b.put_results(taken)
        assert b.put_tasks(tasks) == first  # the caller sends the same tasks again
        assert raw.llen(f"{b.namespace}:lane:default") == 0
        assert raw.hlen(f"{b.namespace}:task") == 0
    b.close()


def _blocked_reader(raw):
    return any(c.get("cmd") == "blmove" and "b" in c.get("flags", "") for c in raw.client_list())


def _final_result(value):
    from steersman.task import Result, dumps, new_task_id

    result = Result(task_id=new_task_id(), method="echo", inputs=dumps(((), {})))
    result.set_value(value)
    result.complete = True
    return result


def test_a_result_moved_while_redis_refuses_writes_is_not_lost(own_redis):
    # Out of memory: the reader's move is served, its acknowledgement step is refused. The
    # caller sees the error; the moved result comes with the next call, once, in order.
    import threading

    reader, producer = broker(own_redis), None
    producer = broker(own_redis, reader.namespace)
    raw = redis.Redis.from_url(own_redis.url)
    producer.put_results([_final_result("R0")])
    assert reader.get_result("default", timeout=5).value == "R0"
    assert reader.get_result("default", timeout=0.3) is None  # its scripts are loaded
    errors, got = [], []

    def read():
        try:
            got.append(reader.get_result("default", timeout=10).value)
        except redis.ResponseError as error:
            errors.append(error)

    waiting = threading.Thread(target=read)
    waiting.start()
    wait_until(lambda: _blocked_reader(raw), 10, "a waiting reader")
    raw.config_set("maxmemory", raw.info("memory")["used_memory"] + 2_200_000)
    producer.put_results([_final_result("B" * 900_000)])
    waiting.join(15)
    raw.config_set("maxmemory", 0)
    assert errors and "maxmemory" in str(errors[0]), got
    producer.put_results([_final_result("R1")])
    got += [reader.get_result("default", timeout=5).value for _ in range(2)]
    assert got == ["B" * 900_000, "R1"]
    assert reader.get_result("default", timeout=0.5) is None
    for b in (reader, producer):
        b.close()


def test_a_reap_between_a_move_and_its_acknowledgement_hands_out_the_result_once(
    redis_server,
):
    # A reader cut off past its lease is reaped right after its wait moved a result: the
    # result went back to the topic, so the reader must not hand it out now as well.
    import threading

    reader = broker(redis_server)
    producer = broker(redis_server, reader.namespace)
    producer.reap(force=True)  # loads the reap script
    raw = redis.Redis.from_url(redis_server.url)
    producer.put_results([_final_result("R0")])
    got = [reader.get_result("default", timeout=5).value]
    assert reader.get_result("default", timeout=0.3) is None  # its scripts are loaded
    waiting = threading.Thread(
        target=lambda: got.append(reader.get_result("default", timeout=10).value)
    )
    waiting.start()
    wait_until(lambda: _blocked_reader(raw), 10, "a waiting reader")
    ns = reader.namespace
    pipe = raw.pipeline(transaction=False)  # one turn of Redis's loop: move, then the reap
    pipe.rpush(f"{ns}:result:default", producer._seal(_final_result("X")))
    pipe.delete(f"{ns}:hb:{reader.consumer}")
    pipe.evalsha(producer._scripts["reap"].sha, 0, ns, 1, "1", 3600)
    pipe.execute()
    waiting.join(15)
    while (result := reader.get_result("default", timeout=1)) is not None:
        got.append(result.value)
    assert sorted(got) == ["R0", "X"]
    for b in (reader, producer):
        b.close()


def test_a_task_finished_while_redis_stalls_is_not_killed_for_its_timeout(own_redis):
    # The worker process finished in time but its own delivery waits on a stalled Redis:
    # the pool must not kill it for the task's timeout and report a success as a timeout.
    client = broker(own_redis)
    queues = Queues(methods=["sleep_then"], broker=client)
    raw = redis.Redis.from_url(own_redis.url)
    with WorkerPool(queues, [methods.sleep_then], workers=1):
        queues.send_inputs(0, "warm", method="sleep_then")
        assert queues.get_result(timeout=30).value == "warm"
        queues.send_inputs(1.0, "done", method="sleep_then", timeout=3)
        time.sleep(0.5)  # the task is running; then Redis stalls for 6 s
        raw.execute_command("CLIENT", "PAUSE", 6000, "ALL")
        result = queues.get_result(timeout=30)
        assert result.success and result.value == "done", result.failure
        with pytest.raises(ResultTimeout):
            queues.get_result(timeout=1)
    client.close()


def test_partial_results_arrive_before_their_final_result(redis_server):
    # Partial results go through the pool; the final one may not overtake them by being
    # delivered by the worker process itself.
    client = broker(redis_server)
    queues = Queues(methods=["count_up"], broker=client)
    with WorkerPool(queues, [methods.count_up], workers=1):
        for _ in range(10):
            queues.send_inputs(3, method="count_up")
        finals = set()
        for _ in range(40):
            result = queues.get_result(timeout=30)
            assert result.task_id not in finals, "a partial result after its final one"
            if result.complete:
                finals.add(result.task_id)
    assert len(finals) == 10
    client.close()


def test_a_partial_result_delivered_again_after_a_lost_reply_arrives_once(redis_server):
    # A generator's yields: a delivery repeated (its reply was lost) pushes nothing new, a
    # late partial of an older attempt or after the final result is dropped, and a new
    # attempt's partial results go out again.
    from steersman.workers.execute import execute

    client = broker(redis_server)
    queues = Queues(methods=["count_up"], broker=client)
    queues.send_inputs(2, method="count_up")
    worker = broker(redis_server, client.namespace)
    task = worker.get_task(["default"], timeout=5)
    retry = msgspec.structs.replace(task, attempt=2)  # as a later attempt will have it
    first = list(execute(task, methods.count_up, "w", own_process=False))
    assert [r.part for r in first] == [1, 2, 0]
    worker.put_results(first[:1])
    worker.put_results(first[:1])  # as a retry after a lost reply does
    worker.put_results(first[:2])
    got = [queues.get_result(timeout=5) for _ in range(2)]
    assert [(r.value, r.part) for r in got] == [(0, 1), (1, 2)]
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.3)

    # A second attempt (the first worker was thought dead) yields again: delivered; the
    # first attempt's late partial is not, nor any partial after the final result.
    second = list(execute(retry, methods.count_up, "w", own_process=False))
    worker.put_results(second[:1])
    worker.put_results(first[1:2])
    worker.put_results(second[1:])
    worker.put_results(second[:1])
    got = [queues.get_result(timeout=5) for _ in range(3)]
    assert [(r.attempt, r.part, r.complete) for r in got] == [
        (2, 1, False),
        (2, 2, False),
        (2, 0, True),
    ]
    assert got[-1].value == "finished"
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.3)
    raw = redis.Redis.from_url(redis_server.url)
    assert not raw.hexists(f"{client.namespace}:parts", task.task_id)
    for b in (worker, client):
        b.close()


def test_a_generator_handed_back_mid_stream_does_not_stream_its_parts_twice(redis_server):
    # A worker stopping past its grace, or whose process died as the final result went out,
    # hands the running task back untouched (same attempt): its next run yields the same
    # parts again, and only those not delivered yet go out.
    from steersman.workers.execute import execute

    client = broker(redis_server)
    queues = Queues(methods=["count_up"], broker=client)
    task_id = queues.send_inputs(3, method="count_up")
    worker = broker(redis_server, client.namespace)
    task = worker.get_task(["default"], timeout=5)
    first = list(execute(task, methods.count_up, "w", own_process=False))
    worker.put_results(first[:2])  # parts 1 and 2 out, then the worker stops
    worker.requeue(task, front=True)
    again = worker.get_task(["default"], timeout=5)
    assert (again.task_id, again.attempt) == (task_id, 1)
    worker.put_results(list(execute(again, methods.count_up, "w", own_process=False)))
    got = [queues.get_result(timeout=5) for _ in range(4)]
    assert [(r.value if not r.complete else "final", r.part) for r in got] == [
        (0, 1),
        (1, 2),
        (2, 3),
        ("final", 0),
    ]
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.3)
    for b in (worker, client):
        b.close()


def test_text_that_is_not_utf8_is_rejected_as_garbled_and_the_rest_is_served(redis_server, caplog):
    # Without a key (loopback), a task or result whose bytes hold a string that is not
    # UTF-8 is refused like any garbled message; what comes after it still arrives.
    from steersman.task import encode

    client = broker(redis_server, hmac_key=None)
    queues = Queues(methods=["add"], broker=client)
    ns = client.namespace
    good = client._open(client._seal(_final_result("fine")), load_values=False)
    bad = encode(good).replace(b"echo", b"ec\xffo")
    raw = redis.Redis.from_url(redis_server.url)
    raw.hset(f"{ns}:task", "junk", bad)
    raw.hset(f"{ns}:laneof", "junk", "default")
    raw.rpush(f"{ns}:lane:default", "junk")
    raw.rpush(f"{ns}:result:default", bad)
    with caplog.at_level(logging.ERROR), WorkerPool(queues, [methods.add], workers=1):
        queues.send_inputs(2, 3, method="add")
        assert queues.get_result(timeout=30).value == 5
    assert not raw.hexists(f"{ns}:task", "junk")
    assert any("rejected task junk" in r.message for r in caplog.records)
    assert any("rejected a result" in r.message for r in caplog.records)
    client.close()


def test_a_value_altered_in_the_store_fails_its_task_with_a_reason(redis_server):
    client = broker(redis_server, inline_limit=1024)
    queues = Queues(methods=["echo"], broker=client)
    task_id = queues.send_inputs(b"z" * 4096, method="echo")
    raw = redis.Redis.from_url(redis_server.url)
    [blob] = raw.keys(f"{client.namespace}:blob:*")
    raw.set(blob, b"corrupted")
    worker = broker(redis_server, client.namespace, inline_limit=1024)  # no cached copy
    worker_queues = Queues(methods=["echo"], broker=worker)
    with WorkerPool(worker_queues, [methods.echo], mode="thread"):
        result = queues.get_result(timeout=30)
    assert result.task_id == task_id and not result.success
    assert result.failure.type == "ValueMissing"
    assert "does not match its digest" in result.failure.message
    for b in (worker, client):
        b.close()


def test_a_restarted_thinker_counts_the_keyed_tasks_it_sends_again_that_are_still_out(
    redis_server,
):
    first = broker(redis_server)
    sent = Queues(methods=["add"], topics=["sums"], broker=first).send_inputs(
        1, 2, method="add", topic="sums", key="k1"
    )
    first.close()  # the thinker is gone; its task waits
    again = broker(redis_server, first.namespace)
    queues = Queues(methods=["add"], topics=["sums"], broker=again)
    assert queues.send_inputs(1, 2, method="add", key="k1") == sent  # topic from the task
    assert queues.active_count("sums") == 1 and queues.active_count("default") == 0
    assert queues.send_inputs(1, 2, method="add", key="k1") == sent  # counted once
    assert queues.active_count("sums") == 1
    with WorkerPool(queues, [methods.add], mode="thread"):
        assert queues.get_result(topic="sums", timeout=30).value == 3
    assert queues.active_count("sums") == 0 and queues.wait_until_done(timeout=1)
    again.close()


def test_a_key_is_remembered_for_its_ttl_after_its_task_finished(redis_server):
    # The record made at submission would lapse before the done-marker for a task that ran
    # longer than the ttl; the final result renews it.
    client = broker(redis_server, ttl_seconds=60)
    queues = Queues(methods=["add"], broker=client)
    task_id = queues.send_inputs(1, 2, method="add", key="mol-42")
    raw = redis.Redis.from_url(redis_server.url)
    record = f"{client.namespace}:key:mol-42"
    raw.expire(record, 1)  # as if the task had run for most of the ttl
    with WorkerPool(queues, [methods.add], mode="thread"):
        assert queues.get_result(timeout=30).value == 3
    assert raw.ttl(record) > 30
    assert queues.send_inputs(1, 2, method="add", key="mol-42") == task_id
    client.close()


def test_a_keyed_task_finishing_while_a_restarted_thinker_looks_it_up_is_not_counted(
    redis_server,
):
    import threading

    first = broker(redis_server)
    sent = Queues(methods=["add"], broker=first).send_inputs(3, 4, method="add", key="K")
    first.close()
    worker = broker(redis_server, first.namespace)
    [task] = worker.get_tasks(["default"], 1, timeout=5)  # running
    again = broker(redis_server, first.namespace)
    queues = Queues(methods=["add"], broker=again)
    received = threading.Event()
    reader = threading.Thread(
        target=lambda: queues.get_result(timeout=20) and received.set(), daemon=True
    )
    reader.start()
    looked_up = again.pending

    def pending(ids):  # the task finishes, and its result is received, during the look-up
        found = looked_up(ids)
        task.set_value(7)
        task.complete = True
        worker.put_results([task])
        assert received.wait(20)
        return found

    again.pending = pending
    assert queues.send_inputs(3, 4, method="add", key="K") == sent
    assert queues.active_count() == 0 and queues.wait_until_done(timeout=1)
    for b in (worker, again):
        b.close()


def test_a_task_revived_streams_its_partial_results_afresh(redis_server):
    from steersman.workers.execute import execute

    client = broker(redis_server)
    queues = Queues(methods=["count_up"], broker=client)
    task_id = queues.send_inputs(2, method="count_up")
    worker = broker(redis_server, client.namespace)

    def run_partly():
        task = worker.get_task(["default"], timeout=5)
        *partials, _final = list(execute(task, methods.count_up, "w", own_process=False))
        worker.put_results(partials)
        return task

    task = run_partly()
    worker.requeue(task)  # handed back untouched (its pool stopped): same attempt
    task = run_partly()  # the same parts again: not delivered twice
    got = [queues.get_result(timeout=5) for _ in range(2)]
    assert [(r.attempt, r.part) for r in got] == [(1, 1), (1, 2)]
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.3)
    # Cancelled while queued, then queued again as a fresh first attempt.
    worker.requeue(task)
    assert client.cancel([task_id]) == (1, 0)
    assert queues.get_result(timeout=5).failure.kind == "cancelled"
    assert client.requeue_failed([task_id]) == 1
    run_partly()
    assert [queues.get_result(timeout=5).part for _ in range(2)] == [1, 2]
    for b in (worker, client):
        b.close()


# A caller that sends a task and then waits for its result has the wait sent along with the
# submission, so that the result's delivery also moves it to the caller (one write, one
# disk sync) instead of the caller's wait coming late and writing on its own.
def _reading_client(server):
    """A client that has read its topic once (so it waits for the next result ahead), and a
    worker-side broker of the same namespace."""
    client = broker(server)
    queues = Queues(methods=["add"], broker=client)
    worker = broker(server, namespace=client.namespace)
    queues.send_inputs(0, 1, method="add")
    serve_one(worker)
    assert queues.get_result(timeout=5).value == 1
    return client, queues, worker


def serve_one(worker):
    (task,) = worker.get_tasks(["default"], 1, timeout=5)
    task.set_value(sum(task.args))
    task.complete = True
    worker.put_result(task)


def _result_moved_ahead(server, client, queues, worker):
    """Send a task (its wait goes ahead) and serve it; return once the delivery has moved
    the result to the client: a raw connection, the client's unacknowledged list and the
    task's id."""
    raw = redis.Redis.from_url(server.url)
    task_id = queues.send_inputs(2, 3, method="add")
    serve_one(worker)
    unacked = f"{client.namespace}:unacked:{client.consumer}:default"
    wait_until(lambda: raw.llen(unacked) == 1, 5, "the result moved to the client")
    return raw, unacked, task_id


def test_a_submission_leaves_the_wait_for_its_result_in_place(redis_server):
    client, queues, worker = _reading_client(redis_server)
    raw = redis.Redis.from_url(redis_server.url)
    ns = client.namespace
    queues.send_inputs(2, 3, method="add")
    assert _blocked_reader(raw), "no wait for the result after the submission returned"
    serve_one(worker)
    # Moved to the client by the delivery itself, before the client asked.
    unacked = f"{ns}:unacked:{client.consumer}:default"
    wait_until(lambda: raw.llen(unacked) == 1, 5, "the result moved to the client")
    assert raw.llen(f"{ns}:result:default") == 0
    assert queues.get_result(timeout=5).value == 5
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.3)
    for b in (client, worker):
        b.close()


def _results_waiting(server, client, queues, worker):
    """Leave the client with a result of its topic waiting in Redis, unfetched, after one it
    was handed (so its next fetch is not a wait): a raw connection and the topic's key."""
    raw = redis.Redis.from_url(server.url)
    results = f"{client.namespace}:result:default"
    first = queues.send_inputs(1, 1, method="add")  # its wait goes along
    second = queues.send_inputs(2, 2, method="add")
    tasks = worker.get_tasks(["default"], 2, timeout=5)
    for task in tasks:
        task.set_value(sum(task.args))
        task.complete = True
    worker.put_results(tasks)  # in one delivery: the wait takes one, one stays
    wait_until(lambda: raw.llen(results) == 1, 5, "the second result delivered")
    result = queues.get_result(timeout=5)
    assert (result.task_id, result.value) == (first, 2)
    assert not client._readers["default"].drained  # the wait saw one more waiting
    return raw, results, second


def _with_a_result_waiting(server):
    """A reading client (see _reading_client) with a result waiting for it in Redis: the
    client, its Queues, a worker-side broker, a raw connection and the waiting task's id."""
    client, queues, worker = _reading_client(server)
    raw, _, second = _results_waiting(server, client, queues, worker)
    return client, queues, worker, raw, second


def _results_once(queues, n):
    """The next ``n`` results as {task id: value}; none comes after them."""
    got = {r.task_id: r.value for r in (queues.get_result(timeout=10) for _ in range(n))}
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.3)
    return got


def test_a_submission_brings_back_the_results_waiting_for_its_client(redis_server):
    # A thinker that submits a task for each result it gets, several in flight: the fetch
    # of the results waiting goes with the submission (their writes share its disk sync),
    # and the next get_result has them in hand.
    client, queues, worker = _reading_client(redis_server)
    raw, results, second = _results_waiting(redis_server, client, queues, worker)
    third = queues.send_inputs(3, 3, method="add")
    assert raw.llen(results) == 0, "the waiting result was not fetched with the submission"
    assert list(client._buffers["default"]) != []
    result = queues.get_result(timeout=5)
    assert (result.task_id, result.value) == (second, 4)
    serve_one(worker)
    assert _results_once(queues, 1) == {third: 6}
    for b in (client, worker):
        b.close()


def test_results_fetched_with_a_submission_after_a_redis_restart_come_once(own_redis):
    # Redis restarted: neither script is loaded. The submission goes again on its own, and
    # the results come once, none lost.
    client, queues, worker, raw, second = _with_a_result_waiting(own_redis)
    raw.script_flush()
    third = queues.send_inputs(3, 3, method="add")
    serve_one(worker)
    assert _results_once(queues, 2) == {second: 4, third: 6}
    assert raw.hlen(f"{client.namespace}:task") == 0  # the task was queued once
    for b in (client, worker):
        b.close()


def test_a_fetch_asked_again_after_a_reap_and_a_lost_reply_skips_what_was_handed_out(
    redis_server,
):
    # The thinker's link is cut past its lease: it is reaped, and the result it had handed
    # out goes back to the topic. Its next fetch runs, but the reply is lost; asked again
    # under the same number, the fetch must still say the record before it was gone, or
    # the result handed out before the cut would be handed out a second time.
    client, queues, worker, raw, second = _with_a_result_waiting(redis_server)
    client._heart_stop.set()
    client._heart.join()
    raw.delete(f"{client.namespace}:hb:{client.consumer}")
    assert worker.reap(force=True) == 1  # the result handed out goes back to the topic
    reader = client._readers["default"]
    args = [client.namespace, *client._fetch_args("default", reader)]
    client._scripts["take_results"](keys=[], args=args)  # its reply lost on the way
    # Asked again under the same number:
    assert _results_once(queues, 1) == {second: 4}
    for b in (client, worker):
        b.close()


def test_a_submission_that_landed_is_not_sent_again_when_its_fetch_fails(redis_server):
    # Redis lost its scripts (a restart) and has loaded the submission's again, not the
    # fetch's: the submission landed, so it is not sent a second time (which could fail,
    # and tell the caller a queued task was not sent); the fetch goes again on its own.
    client, queues, worker, raw, second = _with_a_result_waiting(redis_server)
    raw.script_flush()
    raw.script_load(client._scripts["submit"].script)
    raw.config_set("slowlog-log-slower-than", 0)
    raw.slowlog_reset()
    try:
        third = queues.send_inputs(3, 3, method="add")
        submit = client._scripts["submit"].sha.encode()
        runs = [e for e in raw.slowlog_get(1000) if e["command"].split()[:2][-1] == submit]
    finally:
        raw.config_set("slowlog-log-slower-than", 10000)
    assert len(runs) == 1
    serve_one(worker)
    assert _results_once(queues, 2) == {second: 4, third: 6}
    for b in (client, worker):
        b.close()


def _reply_end(buffer: bytes, start: int = 0) -> int | None:
    """Where the RESP reply that starts at ``start`` ends, or None if it is not all there."""
    line = buffer.find(b"\r\n", start)
    if line < 0:
        return None
    kind, head = buffer[start : start + 1], buffer[start + 1 : line]
    if kind in b"+-:":
        return line + 2
    if kind == b"$":
        size = int(head)
        end = line + 2 + max(size, 0) + (2 if size >= 0 else 0)
        return end if size < 0 or len(buffer) >= end else None
    end = line + 2  # an array: its items one after the other
    for _ in range(max(int(head), 0)):
        end = _reply_end(buffer, end)
        if end is None:
            return None
    return end


class CuttingProxy:
    """A TCP proxy to Redis that, once armed with some bytes, lets the connection whose
    request carries them have its first reply only, then cuts it and refuses connections
    until ``down`` is cleared: a link that breaks between two replies of one round trip."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.port, self.trigger, self.down = port, None, False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.port))
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._back, args=(server, client, cut), daemon=True).start()

    def _up(self, client, server, cut) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.trigger is not None and self.trigger in data:
                    self.trigger = None
                    cut.set()
                server.sendall(data)

    def _back(self, server, client, cut) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if not cut.is_set():
                    client.sendall(data)
                    continue
                pending += data
                end = _reply_end(pending)
                if end is not None:
                    self.down = True
                    client.sendall(pending[:end])
                    break
        for sock in (server, client):
            with contextlib.suppress(OSError):
                sock.shutdown(2)
                sock.close()

    def close(self) -> None:
        self.listener.close()


def test_a_submission_that_landed_is_not_reported_lost_when_the_link_breaks_behind_it(
    redis_server,
):
    # The link breaks after the submission's reply and before its fetch's, and Redis stays
    # out of reach a while: the caller is told the task was sent (it was), not that Redis is
    # unreachable; the fetch's results come once the link is back.
    proxy = CuttingProxy(redis_server.port)
    client = RedisBroker(
        proxy.url, f"t{uuid.uuid4().hex[:10]}", hmac_key=b"test-signing-key", connect_timeout=2
    )
    queues = Queues(methods=["add"], broker=client)
    worker = broker(redis_server, namespace=client.namespace)
    queues.send_inputs(0, 1, method="add")
    serve_one(worker)
    assert queues.get_result(timeout=5).value == 1
    raw, _, second = _results_waiting(redis_server, client, queues, worker)
    proxy.trigger = client._scripts["take_results"].sha.encode()
    third = queues.send_inputs(3, 3, method="add")  # raised BrokerUnavailable before
    assert proxy.down, "the link was not cut"
    assert raw.hexists(f"{client.namespace}:task", third)
    proxy.down = False
    serve_one(worker)
    assert _results_once(queues, 2) == {second: 4, third: 6}
    for b in (client, worker):
        b.close()
    proxy.close()


def test_a_wait_ahead_outlives_a_get_result_that_timed_out(redis_server):
    client, queues, worker = _reading_client(redis_server)
    queues.send_inputs(2, 3, method="add")
    assert client.get_result("default", timeout=0.2) is None
    assert client._readers["default"].ahead is not None
    serve_one(worker)
    assert client.get_result("default", timeout=5).value == 5
    assert client.get_result("default", timeout=0.3) is None
    for b in (client, worker):
        b.close()


def test_a_result_a_wait_ahead_took_is_given_back_when_its_reader_closes(redis_server):
    client, queues, worker = _reading_client(redis_server)
    _result_moved_ahead(redis_server, client, queues, worker)
    client.close()  # never read it
    other = broker(redis_server, namespace=client.namespace)
    assert other.get_result("default", timeout=5).value == 5
    assert other.get_result("default", timeout=0.3) is None
    for b in (other, worker):
        b.close()


def test_a_result_moved_by_a_wait_ahead_whose_connection_dropped_comes_once(redis_server):
    client, queues, worker = _reading_client(redis_server)
    raw, _, _ = _result_moved_ahead(redis_server, client, queues, worker)
    raw.client_kill_filter(_id=client._readers["default"].ahead[1])
    assert queues.get_result(timeout=5).value == 5
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.3)
    for b in (client, worker):
        b.close()


def test_a_stop_flag_ends_a_wait_ahead_at_once(redis_server):
    import threading

    from steersman.flag import Flag

    client, queues, worker = _reading_client(redis_server)
    queues.send_inputs(2, 3, method="add")
    stop, returned = Flag(), []
    thread = threading.Thread(
        target=lambda: returned.append(client.get_result("default", stop=stop))
    )
    thread.start()
    wait_until(lambda: stop._wakers, 5, "the reader to wait")  # its way to be woken
    started = time.monotonic()
    stop.set()
    thread.join(10)
    assert time.monotonic() - started < 1.5 and returned == [None]
    serve_one(worker)  # the task is still out: its result comes to the next call
    assert client.get_result("default", timeout=5).value == 5
    for b in (client, worker):
        b.close()


def test_a_submission_with_a_wait_ahead_waits_for_redis_to_come_back(own_redis):
    import threading

    client, queues, worker = _reading_client(own_redis)
    queues.send_inputs(1, 1, method="add")  # its wait goes ahead
    serve_one(worker)
    assert queues.get_result(timeout=5).value == 2
    own_redis.stop()
    back = threading.Timer(1.0, own_redis.start)
    back.start()
    try:
        task_id = queues.send_inputs(2, 3, method="add")  # retried until Redis is back
    finally:
        back.join()  # the server is the fixture's to stop, whatever happened
    serve_one(worker)
    result = queues.get_result(timeout=10)
    assert (result.task_id, result.value) == (task_id, 5)
    for b in (client, worker):
        b.close()


def test_closing_with_a_wait_ahead_while_redis_is_gone_returns_at_once(own_redis):
    client, queues, worker = _reading_client(own_redis)
    queues.send_inputs(2, 3, method="add")
    assert client._readers["default"].ahead is not None
    worker.close()
    own_redis.kill()
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 8


def test_a_result_a_wait_ahead_moves_after_its_reader_was_reaped_goes_back(redis_server):
    # A thinker host freezes right after a submission: its lease runs out, it is reaped, and
    # its wait, still in Redis, then moves the result into lists nobody will hand back.
    client, queues, worker = _reading_client(redis_server)
    queues.send_inputs(2, 3, method="add")
    client._heart_stop.set()  # frozen: no more heartbeats
    client._heart.join()
    raw = redis.Redis.from_url(redis_server.url)
    ns = client.namespace
    raw.delete(f"{ns}:hb:{client.consumer}")  # its lease ran out
    assert worker.reap(force=True) >= 0
    assert not raw.sismember(f"{ns}:consumers", client.consumer)
    serve_one(worker)
    other = broker(redis_server, namespace=ns)
    got = []
    while (result := other.get_result("default", timeout=2)) is not None:
        got.append(result.value)
    # The reap also handed back the result the frozen reader had already handed out (1):
    # a dead reader's last fetch may come again, as documented.
    assert sorted(got) == [1, 5]
    # The frozen reader, should it wake, hands nothing out: the result went to the other.
    assert client.get_result("default", timeout=0.5) is None
    for b in (client, other, worker):
        b.close()


def test_a_result_a_wait_ahead_moved_survives_a_close_that_cannot_reach_redis(own_redis):
    # The wait moved the result, then Redis went away: close() cannot account for the wait
    # and must not drop what it took. Once Redis is back, the closed client's lease runs
    # out and the result goes back to its topic for the next reader.
    client, queues, worker = _reading_client(own_redis)
    client.lease_seconds = 1.0
    client._beat()
    ns = client.namespace
    _, _, task_id = _result_moved_ahead(own_redis, client, queues, worker)
    worker.close()
    own_redis.kill()
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 8
    own_redis.start()
    other = broker(own_redis, namespace=ns)
    result = other.get_result("default", timeout=20)
    assert result is not None and (result.task_id, result.value) == (task_id, 5)
    assert other.get_result("default", timeout=0.3) is None
    other.close()


def test_a_result_a_wait_ahead_moved_survives_a_close_while_redis_refuses_writes(own_redis, caplog):
    # The wait moved the result but its acknowledgement step did not run (Redis had lost
    # its scripts), and at close Redis refuses writes (maxmemory) but still deletes: close()
    # cannot account for the wait and must leave what it took for the reaper.
    client, queues, worker = _reading_client(own_redis)
    # Read dry once more, so the wait's step writes nothing before what maxmemory refuses.
    assert client.get_result("default", timeout=0.2) is None
    client.lease_seconds = 1.0
    client._beat()
    raw = redis.Redis.from_url(own_redis.url)
    ns = client.namespace
    queues.send_inputs(2, 3, method="add")
    raw.script_flush()
    serve_one(worker)
    unacked = f"{ns}:unacked:{client.consumer}:default"
    wait_until(lambda: raw.llen(unacked) == 1, 5, "the wait to move the result")
    raw.config_set("maxmemory", 1)
    try:
        with caplog.at_level(logging.WARNING):
            client.close()
    finally:
        raw.config_set("maxmemory", 0)
    assert "could not end a wait" in caplog.text
    other = broker(own_redis, namespace=ns)
    # After the closed client's lease, and the one lease a new namespace reaps nobody.
    got = [other.get_result("default", timeout=20).value]
    while (result := other.get_result("default", timeout=0.5)) is not None:
        got.append(result.value)
    assert got == [5]
    for b in (other, worker):
        b.close()


def test_a_client_of_a_short_lease_does_not_hold_off_reaps_under_a_longer_one(redis_server):
    # Clients of different leases share a namespace. When the one of the short lease dies,
    # its task must go on after its lease, not wait out the other's (whose heartbeat would
    # otherwise find everybody lapsed and hold off every reap for its own lease).
    short = broker(redis_server, lease_seconds=1.0)
    short.keep_alive("worker")
    ns = short.namespace
    long = broker(redis_server, namespace=ns, lease_seconds=10.0)
    long.keep_alive("client")
    sent = Queues(methods=["add"], broker=long).send_inputs(1, 2, method="add")
    assert short.get_task(["default"], timeout=5).task_id == sent
    long._beat()
    short._beat()  # the namespace's mark of life still lasts the longer lease
    assert redis.Redis.from_url(redis_server.url).pttl(f"{ns}:alive") > 5000
    short._heart_stop.set()  # dies holding it
    short._heart.join()
    taker = broker(redis_server, namespace=ns)
    started = time.monotonic()
    task = taker.get_task(["default"], timeout=8)
    assert task is not None and task.task_id == sent and task.attempt == 2
    assert time.monotonic() - started < 8
    for b in (long, taker):
        b.close()


def test_a_worker_frozen_while_it_waits_takes_nothing_after_it_was_reaped(redis_server):
    # A worker process stopped (SIGSTOP) while its wait for a task is in Redis: once its
    # lease ran out and it was reaped, that wait must be gone, or the next task would be
    # moved into the held list of a worker nobody reaps any more, and never run.
    import signal
    import subprocess
    import sys

    ns = f"t{uuid.uuid4().hex[:10]}"
    code = (
        "import sys; from steersman.brokers.redis import RedisBroker; "
        "from steersman.flag import Flag; "
        f"b = RedisBroker({redis_server.url!r}, {ns!r}, hmac_key=b'test-signing-key', "
        "lease_seconds=0.9); stop = Flag()\n"
        "while True: b.get_tasks(['default'], 1, stop=stop)"
    )
    frozen = subprocess.Popen([sys.executable, "-c", code])
    raw = redis.Redis.from_url(redis_server.url)
    try:
        wait_until(lambda: raw.scard(f"{ns}:consumers") == 1, 20, "the worker to start")
        wait_until(lambda: _blocked_on(raw, "blmove"), 10, "the worker to wait")
        frozen.send_signal(signal.SIGSTOP)
        taker = broker(redis_server, namespace=ns)
        taker.keep_alive("worker")
        wait_until(lambda: raw.scard(f"{ns}:consumers") == 1, 20, "the frozen worker reaped")
        sent = Queues(methods=["add"], broker=taker).send_inputs(1, 2, method="add")
        task = taker.get_task(["default"], timeout=5)
        assert task is not None and task.task_id == sent
        taker.close()
    finally:
        frozen.kill()
        frozen.wait()


def _blocked_on(raw, command):
    return any(c.get("cmd") == command and "b" in c.get("flags", "") for c in raw.client_list())


def test_results_handed_out_stay_handed_out_when_a_reader_is_reaped_twice(redis_server):
    # A thinker's link flaps twice past its lease: each time, what it had taken goes back
    # to the topic. What it handed out before the first reap and skipped when it came back
    # must be skipped again after the second, not handed out anew.
    thinker = broker(redis_server)
    queues = Queues(methods=["add"], broker=thinker)
    worker = broker(redis_server, namespace=thinker.namespace)
    raw = redis.Redis.from_url(redis_server.url)
    hb = f"{thinker.namespace}:hb:{thinker.consumer}"
    for i in range(5):
        queues.send_inputs(i, 0, method="add")
    deliver_values(worker, range(5))
    got = [queues.get_result(timeout=5).value]  # takes all 5, hands out 1
    thinker._heart_stop.set()
    thinker._heart.join()
    raw.delete(hb)
    assert worker.reap(force=True) == 5  # first cut
    got += [queues.get_result(timeout=5).value for _ in range(4)]  # from its buffer
    queues.send_inputs(5, 0, method="add")
    deliver_values(worker, [5])
    got.append(queues.get_result(timeout=5).value)  # skips the 5 that came back
    thinker._beat()  # the link is back for a moment, then cut again
    raw.delete(hb)
    assert worker.reap(force=True) == 6  # second cut: the 5 skipped and the new one
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=1)
    assert sorted(got) == [0, 1, 2, 3, 4, 5]
    worker.close()
    thinker.close()


def test_a_worker_process_reaped_while_it_lives_takes_nothing_until_its_lease_is_renewed(
    redis_server,
):
    # The client that renews a worker process's lease is frozen past the lease: the process,
    # still running, is reaped. Nobody would hand back what it took from then on, so Redis
    # refuses it tasks (its blocking wait's too) until a heartbeat lists it again.
    client = broker(redis_server, lease_seconds=0.6)
    ns = client.namespace
    queues = Queues(methods=["add"], broker=client)
    process = RedisBroker.for_worker_process(client.process_spec("test-w0.0"))
    raw = redis.Redis.from_url(redis_server.url)
    raw.srem(f"{ns}:consumers", process.consumer)  # what the reaper does
    raw.delete(f"{ns}:hb:{process.consumer}")
    task_id = queues.send_inputs(1, 1, method="add")
    lane, held = f"{ns}:lane:default", f"{ns}:held:{process.consumer}"
    assert process.get_tasks(["default"], 1, timeout=0.3) == []  # the take script refuses
    assert raw.lrange(lane, 0, -1) == [task_id.encode()] and raw.llen(held) == 0
    process._seen_empty = lane  # the next take waits with BLMOVE, which moves the task
    raw.delete(f"{ns}:bell:default")
    assert process.get_tasks(["default"], 1, timeout=0.3) == []  # and hands it back
    assert raw.lrange(lane, 0, -1) == [task_id.encode()] and raw.llen(held) == 0
    assert raw.llen(f"{ns}:bell:default") >= 1  # ringing for workers of several lanes
    assert raw.ttl(f"{ns}:bell:default") > 0
    # A wait that moved the task, whose reply was lost (Redis restarted): looking for what
    # it moved, the process hands it back rather than run it in a list nobody reaps.
    raw.lmove(lane, held, "LEFT", "RIGHT")
    process._take_unsure = True  # as a take that lost its reply leaves it
    assert process.get_tasks(["default"], 1, timeout=0.3) == []
    assert raw.lrange(lane, 0, -1) == [task_id.encode()] and raw.llen(held) == 0
    client.adopt(process.consumer)  # its lease is renewed again
    client.keep_alive("worker")
    [task] = process.get_tasks(["default"], 1, timeout=10)
    assert task.task_id == task_id and task.attempt == 1
    task.set_value(2)
    process.put_results([task])
    assert queues.get_result(timeout=10).value == 2
    for b in (process, client):
        b.close()


def test_a_result_does_not_wait_behind_the_next_prefetched_task(redis_server, tmp_path):
    # A worker process holds a quick task and a slow one: the quick one's Result arrives
    # while the slow one runs, and a crash during the slow one does not run the quick again.
    import os
    import signal

    client = broker(redis_server)
    queues = Queues(methods=["logged_sleep", "wait_for_file"], broker=client)
    runs, gate, started = tmp_path / "runs", tmp_path / "gate", tmp_path / "gate.started"
    quick = queues.send_inputs(0, "quick", str(runs), method="logged_sleep")
    slow = queues.send_inputs(str(gate), 120, method="wait_for_file")
    # Started after both were queued: its process takes both at once.
    with WorkerPool(
        queues, [methods.logged_sleep, methods.wait_for_file], workers=1, prefetch=1
    ) as pool:
        first = queues.get_result(timeout=30)
        assert first.task_id == quick and first.value == "quick"
        wait_until(started.exists, 30, "the slow task to start")
        started.unlink()
        [pid] = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        wait_until(started.exists, 30, "the slow task to start again")
        gate.touch()
        second = queues.get_result(timeout=60)
    assert second.task_id == slow and second.attempt == 2
    assert len(runs.read_text().splitlines()) == 1  # the quick task ran once
    client.close()


def test_a_retry_sent_again_after_an_error_raises_its_attempt_once(own_redis):
    # Redis refuses writes (a replica now, e.g. after a failover): handing a failed task
    # back for its retry fails, and is tried again. Its attempt goes up once, not per try.
    from steersman.workers.pool import Settlement

    client = broker(own_redis)
    queues = Queues(methods=["fail"], broker=client)
    queues.send_inputs("once", method="fail", retry_on_exception=True, max_retries=5)
    [task] = client.get_tasks(["default"], 1, timeout=10)
    task.finish_failed("exception", "ValueError", "once")
    settlement = Settlement([task])
    raw = redis.Redis.from_url(own_redis.url)
    raw.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    for _ in range(3):
        with pytest.raises(redis.ResponseError, match="read only replica"):
            settlement.send(client)
    raw.execute_command("REPLICAOF", "NO", "ONE")
    settlement.send(client)
    [again] = client.get_tasks(["default"], 1, timeout=10)
    assert again.task_id == task.task_id and again.attempt == 2
    client.close()


def test_a_pooled_connection_left_with_an_unread_reply_is_not_handed_out_as_it_is(redis_server):
    """The pool's look before lending a connection: a reply nobody read would otherwise be
    read as the answer to the next command on that connection."""
    b = broker(redis_server)
    pool = b.redis.connection_pool
    conn = pool.get_connection()
    conn.send_command("ECHO", "stale")
    wait_until(lambda: conn._sock is not None and _readable(conn._sock), 5, "the stale reply")
    pool.release(conn)  # as a careless caller would: its reply still waits on the socket
    assert b.redis.echo("fresh") == b"fresh"
    # The same with the reply already in the parser's buffer rather than on the socket.
    conn = pool.get_connection()
    conn.send_packed_command(conn.pack_commands([("ECHO", "first"), ("ECHO", "second")]))
    assert conn.read_response() == b"first"
    pool.release(conn)
    assert b.redis.echo("fresh") == b"fresh"
    b.close()


@pytest.mark.parametrize("parser", ["hiredis", "redis-py's own"])
def test_a_connection_redis_closed_is_connected_afresh_without_an_error(redis_server, parser):
    from redis._parsers import _RESP2Parser

    from steersman.brokers.redis import _Pool

    options = {} if parser == "hiredis" else {"parser_class": _RESP2Parser}
    client = redis.Redis.from_pool(_Pool.from_url(redis_server.url, **options))
    pool = client.connection_pool
    conn = pool.get_connection()
    conn_id = RedisBroker._client_id(conn)
    pool.release(conn)
    raw = redis.Redis.from_url(redis_server.url)
    raw.client_kill_filter(_id=conn_id)
    raw.close()
    for _ in range(2):  # no ConnectionError: the look saw it closed, and connected afresh
        assert client.echo("after") == b"after"
    assert RedisBroker._client_id(pool.get_connection()) != conn_id
    client.close()


def _readable(sock) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def _a_result_and_a_worker_at_an_empty_lane(server):
    """A client, a worker that took its one task with room for more (so it saw the lane
    empty and its next take waits at once), and that task's result ready to deliver."""
    client = broker(server)
    queues = Queues(methods=["add"], broker=client)
    worker = broker(server, client.namespace)
    queues.send_inputs(1, 2, method="add")
    (task,) = worker.get_tasks(["default"], 2, timeout=5)
    task.set_value(3)
    task.complete = True
    return client, queues, worker, task


@pytest.mark.parametrize("redis_forgot_the_scripts", [False, True])
def test_a_result_delivered_ahead_of_a_wait_arrives_while_the_wait_goes_on(
    redis_server, redis_forgot_the_scripts
):
    import threading

    client, queues, worker, result = _a_result_and_a_worker_at_an_empty_lane(redis_server)
    raw = redis.Redis.from_url(redis_server.url)
    if redis_forgot_the_scripts:  # as after a restart: delivered on another connection
        raw.script_flush()
    else:  # delivered in the wait's round trip
        raw.script_load(worker._scripts["deliver"].script)
    taken: list = []
    waiting = threading.Thread(
        target=lambda: taken.append(worker.get_tasks(["default"], 1, 20, deliver=[result]))
    )
    waiting.start()
    assert queues.get_result(timeout=5).value == 3  # not behind the 20 s wait
    assert waiting.is_alive()
    assert raw.llen(f"{client.namespace}:held:{worker.consumer}") == 0
    queues.send_inputs(2, 2, method="add")
    waiting.join(10)
    assert [t.args for t in taken[0]] == [(2, 2)]
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.5)
    for b in (worker, client):
        b.close()


@pytest.mark.parametrize("refusal", ["maxmemory", "replica"])
def test_a_write_redis_refuses_is_one_clear_error_and_the_same_call_goes_through_later(
    own_redis, refusal
):
    """Redis up but refusing writes (over its maxmemory, or a read-only replica): the
    submission and a new client's first heartbeat raise BrokerRefused, one line that says
    what to do (and still the ResponseError redis-py raised); nothing was written, so the
    same submission made again once Redis accepts writes runs once."""
    client, queues, worker = _reading_client(own_redis)
    raw = redis.Redis.from_url(own_redis.url)
    fresh = broker(own_redis, namespace=client.namespace)
    if refusal == "maxmemory":
        raw.config_set("maxmemory", 1)
    else:
        raw.replicaof("127.0.0.1", free_port())  # a primary nobody runs: read-only meanwhile
    try:
        with pytest.raises(BrokerRefused) as submitted:
            queues.send_inputs(2, 3, method="add")
        with pytest.raises(BrokerRefused) as beat:
            fresh.keep_alive("client")
    finally:
        if refusal == "maxmemory":
            raw.config_set("maxmemory", 0)
        else:
            raw.replicaof("NO", "ONE")
    advice = "CONFIG SET maxmemory" if refusal == "maxmemory" else "point the URL at the primary"
    for error in (submitted.value, beat.value):
        message = str(error)
        assert isinstance(error, redis.ResponseError)
        assert "\n" not in message and advice in message and own_redis.url.split("/")[2] in message
    queues.send_inputs(2, 3, method="add")
    serve_one(worker)
    assert queues.get_result(timeout=5).value == 5
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.5)
    for b in (worker, client, fresh):
        b.close()


def test_a_result_whose_delivery_ahead_of_a_wait_is_refused_is_delivered_by_the_caller(
    own_redis,
):
    """Redis refuses the delivery (over maxmemory here): get_tasks raises, the wait's
    connection is dropped, and the caller's delivery, once Redis accepts writes, is the one
    result; the worker's next take finds what the dropped wait may have moved."""
    client, queues, worker, result = _a_result_and_a_worker_at_an_empty_lane(own_redis)
    raw = redis.Redis.from_url(own_redis.url)
    raw.config_set("maxmemory", 1)  # every write refused, reads and pops still served
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        worker.get_tasks(["default"], 1, 5, deliver=[result])
    raw.config_set("maxmemory", 0)
    worker.put_results([result])
    assert queues.get_result(timeout=5).value == 3
    queues.send_inputs(2, 2, method="add")
    assert [t.args for t in worker.get_tasks(["default"], 1, 5)] == [(2, 2)]
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=0.5)
    for b in (worker, client):
        b.close()


def test_a_pool_whose_first_heartbeat_redis_refuses_raises_and_leaves_no_process(own_redis):
    """Redis over its maxmemory when a pool starts: the pool's own first heartbeat is
    refused, and the pool raises BrokerRefused after stopping the processes it started (left
    running, they kept the program from exiting); once Redis accepts, a new pool serves."""
    import multiprocessing

    client = broker(own_redis)
    queues = Queues(methods=["add"], broker=client)
    raw = redis.Redis.from_url(own_redis.url)
    raw.config_set("maxmemory", 1)
    started = time.monotonic()
    try:
        with (
            pytest.raises(BrokerRefused, match="maxmemory"),
            WorkerPool(queues, [methods.add], workers=1),
        ):
            pass
    finally:
        raw.config_set("maxmemory", 0)
    assert time.monotonic() - started < 30
    wait_until(lambda: not multiprocessing.active_children(), 10, "the pool's processes to end")
    with WorkerPool(queues, [methods.add], workers=1) as pool:
        assert pool.wait_for_workers(60)
        queues.send_inputs(1, 2, method="add")
        assert queues.get_result(timeout=30).value == 3
    client.close()


def test_a_worker_process_replaced_while_redis_refuses_writes_serves_once_it_accepts(
    own_redis, caplog
):
    """A new process's first heartbeat refused (here: over maxmemory) is waited out and
    said, not a death that reads as methods that cannot be imported (and that, repeated,
    would make the pool give up)."""
    import os
    import signal

    client = broker(own_redis)
    queues = Queues(methods=["add"], broker=client)
    raw = redis.Redis.from_url(own_redis.url)
    try:
        with caplog.at_level(logging.WARNING), WorkerPool(queues, [methods.add], workers=1) as pool:
            assert pool.wait_for_workers(60)
            (first,) = pool.worker_pids()
            raw.config_set("maxmemory", 1)
            os.kill(first, signal.SIGKILL)
            wait_until(
                lambda: any("first heartbeat" in r.getMessage() for r in caplog.records),
                60,
                "the new process to say its heartbeat is refused",
            )
            raw.config_set("maxmemory", 0)
            assert pool.wait_for_workers(60)
            assert pool.worker_pids() != [first]
            queues.send_inputs(1, 2, method="add")
            assert queues.get_result(timeout=30).value == 3
    finally:
        raw.config_set("maxmemory", 0)
    assert not [r for r in caplog.records if "died before it was ready" in r.getMessage()]
    client.close()
