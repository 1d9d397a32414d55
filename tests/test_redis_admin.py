"""Running a Redis namespace: status, failed tasks, cancel, purge, expiry, payloads, workers
that exit on their own."""

from __future__ import annotations

import signal
import time
import uuid

import pytest
import redis
from click.testing import CliRunner

import methods
from conftest import TEST_KEY, wait_until
from steersman import ConfigurationError, Queues, SerializationError, WorkerPool
from steersman import cli as cli_module
from steersman.brokers.redis import BrokerUnavailable, RedisBroker
from steersman.cli import main


@pytest.fixture
def namespace():
    return f"adm{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cli(redis_server, namespace, monkeypatch):
    """Run a steersman command against the test Redis and namespace."""
    monkeypatch.setenv("STEERSMAN_HMAC_KEY", TEST_KEY)
    monkeypatch.setenv("STEERSMAN_REDIS_URL", redis_server.url)
    monkeypatch.setenv("STEERSMAN_NAMESPACE", namespace)
    monkeypatch.setattr(cli_module.console, "width", 160)  # tables not folded at 80 columns

    def run(*args):
        outcome = CliRunner().invoke(main, list(args))
        assert outcome.exit_code == 0, outcome.output
        return outcome.output

    return run


def make(server, namespace, **options):
    broker = RedisBroker(server.url, namespace, hmac_key=TEST_KEY, **options)
    names = ["add", "fail_unless", "wait_for_file", "big_value", "echo"]
    return broker, Queues(methods=dict.fromkeys(names, "sim"), broker=broker)


def test_status_shows_queues_and_live_workers_with_their_current_task(
    redis_server, namespace, cli, tmp_path
):
    broker, queues = make(redis_server, namespace, lease_seconds=1.5)
    gate = tmp_path / "gate"
    queues.send_inputs(str(gate), method="wait_for_file")
    for i in range(3):
        queues.send_inputs(i, 1, method="add")
    queues.send_inputs(str(tmp_path / "never"), method="fail_unless")
    with WorkerPool(queues, [methods.wait_for_file, methods.add, methods.fail_unless]):
        wait_until((tmp_path / "gate.started").exists, 60, "the gated task to start")

        def shown():
            state = broker.status()
            return state["queues"].get("sim", {}).get("in_flight") == 1 and any(
                c.get("running") for c in state["clients"]
            )

        wait_until(shown, 30, "status to show the running task")
        state = broker.status()
        assert state["queues"]["sim"]["depth"] == 4
        worker = next(c for c in state["clients"] if c.get("running"))
        assert worker["alive"] and worker["role"] == "worker" and worker["host"]
        assert "wait_for_file" in worker["running"][0]
        assert time.time() - worker["beat"] < 5
        output = cli("status")
        assert "sim" in output and "wait_for_file" in output and "s ago" in output
        gate.touch()
        results = [queues.get_result(timeout=60) for _ in range(5)]
    assert sum(not r.success for r in results) == 1
    row = broker.status()["queues"]["sim"]
    assert (row["depth"], row["in_flight"], row["done"], row["failed"]) == (0, 0, 4, 1)
    broker.close()


def test_failed_tasks_are_listed_and_requeued(redis_server, namespace, cli, tmp_path):
    broker, queues = make(redis_server, namespace)
    fixed = tmp_path / "fixed"
    task_id = queues.send_inputs(str(fixed), method="fail_unless")
    with WorkerPool(queues, [methods.fail_unless], mode="thread"):
        first = queues.get_result(timeout=30)
        assert not first.success and "missing" in first.failure.message
        [failed] = broker.failed()
        assert failed.task_id == task_id and failed.failure.type == "FileNotFoundError"
        assert task_id in cli("failed")
        fixed.touch()
        assert "queued 1 failed task(s) again" in cli("failed", "--requeue")
        again = queues.get_result(timeout=30)
    assert again.task_id == task_id and again.success and again.value == "fixed"
    assert broker.failed() == []
    broker.close()


