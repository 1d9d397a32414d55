"""Faults against a real Redis and real standalone workers: kills, restarts, forgeries."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import redis

from conftest import TEST_KEY, TESTS, wait_until
from steersman import Queues, ResultTimeout
from steersman.brokers.redis import RedisBroker

SIM = ["--queues", "sim:high,sim", "--method", "methods:sleep_then", "--method", "methods:add"]


@pytest.fixture
def namespace():
    return f"fault{uuid.uuid4().hex[:10]}"


def client(server, namespace, **options):
    broker = RedisBroker(server.url, namespace, hmac_key=TEST_KEY, **options)
    methods = {"sleep_then": "sim", "add": "sim", "logged_sleep": "sim"}
    return broker, Queues(methods=methods, broker=broker)


def collect(queues, count, timeout):
    """Take ``count`` results, failing if the whole lot takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    results = []
    while len(results) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(results)} of {count} results within {timeout} s"
        results.append(queues.get_result(timeout=remaining))
    return results


def test_a_sigkill_storm_loses_no_task_and_delivers_each_result_once(
    redis_server, namespace, start_worker
):
    """3 workers, 2,000 tasks of 50-200 ms; a random worker SIGKILLed every second and
    replaced. Every Result arrives exactly once, and some are from re-runs."""
    broker, queues = client(redis_server, namespace)
    options = [*SIM, "--concurrency", "1", "--lease", "1.5"]
    workers = [start_worker(redis_server, namespace, *options) for _ in range(3)]
    rng = random.Random(7)
    durations = [rng.uniform(0.05, 0.2) for _ in range(2000)]
    queues.send_batch(
        [(d, i) for i, d in enumerate(durations)], method="sleep_then", max_retries=10
    )
    kills = []
    stop = threading.Event()

    def killer():
        while not stop.wait(1.0):
            victim = rng.randrange(len(workers))
            workers[victim].kill(signal.SIGKILL)
            kills.append(workers[victim].pid)
            workers[victim] = start_worker(redis_server, namespace, *options)

    storm = threading.Thread(target=killer, daemon=True)
    storm.start()
    try:
        results = collect(queues, 2000, timeout=600)
    finally:
        stop.set()
        storm.join()
    # Once the storm is over, nothing more may come: no result twice.
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=4)
    values = collections.Counter(r.value for r in results)
    assert all(r.success for r in results), [r.failure for r in results if not r.success][:3]
    assert sorted(values) == list(range(2000)) and set(values.values()) == {1}
    rerun = [r for r in results if r.attempt > 1]
    assert len(kills) >= 20
    assert rerun, "no kill landed mid-task"
    print(f"{len(kills)} kills, {len(rerun)} results from attempt > 1")
    broker.close()


@pytest.mark.parametrize("own_redis", ["always", "everysec"], indirect=True)
def test_b_redis_killed_and_restarted_loses_no_acknowledged_task(
    own_redis, namespace, start_worker
):
    """Redis SIGKILLed mid-run and restarted from its AOF: workers and the client carry on by
    themselves and every acknowledged submission yields its result, once. With either
    fsync policy: a crash of the Redis process keeps what Redis wrote to the file before
    answering (``everysec`` risks the last second only if the machine itself goes down)."""
    broker, queues = client(own_redis, namespace)
    for _ in range(2):
        start_worker(own_redis, namespace, *SIM, "--concurrency", "1", "--lease", "3")
    queues.send_batch([(0.02, i) for i in range(300)], method="sleep_then")
    first = collect(queues, 50, timeout=120)
    own_redis.kill()

    def restart_later():
        time.sleep(2)  # down for a while: calls in flight must wait, not fail
        own_redis.start()

    threading.Thread(target=restart_later, daemon=True).start()
    # Blocks until Redis is back (within connect_timeout), then goes on.
    rest = collect(queues, 250, timeout=180)
    queues.send_batch([(0.0, 1000 + i) for i in range(50)], method="sleep_then")
    late = collect(queues, 50, timeout=120)
    values = collections.Counter(r.value for r in first + rest + late)
    assert sorted(values) == [*range(300), *range(1000, 1050)]
    assert set(values.values()) == {1}
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=2)
    broker.close()


