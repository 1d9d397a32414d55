from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest


def wait_until(predicate, timeout=10.0, what="condition"):
    """Wait for ``predicate()`` to be true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def no_thread_leak():
    """Fail if the test leaves threads running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real redis-server of the tests' own, on a free port, with AOF on, synced at every
    write (``fsync="always"``) or once a second (``"everysec"``)."""

    def __init__(self, directory, fsync: str = "always") -> None:
        self.port = free_port()
        self.directory = directory
        self.fsync = fsync
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 20, f"redis-server on port {self.port}")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: only what reached the AOF survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def _pings(client) -> bool:
    import redis

    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; `make test` installs it")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path, request):
    """A redis-server for one test, which the test may kill and restart; its AOF fsync
    policy is the test's parameter when given (``indirect=True``), else ``always``."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; `make test` installs it")
    server = RedisServer(tmp_path / "redis", getattr(request, "param", "always"))
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


TESTS = Path(__file__).resolve().parent
TEST_KEY = "test-signing-key"


class WorkerProcess:
    """A standalone `steersman worker` in its own session, so a kill takes all its processes."""

    def __init__(self, server, namespace, log_dir, *options: str) -> None:
        self.log_path = Path(log_dir) / f"worker-{uuid.uuid4().hex[:8]}.log"
        # A file, not a pipe, so a chatty worker never blocks; closed in close().
        self._log = open(self.log_path, "w")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(TESTS), "STEERSMAN_HMAC_KEY": TEST_KEY}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "steersman.cli",
                "worker",
                "--redis",
                server.url,
                "--namespace",
                namespace,
                *options,
            ],
            env=env,
            stderr=self._log,
            stdout=self._log,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def kill(self, signum: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def close(self) -> None:
        self.kill()
        self.process.wait(30)
        self._log.close()


@pytest.fixture
def start_worker(tmp_path):
    """Start standalone workers; every one is killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(server, namespace, *options: str) -> WorkerProcess:
        worker = WorkerProcess(server, namespace, tmp_path, *options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture(params=["local", "redis"])
def make_queues(request):
    """Build Queues on each broker in turn: one conformance suite for every backend."""
    from steersman import Queues
    from steersman.brokers.redis import RedisBroker

    brokers = []

    def factory(**options):
        if request.param == "local":
            return Queues(**options)
        server = request.getfixturevalue("redis_server")
        broker = RedisBroker(
            server.url, namespace=f"test{uuid.uuid4().hex[:10]}", hmac_key=b"test-signing-key"
        )
        brokers.append(broker)
        return Queues(broker=broker, **options)

    yield factory
    for broker in brokers:
        broker.close()
