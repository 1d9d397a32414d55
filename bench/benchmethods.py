"""Methods the benchmarks' standalone workers import, and the raw echo worker."""

from __future__ import annotations

import sys


def noop(*args):
    return None


def echo_worker(url: str, inbox: str, outbox: str) -> None:
    """Reply to each request on ``inbox`` with the same bytes on ``outbox``, until 'stop'."""
    import redis

    client = redis.Redis.from_url(url)
    while True:
        _, message = client.brpop([inbox])
        if message == b"stop":
            return
        client.lpush(outbox, message)


if __name__ == "__main__" and sys.argv[1] == "echo":
    echo_worker(*sys.argv[2:5])