def _session(leader: int) -> list[int]:
    """The live processes of the session ``leader`` leads (zombies are gone already)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == leader:
                found.append(int(entry))
    return found


def test_b2_a_worker_killed_while_its_new_process_waits_out_refused_writes_leaves_nothing(
    own_redis, namespace, start_worker
):
    """A standalone worker SIGKILLed while its replacement process waits for Redis to accept
    writes again (over maxmemory): that process stops too, and so does the fork server that
    started it, instead of waiting for ever, unseen."""
    broker = RedisBroker(own_redis.url, namespace, hmac_key=TEST_KEY)
    queues = Queues(methods={"whoami": "sim"}, broker=broker)
    worker = start_worker(
        own_redis, namespace, "--queues", "sim", "--method", "methods:whoami", "--concurrency", "1"
    )
    queues.send_inputs(method="whoami")
    first = queues.get_result(timeout=60).value
    raw = redis.Redis.from_url(own_redis.url)
    raw.config_set("maxmemory", 1)
    try:
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: "first heartbeat was refused" in worker.log(),
            60,
            "the new process to wait out the refused writes",
        )
        os.kill(worker.pid, signal.SIGKILL)  # the worker's own process only
        wait_until(lambda: not _session(worker.pid), 30, "every process of the worker to end")
    finally:
        raw.config_set("maxmemory", 0)
    broker.close()


def test_b3_a_worker_killed_alone_takes_its_running_task_and_the_program_it_started_along(
    redis_server, namespace, start_worker, tmp_path
):
    """SIGKILL the worker's own process only (as the OOM killer would) while its process
    runs a task that started a program: that process and the program end at once, as do
    the fork server and the rest, rather than running on unseen while the task's lease
    lapses and it goes to another worker."""
    broker = RedisBroker(redis_server.url, namespace, hmac_key=TEST_KEY)
    queues = Queues(methods={"start_program_then_wait": "sim"}, broker=broker)
    worker = start_worker(
        redis_server, namespace, "--queues", "sim", "--method", "methods:start_program_then_wait"
    )
    pid_path = tmp_path / "program.pid"
    queues.send_inputs(str(pid_path), method="start_program_then_wait")
    wait_until(lambda: pid_path.exists() and pid_path.read_text(), 60, "the program to start")
    assert int(pid_path.read_text()) in _session(worker.pid)
    os.kill(worker.pid, signal.SIGKILL)
    wait_until(lambda: not _session(worker.pid), 15, "every process of the worker to end")
    broker.close()


def test_b4_a_worker_killed_alone_delivers_the_task_it_runs_and_hands_back_the_rest(
    redis_server, namespace, start_worker, tmp_path
):
    """SIGKILL the worker's own process while its process runs one task and holds two more
    (prefetched): the running task finishes and is delivered, the two go back and another
    worker runs them; each runs once and none loses an attempt."""
    broker = RedisBroker(redis_server.url, namespace, hmac_key=TEST_KEY)
    queues = Queues(methods={"noted_sleep": "sim"}, broker=broker)
    started = tmp_path / "started"
    queues.send_batch([(str(started), 2.0, i) for i in range(3)], method="noted_sleep")
    options = ("--queues", "sim", "--method", "methods:noted_sleep", "--concurrency", "1")
    first = start_worker(redis_server, namespace, *options, "--prefetch", "2")
    wait_until(lambda: started.exists() and started.read_text(), 60, "the first task to start")
    os.kill(first.pid, signal.SIGKILL)
    start_worker(redis_server, namespace, *options)
    results = [queues.get_result(timeout=60) for _ in range(3)]
    assert all(r.success for r in results), [r.failure for r in results]
    assert sorted(r.value for r in results) == [0, 1, 2]
    assert {r.attempt for r in results} == {1}
    assert sorted(started.read_text().split()) == ["0", "1", "2"]
    broker.close()


def test_c_forged_and_garbled_messages_are_rejected_and_logged_by_a_standalone_worker(
    redis_server, namespace, start_worker
):
    broker, queues = client(redis_server, namespace)
    worker = start_worker(redis_server, namespace, *SIM)
    forger = RedisBroker(redis_server.url, namespace, hmac_key=b"not-the-key")
    Queues(methods={"add": "sim"}, broker=forger).send_inputs(40, 2, method="add")
    raw = redis.Redis.from_url(redis_server.url)
    raw.hset(f"{namespace}:task", "junk", b"\x00garbage that is no envelope")
    raw.hset(f"{namespace}:laneof", "junk", "sim")
    raw.rpush(f"{namespace}:lane:sim", "junk")
    raw.rpush(f"{namespace}:bell:sim", "1")
    queues.send_inputs(2, 3, method="add")
    assert queues.get_result(timeout=60).value == 5
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=1)  # the forged 40 + 2 never ran
    wait_until(lambda: worker.log().count("rejected task") >= 2, 30, "two rejections logged")
    log = worker.log()
    assert "signature does not match" in log
    queues.send_inputs(5, 5, method="add")  # and it keeps serving
    assert queues.get_result(timeout=60).value == 10
    for b in (broker, forger):
        b.close()


def test_d_a_task_over_its_timeout_is_killed_on_a_standalone_worker(
    redis_server, namespace, start_worker
):
    broker, queues = client(redis_server, namespace)
    start_worker(redis_server, namespace, *SIM)
    started = time.monotonic()
    queues.send_inputs(60, method="sleep_then", timeout=1.0)
    result = queues.get_result(timeout=60)
    assert not result.success
    assert result.failure.kind == "timeout"
    assert "killed" in result.failure.message
    assert time.monotonic() - started < 30
    queues.send_inputs(1, 1, method="add")
    assert queues.get_result(timeout=60).value == 2
    broker.close()


def test_e_a_worker_serves_only_its_own_namespace(redis_server, start_worker):
    mine, theirs = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    broker_a, queues_a = client(redis_server, mine)
    broker_b, queues_b = client(redis_server, theirs)
    start_worker(redis_server, mine, *SIM)
    queues_b.send_batch([(i, 0) for i in range(20)], method="add")
    queues_a.send_batch([(i, 100) for i in range(20)], method="add")
    values = sorted(r.value for r in collect(queues_a, 20, timeout=60))
    assert values == list(range(100, 120))
    assert broker_b.queue_depths() == {"sim": 20}
    for b in (broker_a, broker_b):
        b.close()


def test_f_sigterm_mid_task_delivers_that_result_exactly_once(
    redis_server, namespace, start_worker
):
    broker, queues = client(redis_server, namespace)
    worker = start_worker(redis_server, namespace, *SIM, "--grace", "30", "--lease", "3")
    queues.send_inputs(4.0, "slow", method="sleep_then")
    wait_until(lambda: _running(broker), 60, "status to show the task running")
    worker.kill(signal.SIGTERM)
    result = queues.get_result(timeout=60)
    assert result.success and result.value == "slow" and result.attempt == 1
    assert worker.process.wait(60) == 0
    with pytest.raises(ResultTimeout):
        queues.get_result(timeout=1)
    broker.close()


def _running(broker) -> bool:
    return any(c.get("running") for c in broker.status()["clients"])


THINKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from steersman import Queues
    from steersman.brokers.redis import RedisBroker

    url, namespace, key, work = sys.argv[1:5]
    record, runs = Path(work, "received"), Path(work, "runs")
    broker = RedisBroker(url, namespace, hmac_key=key, lease_seconds=1.5)
    queues = Queues(methods={"logged_sleep": "sim"}, broker=broker)
    seen = set(record.read_text().split()) if record.exists() else set()
    # Every task carries a key: sending them all again runs none twice.
    queues.send_batch(
        [(0.02, f"k{i}", str(runs)) for i in range(200)],
        method="logged_sleep",
        keys=[f"k{i}" for i in range(200)],
    )
    with open(record, "a") as out:
        while len(seen) < 200:
            value = queues.get_result(timeout=120).value
            seen.add(value)
            out.write(value + "\\n")
            out.flush()
            os.fsync(out.fileno())
    queues.close()
    print("all 200 received")
    """
).replace("import sys\n", "import os\nimport sys\n", 1)


