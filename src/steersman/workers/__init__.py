"""Workers: run registered methods by name, in local pools of processes or threads."""

from steersman.workers.execute import current_task
from steersman.workers.pool import WorkerPool, default_start_method

__all__ = ["WorkerPool", "current_task", "default_start_method"]