def test_a_failure_whose_inputs_are_gone_is_not_queued_again_and_says_why(
    redis_server, namespace, tmp_path, caplog
):
    import logging

    broker, queues = make(redis_server, namespace, inline_limit=1024)
    queues.send_inputs(str(tmp_path / ("n" * 2000)), method="fail_unless")  # by reference
    with WorkerPool(queues, [methods.fail_unless], mode="thread"):
        assert not queues.get_result(timeout=30).success
    raw = redis.Redis.from_url(redis_server.url)
    for blob in raw.keys(f"{namespace}:blob:*"):
        raw.delete(blob)  # expired
    admin = RedisBroker(redis_server.url, namespace, hmac_key=TEST_KEY)  # no copy in memory
    with caplog.at_level(logging.ERROR):
        assert admin.requeue_failed() == 0
    assert any("cannot be run again: its inputs" in r.message for r in caplog.records)
    assert broker.requeue_failed() == 1  # the sender still holds them: sent again
    for b in (admin, broker):
        b.close()


def test_a_failure_queued_again_after_its_counters_expired_leaves_no_counter_behind(
    redis_server, namespace, tmp_path
):
    # The counters may lapse a little before a failure record: queueing that failure again
    # must not make them anew, without an expiry and below zero.
    broker, queues = make(redis_server, namespace)
    queues.send_inputs(str(tmp_path / "never"), method="fail_unless")
    with WorkerPool(queues, [methods.fail_unless], mode="thread"):
        assert not queues.get_result(timeout=30).success
    raw = redis.Redis.from_url(redis_server.url)
    raw.delete(f"{namespace}:stats")  # as if it had expired
    assert broker.requeue_failed() == 1
    assert not raw.exists(f"{namespace}:stats")
    broker.close()


def test_cancel_reaches_queued_and_running_tasks(redis_server, namespace, cli, tmp_path):
    broker, queues = make(redis_server, namespace, lease_seconds=1.5)
    running = queues.send_inputs(str(tmp_path / "never"), 120, method="wait_for_file")
    queued = queues.send_inputs(1, 2, method="add")
    with WorkerPool(queues, [methods.wait_for_file, methods.add], prefetch=0):
        wait_until((tmp_path / "never.started").exists, 60, "the long task to start")
        output = cli("cancel", running, queued, "no-such-task")
        assert "cancelled 1 queued" in output and "stop 1 running" in output
        results = {r.task_id: r for r in (queues.get_result(timeout=30) for _ in range(2))}
    for task_id in (running, queued):
        assert results[task_id].failure.kind == "cancelled"
    broker.close()


def test_cancelling_a_task_running_on_a_thread_worker_replaces_its_outcome(
    redis_server, namespace, tmp_path
):
    broker, queues = make(redis_server, namespace, lease_seconds=1.5)
    gate = tmp_path / "gate"
    task_id = queues.send_inputs(str(gate), 60, method="wait_for_file")
    with WorkerPool(queues, [methods.wait_for_file], mode="thread") as pool:
        wait_until((tmp_path / "gate.started").exists, 30, "the task to start")
        assert broker.cancel([task_id]) == (0, 1)
        wait_until(lambda: task_id in pool._impl.cancelled, 30, "the pool to hear of it")
        gate.touch()  # the task (a thread, which cannot be stopped) ends
        result = queues.get_result(timeout=30)
    assert result.task_id == task_id and result.failure.kind == "cancelled"
    assert "thread worker cannot stop" in result.failure.message
    broker.close()


def test_cancel_without_the_runs_key_changes_nothing_and_says_why(redis_server, namespace):
    # No Result could be made for a task whose envelope cannot be read: the task stays
    # queued, with its key, and the command says which key to set.
    import os
    import subprocess
    import sys

    broker, queues = make(redis_server, namespace)
    task_id = queues.send_inputs(1, 2, method="add", key="k1")
    done = subprocess.run(
        [sys.executable, "-m", "steersman.cli", "cancel", task_id],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "STEERSMAN_HMAC_KEY": "another-key",
            "STEERSMAN_REDIS_URL": redis_server.url,
            "STEERSMAN_NAMESPACE": namespace,
        },
    )
    assert done.returncode == 2, done.stderr
    assert "nothing cancelled" in done.stderr and "STEERSMAN_HMAC_KEY" in done.stderr
    assert broker.queue_depths() == {"sim": 1}
    assert queues.send_inputs(1, 2, method="add", key="k1") == task_id  # the key still holds
    broker.close()