def test_g_a_thinker_killed_and_restarted_loses_no_result_and_reruns_no_keyed_task(
    redis_server, namespace, start_worker, tmp_path
):
    script = tmp_path / "thinker.py"
    script.write_text(THINKER)
    start_worker(
        redis_server,
        namespace,
        "--queues",
        "sim",
        "--method",
        "methods:logged_sleep",
        "--concurrency",
        "2",
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    argv = [sys.executable, str(script), redis_server.url, namespace, TEST_KEY, str(tmp_path)]
    received = tmp_path / "received"
    first = subprocess.Popen(argv, env=env)
    wait_until(
        lambda: received.exists() and len(received.read_text().split()) >= 40,
        120,
        "the first thinker to receive 40 results",
    )
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    before = len(received.read_text().split())
    assert before < 200, "the thinker finished before it could be killed"
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "all 200 received" in second.stdout
    got = received.read_text().split()
    assert set(got) == {f"k{i}" for i in range(200)}
    runs = collections.Counter((tmp_path / "runs").read_text().split())
    assert set(runs) == {f"k{i}" for i in range(200)}
    assert max(runs.values()) == 1, [k for k, n in runs.items() if n > 1]
    # Results the first thinker had taken but not finished with came back to the second;
    # at most one batch can be seen twice.
    assert len(got) - 200 <= 64
