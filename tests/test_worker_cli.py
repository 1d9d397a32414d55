"""`steersman worker`: a standalone worker serving a namespace in Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import pytest

from conftest import wait_until
from steersman import Queues
from steersman.brokers.redis import RedisBroker

CLI = [
    "--queues",
    "sim:high,sim",
    "--method",
    "methods:add",
    "--method",
    "methods:wait_for_file",
    "--concurrency",
    "2",
]


@pytest.fixture
def namespace():
    return f"cli{uuid.uuid4().hex[:10]}"


def client(server, namespace):
    broker = RedisBroker(server.url, namespace, hmac_key=b"test-signing-key")
    return broker, Queues(methods={"add": "sim", "wait_for_file": "sim"}, broker=broker)


def test_standalone_worker_serves_tasks_and_stops_on_sigterm(redis_server, namespace, start_worker):
    broker, queues = client(redis_server, namespace)
    worker = start_worker(redis_server, namespace, *CLI)
    proc = worker.process
    try:
        for i in range(10):
            queues.send_inputs(i, 1, method="add", priority="high" if i % 2 else "normal")
        values = sorted(queues.get_result(timeout=60).value for _ in range(10))
        assert values == list(range(1, 11))
        worker.kill(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        broker.close()


def test_sigterm_mid_task_lets_it_finish_and_its_result_arrives_once(
    redis_server, namespace, tmp_path, start_worker
):
    broker, queues = client(redis_server, namespace)
    worker = start_worker(redis_server, namespace, *CLI, "--grace", "30")
    proc = worker.process
    gate = tmp_path / "gate"
    try:
        queues.send_inputs(str(gate), method="wait_for_file")
        wait_until((tmp_path / "gate.started").exists, 60, "the task to start")
        worker.kill(signal.SIGTERM)
        # Only once the worker is stopping does the task get to finish (within the grace).
        wait_until(lambda: "stopping" in worker.log(), 30, "the worker to say it is stopping")
        gate.touch()
        result = queues.get_result(timeout=60)
        assert result.success, result.failure
        assert proc.wait(60) == 0
        from steersman import ResultTimeout

        with pytest.raises(ResultTimeout):
            queues.get_result(timeout=0.5)
    finally:
        broker.close()


def test_worker_with_a_method_that_does_not_import_says_so(redis_server, namespace):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "steersman.cli",
            "worker",
            "--redis",
            redis_server.url,
            "--queues",
            "sim",
            "--method",
            "no_such_module:simulate",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot import 'no_such_module'" in done.stderr


def test_a_worker_started_beside_its_methods_module_finds_it(redis_server, namespace, tmp_path):
    # As `python -m` does: `steersman worker --method tasks:triple` from the directory that
    # holds tasks.py, without setting PYTHONPATH.
    import os
    from pathlib import Path

    (tmp_path / "tasks.py").write_text("def triple(x):\n    return 3 * x\n")
    broker = RedisBroker(redis_server.url, namespace, hmac_key=b"test-signing-key")
    queues = Queues(methods={"triple": "sim"}, broker=broker)
    queues.send_inputs(7, method="triple")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["STEERSMAN_HMAC_KEY"] = "test-signing-key"
    steersman = Path(sys.executable).parent / "steersman"
    where = ["--redis", redis_server.url, "--namespace", namespace, "--queues", "sim"]
    done = subprocess.run(
        [str(steersman), "worker", *where, "--method", "tasks:triple", "--burst"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert queues.get_result(timeout=30).value == 21
    broker.close()