def test_purge_drops_the_waiting_tasks_of_a_queue(redis_server, namespace, cli):
    broker, queues = make(redis_server, namespace)
    queues.send_batch([(i, 0) for i in range(10)], method="add")
    queues.send_inputs(1, 1, method="add", priority="high")
    assert "dropped 11 waiting task(s)" in cli("purge", "sim", "--yes")
    assert broker.queue_depths() == {}
    assert broker.redis.hlen(f"{namespace}:task") == 0
    broker.close()


def test_every_key_left_after_a_run_expires(redis_server, namespace, tmp_path):
    _broker, queues = make(redis_server, namespace, ttl_seconds=3600)
    queues.send_batch([(i, 1) for i in range(20)], method="add", keys=[f"k{i}" for i in range(20)])
    queues.send_inputs(str(tmp_path / "never"), method="fail_unless")
    queues.send_inputs(2_000_000, method="big_value")  # a value sent by reference
    with WorkerPool(queues, [methods.add, methods.fail_unless, methods.big_value]):
        results = [queues.get_result(timeout=60) for _ in range(22)]
    assert len(results) == 22
    queues.close()
    raw = redis.Redis.from_url(redis_server.url)
    keys = list(raw.scan_iter(match=f"{namespace}:*"))
    assert any(b":blob:" in k for k in keys) and any(b":failed:" in k for k in keys)
    forever = [k for k in keys if raw.ttl(k) == -1]
    assert forever == [], f"keys that never expire: {forever}"


def test_big_values_travel_by_reference_and_oversized_ones_are_refused(
    redis_server, namespace, tmp_path
):
    for store in (None, tmp_path / "values"):
        broker, queues = make(
            redis_server,
            namespace + ("d" if store else "r"),
            inline_limit=64 * 1024,
            max_payload_bytes=4 * 1024 * 1024,
            value_store=store,
        )
        payload = bytes(range(256)) * 1024  # 256 KiB: over the inline limit
        queues.send_inputs(payload, method="echo")
        queues.send_inputs(8 * 1024 * 1024, method="big_value")  # a value over the limit
        with WorkerPool(queues, [methods.echo, methods.big_value], mode="thread"):
            results = {r.method: r for r in (queues.get_result(timeout=60) for _ in range(2))}
        assert results["echo"].value == payload
        too_big = results["big_value"]
        assert not too_big.success and "over the broker's limit" in too_big.failure.message
        with pytest.raises(SerializationError, match="over the broker's limit of 4.0 MiB"):
            queues.send_inputs(b"y" * (5 * 1024 * 1024), method="echo")
        if store is not None:
            assert any(store.iterdir())
        broker.close()


def test_results_handed_back_and_bells_rung_again_still_expire(redis_server, namespace, tmp_path):
    # Results given back by a closing reader or by the reaper, and the wake-up bell of a
    # failed task queued again, land in keys that may have to be made anew: each expires.
    raw = redis.Redis.from_url(redis_server.url)
    results, bell = f"{namespace}:result:default", f"{namespace}:bell:sim"

    def assert_expires(key):
        assert raw.exists(key) and raw.ttl(key) > 0, f"{key} never expires"

    _broker, queues = make(redis_server, namespace, ttl_seconds=3600)
    queues.send_batch([(i, 1) for i in range(5)], method="add")
    queues.send_inputs(str(tmp_path / "never"), method="fail_unless")
    with WorkerPool(queues, [methods.add, methods.fail_unless], mode="thread"):
        wait_until(lambda: raw.llen(results) == 6, 30, "six results")
    assert queues.get_result(timeout=5) is not None  # takes all six, hands out one
    queues.close()  # gives five back
    assert_expires(results)

    reader = RedisBroker(redis_server.url, namespace, hmac_key=TEST_KEY, ttl_seconds=3600)
    assert reader.get_result("default", timeout=5) is not None  # none acknowledged yet
    raw.delete(f"{namespace}:hb:{reader.consumer}")  # as if it died
    other = RedisBroker(redis_server.url, namespace, hmac_key=TEST_KEY, ttl_seconds=3600)
    assert other.reap(force=True) == 5
    assert_expires(results)

    raw.delete(bell)
    assert other.requeue_failed() == 1
    assert_expires(bell)
    other.purge("sim")
    assert not raw.exists(bell)  # no wake-ups left for tasks that are gone
    for b in (reader, other):
        b._closed = True  # no tidying: the reader is "dead"
        b.redis.close()


