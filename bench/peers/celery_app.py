"""The Celery app of the benchmark, imported by ``celery -A celery_app worker``.

The broker and result backend are the Redis of the run (``PEERS_REDIS_URL``). With
``PEERS_CELERY_TUNED=1`` it takes the settings Celery's optimizing guide gives for many
short tasks (a higher prefetch multiplier) plus late acknowledgement with
``task_reject_on_worker_lost``, the documented way to have a task re-run when the process
running it dies.
"""

from __future__ import annotations

import os

import tasks
from celery import Celery

URL = os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("peers", broker=URL, backend=URL)
if os.environ.get("PEERS_CELERY_TUNED") == "1":
    app.conf.worker_prefetch_multiplier = 16
    app.conf.task_acks_late = True
    app.conf.task_reject_on_worker_lost = True

noop = app.task(name="noop")(tasks.noop)
sleep = app.task(name="sleep")(tasks.sleep)
marked_sleep = app.task(name="marked_sleep")(tasks.marked_sleep)
