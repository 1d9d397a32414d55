from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid

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
    """A real redis-server of the tests' own, on a free port, with AOF on."""

    def __init__(self, directory) -> None:
        self.port = free_port()
        self.directory = directory
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
                "always",
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