def test_the_payload_limit_holds_below_the_inline_limit_and_a_bad_store_is_named(
    redis_server, namespace, tmp_path
):
    broker, queues = make(redis_server, namespace, max_payload_bytes=256 * 1024)
    with pytest.raises(SerializationError, match="over the broker's limit of 256.0 KiB"):
        queues.send_inputs(b"y" * (900 * 1024), method="echo")  # under inline_limit (1 MiB)
    broker.close()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="cannot use .* as the value store"):
        make(redis_server, namespace, value_store=blocker / "values")


def test_a_value_store_that_cannot_be_written_fails_the_task_instead_of_holding_it(
    redis_server, namespace, tmp_path
):
    # A full disk or a store gone: the result says so; the worker does not retry for ever.
    import shutil

    store = tmp_path / "values"
    broker, queues = make(redis_server, namespace, inline_limit=1024, value_store=store)
    shutil.rmtree(store)
    store.write_text("no longer a directory")
    with pytest.raises(SerializationError, match="cannot write a value"):
        queues.send_inputs(b"x" * 4096, method="echo")  # refused at once: nothing queued
    queues.send_inputs(1_000_000, method="big_value")
    with WorkerPool(queues, [methods.big_value], mode="thread"):
        result = queues.get_result(timeout=60)
    assert not result.success and "cannot write a value" in result.failure.message
    broker.close()


def test_a_big_value_sent_again_is_uploaded_and_downloaded_once(redis_server, namespace):
    client, queues = make(redis_server, namespace, inline_limit=64 * 1024)
    worker, worker_queues = make(redis_server, namespace, inline_limit=64 * 1024)
    space = [f"C{'C' * (i % 40)}O" for i in range(20_000)]  # a search space, ~500 KB pickled
    raw = redis.Redis.from_url(redis_server.url)
    before = raw.info("stats")
    for _ in range(3):  # three inference rounds over the same space
        queues.send_inputs(space, method="echo")
    with WorkerPool(worker_queues, [methods.echo], mode="thread"):
        assert all(queues.get_result(timeout=60).value == space for _ in range(3))
    # Two values (the inputs, and the echoed result), each stored once and read once by
    # the one reader that needs it; later rounds renew their time to live and read memory.
    after = raw.info("stats")
    blobs = list(raw.scan_iter(match=f"{namespace}:blob:*"))
    assert len(blobs) == 2 and all(raw.ttl(key) > 0 for key in blobs)
    once = sum(raw.strlen(key) for key in blobs)  # ~1 MB; three times each would be ~3 MB
    sent = after["total_net_input_bytes"] - before["total_net_input_bytes"]
    received = after["total_net_output_bytes"] - before["total_net_output_bytes"]
    assert once < sent < 1.5 * once and once < received < 1.5 * once, (once, sent, received)
    for b in (client, worker):
        b.close()


def test_a_client_gives_up_on_an_unreachable_redis_with_a_clear_error():
    from conftest import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url, "nobody", connect_timeout=1.0)
    queues = Queues(methods=["add"], broker=broker)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=f"Redis at {url} is unreachable"):
        queues.send_inputs(1, 2, method="add")
    assert time.monotonic() - started < 10
    assert queues.active_count() == 0  # not counted: it was never acknowledged


def test_burst_worker_exits_once_the_queues_are_empty(
    redis_server, namespace, start_worker, tmp_path
):
    broker, queues = make(redis_server, namespace)
    queues.send_batch([(i, i) for i in range(30)], method="add")
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[worker]\nredis = "{redis_server.url}"\nqueues = ["sim"]\n'
        'methods = ["methods:add"]\nconcurrency = 2\nburst = true\n'
    )
    worker = start_worker(redis_server, namespace, "--config", str(config))
    assert worker.process.wait(120) == 0
    assert "queues empty (--burst)" in worker.log()
    assert sorted(queues.get_result(timeout=10).value for _ in range(30)) == [
        2 * i for i in range(30)
    ]
    broker.close()


def test_max_idle_worker_exits_after_idling(redis_server, namespace, start_worker):
    broker, queues = make(redis_server, namespace)
    worker = start_worker(
        redis_server, namespace, "--queues", "sim", "--method", "methods:add", "--max-idle", "1"
    )
    queues.send_inputs(1, 1, method="add")
    assert queues.get_result(timeout=60).value == 2
    assert worker.process.wait(60) == 0
    assert "idle for" in worker.log()
    broker.close()


def test_a_bad_config_file_names_the_unknown_setting(redis_server, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text('[worker]\nredis = "redis://127.0.0.1:1/0"\nthreads = 4\n')
    outcome = CliRunner().invoke(main, ["worker", "--config", str(config)])
    assert outcome.exit_code == 2
    assert "unknown worker setting 'threads'" in outcome.output


def test_an_acl_user_with_a_password_works_and_a_wrong_password_is_one_clear_error(
    redis_server, namespace
):
    admin = redis.Redis.from_url(redis_server.url)
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", user, "on", ">s3cret", f"~{namespace}:*", "+@all")
    host = f"127.0.0.1:{redis_server.port}"
    try:
        broker, queues = make(redis_server, namespace)
        broker.close()
        good = RedisBroker(f"redis://{user}:s3cret@{host}/0", namespace, hmac_key=TEST_KEY)
        queues = Queues(methods=["add"], broker=good)
        with WorkerPool(queues, [methods.add], mode="thread"):
            queues.send_inputs(20, 22, method="add")
            assert queues.get_result(timeout=30).value == 42
        good.close()
        bad = RedisBroker(f"redis://{user}:wrong@{host}/0", namespace, hmac_key=TEST_KEY)
        with pytest.raises(ConfigurationError, match="refused this client") as caught:
            Queues(methods=["add"], broker=bad).send_inputs(1, 1, method="add")
        assert "wrong" not in str(caught.value)  # the password is not echoed
    finally:
        admin.execute_command("ACL", "DELUSER", user)


def test_status_watch_shows_the_table_and_stops_cleanly_on_ctrl_c(redis_server, namespace):
    import os
    import signal
    import subprocess
    import sys
    import threading

    broker, queues = make(redis_server, namespace)
    queues.send_batch([(i, 0) for i in range(7)], method="add")
    env = {**os.environ, "STEERSMAN_HMAC_KEY": TEST_KEY, "COLUMNS": "160"}
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steersman.cli",
            "status",
            "--redis",
            redis_server.url,
            "--namespace",
            namespace,
            "--watch",
            "0.2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        # Piped, each refresh is printed in turn: wait for a second table, then Ctrl-C.
        reader = threading.Thread(
            target=lambda: seen.extend(iter(watcher.stdout.readline, "")), daemon=True
        )
        reader.start()
        wait_until(lambda: "".join(seen).count(namespace) >= 2, 60, "two refreshes")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(30) == 0, watcher.stderr.read()
    finally:
        watcher.kill()
    assert " 7 " in "".join(seen)  # the waiting tasks
    broker.close()


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server that speaks only TLS, with a certificate made for this test."""
    import shutil
    import subprocess

    from conftest import free_port

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test's TLS certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    class Server:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        untrusted = f"rediss://127.0.0.1:{port}/0"

    client = redis.Redis.from_url(Server.url)

    def pings():
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    wait_until(pings, 20, f"TLS redis-server on port {port}")
    client.close()
    yield Server
    server.terminate()
    server.wait(10)


def test_tls_connections_serve_a_standalone_worker_and_an_untrusted_certificate_is_one_error(
    tls_redis, namespace, start_worker, tmp_path
):
    broker = RedisBroker(tls_redis.url, namespace, hmac_key=TEST_KEY)
    queues = Queues(methods=dict.fromkeys(["add"], "sim"), broker=broker)
    start_worker(tls_redis, namespace, "--queues", "sim", "--method", "methods:add")
    queues.send_inputs(20, 22, method="add")
    result = queues.get_result(timeout=60)
    assert result.success and result.value == 42
    queues.close()
    untrusted = RedisBroker(tls_redis.untrusted, namespace, hmac_key=TEST_KEY, connect_timeout=30)
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="TLS certificate is not trusted.*ssl_ca_certs"):
        Queues(methods=["add"], broker=untrusted).send_inputs(1, 1, method="add")
    assert time.monotonic() - started < 10  # at once, not after the connect timeout


def test_cancelling_a_prefetched_task_does_not_charge_the_running_one(
    redis_server, namespace, cli, tmp_path
):
    # The process holding a prefetched task that is cancelled is stopped; the task it was
    # running is not to blame: it runs again without using up a retry.
    broker, queues = make(redis_server, namespace)
    gate = tmp_path / "go"
    running = queues.send_inputs(str(gate), 120, method="wait_for_file", max_retries=0)
    ahead = queues.send_inputs(1, 2, method="add")
    with WorkerPool(queues, [methods.wait_for_file, methods.add], prefetch=1):
        wait_until(lambda: (tmp_path / "go.started").exists(), 60, "the first task to start")
        assert "stop 1 running" in cli("cancel", ahead)
        first = queues.get_result(timeout=30)
        assert first.task_id == ahead and first.failure.kind == "cancelled"
        gate.write_text("")
        second = queues.get_result(timeout=60)
    assert second.task_id == running and second.success, second.failure
    broker.close()


def test_an_in_process_pool_outlives_redis_being_away_past_the_client_deadline(own_redis, tmp_path):
    # The thinker's broker gives up after connect_timeout; the pool's processes must not:
    # they wait, and deliver the result when Redis is back.
    broker = RedisBroker(own_redis.url, "outage", hmac_key=TEST_KEY, connect_timeout=1)
    queues = Queues(methods={"wait_for_file": "sim"}, broker=broker)
    gate = tmp_path / "go"
    with WorkerPool(queues, [methods.wait_for_file], workers=1) as pool:
        queues.send_inputs(str(gate), 120, method="wait_for_file")
        wait_until(lambda: (tmp_path / "go.started").exists(), 60, "the task to start")
        own_redis.kill()
        gate.write_text("")  # the task ends while Redis is away
        # What status would show: nothing running (its Result waits for Redis).
        wait_until(lambda: not pool._impl._describe()["running"], 30, "the task to end")
        assert pool.idle_seconds() is None  # a Result still to deliver is work held
        with pytest.raises(BrokerUnavailable):  # the client's deadline passes
            queues.get_result(timeout=30)
        own_redis.start()
        assert queues.get_result(timeout=60).success
    broker.close()


def test_a_standalone_worker_stops_on_sigterm_while_redis_is_away(own_redis, start_worker):
    worker = start_worker(
        own_redis, "away", "--queues", "sim", "--method", "methods:add", "--grace", "1"
    )
    wait_until(lambda: "serving" in worker.log(), 60, "the worker to start")
    own_redis.kill()
    worker.kill(signal.SIGTERM)
    assert worker.process.wait(30) == 0, worker.log()


def test_a_burst_worker_waits_for_redis_then_exits_once_the_queues_are_empty(
    own_redis, start_worker
):
    worker = start_worker(
        own_redis, "burst", "--queues", "sim", "--method", "methods:add", "--burst"
    )
    wait_until(lambda: "serving" in worker.log(), 60, "the worker to start")
    own_redis.kill()
    wait_until(lambda: "cannot read the queue depths" in worker.log(), 30, "a logged wait")
    assert worker.process.poll() is None  # waiting, not crashed
    own_redis.start()
    assert worker.process.wait(60) == 0, worker.log()
    assert "queues empty (--burst)" in worker.log()


def test_inputs_a_worker_cannot_load_fail_the_task_with_the_reason(
    redis_server, namespace, start_worker, tmp_path
):
    # The thinker keeps big inputs in a shared directory. A worker started without it
    # cannot load them: the task fails and says what to do, instead of vanishing. The same
    # worker given --value-store runs it.
    store = tmp_path / "values"
    broker, queues = make(redis_server, namespace, inline_limit=1024, value_store=store)
    payload = b"x" * 4096
    queues.send_inputs(payload, method="echo")
    blind = start_worker(redis_server, namespace, "--queues", "sim", "--method", "methods:echo")
    failed = queues.get_result(timeout=60)
    assert not failed.success and failed.failure.type == "ValueMissing"
    assert "--value-store" in failed.failure.message
    # Said in the worker's log too: its process's line reaches the worker's own process
    # over their pipe, and may come after the result it delivered itself.
    wait_until(lambda: "cannot be run" in blind.log(), 30, "the worker to log why")
    blind.close()
    queues.send_inputs(payload, method="echo")
    start_worker(
        redis_server, namespace, "--queues", "sim", "--method", "methods:echo",
        "--value-store", str(store),
    )  # fmt: skip
    assert queues.get_result(timeout=60).value == payload
    broker.close()
