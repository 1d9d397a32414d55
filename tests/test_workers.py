"""Worker pools: processes and threads, failures, crashes, timeouts, resources; the process
pools on each broker (on Redis their processes take their own tasks)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import methods
from conftest import wait_until
from steersman import ConfigurationError, Queues, UnknownMethodError, WorkerPool
from steersman.errors import PoolError


def test_exception_in_task_returns_failure_with_traceback(make_queues):
    queues = make_queues(methods=["fail"])
    with WorkerPool(queues, [methods.fail], workers=1):
        queues.send_inputs("no good", method="fail")
        result = queues.get_result(timeout=30)
    assert result.success is False
    assert result.failure.kind == "exception"
    assert result.failure.type == "ValueError"
    assert result.failure.message == "no good"
    assert "raise ValueError(message)" in result.failure.traceback
    assert result.attempt == 1  # exceptions are not retried unless asked


def test_exception_is_retried_when_the_task_asks(tmp_path, make_queues):
    queues = make_queues(methods=["flaky"])
    with WorkerPool(queues, [methods.flaky], workers=1):
        queues.send_inputs(str(tmp_path), 2, method="flaky", retry_on_exception=True)
        result = queues.get_result(timeout=30)
    assert result.success, result.failure
    assert result.value == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attempt1", "attempt2", "attempt3"]


def test_generator_streams_intermediate_results_then_final(make_queues):
    queues = make_queues(methods=["count_up"])
    with WorkerPool(queues, [methods.count_up], workers=1):
        queues.send_inputs(3, method="count_up")
        results = [queues.get_result(timeout=30) for _ in range(4)]
    assert [r.complete for r in results] == [False, False, False, True]
    assert [r.value for r in results] == [0, 1, 2, "finished"]
    assert len({r.task_id for r in results}) == 1
    assert queues.active_count() == 0


def test_cpu_threads_sets_thread_count_of_the_task_process():
    queues = Queues(methods=["thread_settings"])
    with WorkerPool(queues, [methods.thread_settings], workers=1):
        # The first task loads numpy's BLAS with the worker's defaults ...
        queues.send_inputs(method="thread_settings")
        default = queues.get_result(timeout=30).value
        # ... the second must limit that already-loaded pool, and say so in the environment.
        queues.send_inputs(method="thread_settings", resources={"cpu_threads": 1})
        limited = queues.get_result(timeout=30).value
        queues.send_inputs(method="thread_settings")
        after = queues.get_result(timeout=30).value
    assert limited["env"] == "1"
    assert limited["requested"] == 1
    assert limited["blas"] == [1]
    assert default["env"] == after["env"] == os.environ.get("OMP_NUM_THREADS")
    assert default["blas"] == after["blas"]


def test_killed_worker_task_is_rerun_and_pool_replaces_process(tmp_path, make_queues):
    queues = make_queues(methods=["die_on_first_attempt"])
    with WorkerPool(queues, [methods.die_on_first_attempt], workers=1) as pool:
        pool.wait_for_workers(30)
        first_pid = pool.worker_pids()[0]
        queues.send_inputs(str(tmp_path), method="die_on_first_attempt")
        result = queues.get_result(timeout=60)
        assert result.success, result.failure
        assert result.value == 2
        assert result.attempt == 2
        assert result.worker.pid != first_pid
        assert len(pool.worker_pids()) == 1


def test_task_that_always_kills_its_worker_fails_after_max_retries(make_queues):
    queues = make_queues(methods=["die", "add"])
    with WorkerPool(queues, [methods.die, methods.add], workers=1) as pool:
        queues.send_inputs(method="die", max_retries=2)
        result = queues.get_result(timeout=60)
        assert result.success is False
        assert result.failure.kind == "worker_lost"
        assert "SIGKILL" in result.failure.message
        assert "3 attempt(s)" in result.failure.message
        assert result.attempt == 3
        # The pool is still serving.
        queues.send_inputs(2, 3, method="add")
        assert queues.get_result(timeout=60).value == 5
        assert len(pool.worker_pids()) == 1


def test_worker_killed_from_outside_mid_task_does_not_hang_the_run(tmp_path, make_queues):
    queues = make_queues(methods=["wait_for_file"])
    gate = tmp_path / "gate"
    with WorkerPool(queues, [methods.wait_for_file], workers=1):
        queues.send_inputs(str(gate), method="wait_for_file")
        started = tmp_path / "gate.started"
        wait_until(started.exists, 30, "the task to start")
        victim = int(started.read_text())
        started.unlink()
        os.kill(victim, signal.SIGKILL)
        wait_until(started.exists, 30, "the task to start again on a new process")
        gate.touch()
        result = queues.get_result(timeout=60)
    assert result.success, result.failure
    assert result.attempt == 2
    assert result.value != victim


def test_task_over_its_timeout_is_killed_and_says_timeout(make_queues):
    queues = make_queues(methods=["sleep_then", "add"])
    with WorkerPool(queues, [methods.sleep_then, methods.add], workers=1):
        start = time.monotonic()
        queues.send_inputs(60, method="sleep_then", timeout=0.5)
        result = queues.get_result(timeout=60)
        assert time.monotonic() - start < 30
        assert result.success is False
        assert result.failure.kind == "timeout"
        assert "0.5 s" in result.failure.message
        queues.send_inputs(1, 1, method="add")
        assert queues.get_result(timeout=60).value == 2


@pytest.mark.parametrize("start_method", ["spawn", "forkserver", "fork"])
def test_pool_runs_under_each_start_method(start_method):
    queues = Queues(methods=["add"])
    with WorkerPool(queues, [methods.add], workers=2, start_method=start_method):
        for i in range(10):
            queues.send_inputs(i, 1, method="add")
        values = sorted(queues.get_result(timeout=60).value for _ in range(10))
    assert values == list(range(1, 11))


def test_thread_pool_runs_closures():
    offset = 10
    queues = Queues(methods=["shift"])
    with WorkerPool(queues, {"shift": lambda x: x + offset}, mode="thread", workers=2):
        queues.send_inputs(5, method="shift")
        assert queues.get_result(timeout=10).value == 15


def test_separate_pools_serve_separate_method_groups():
    queues = Queues(methods={"whoami": "sim", "add": "ml"})
    with (
        WorkerPool(queues, [methods.whoami], workers=2) as sim,
        WorkerPool(queues, [methods.add], workers=1) as ml,
    ):
        sim.wait_for_workers(30)
        ml.wait_for_workers(30)
        for _ in range(20):
            queues.send_inputs(method="whoami")
        pids = {queues.get_result(timeout=60).worker.pid for _ in range(20)}
        assert pids <= set(sim.worker_pids())
        queues.send_inputs(1, 2, method="add")
        result = queues.get_result(timeout=60)
        assert result.worker.pid in ml.worker_pids()
        assert sim.lanes == ["sim:high", "sim", "sim:low"]


def test_pool_rejects_methods_the_queues_do_not_declare():
    queues = Queues(methods=["add"])
    with pytest.raises(UnknownMethodError, match="'echo' is not declared"):
        WorkerPool(queues, [methods.echo])
    with pytest.raises(ConfigurationError, match="start method 'teleport'"):
        WorkerPool(queues, [methods.add], start_method="teleport")


def test_stopping_a_pool_leaves_no_worker_process(make_queues):
    queues = make_queues(methods=["add"])
    pool = WorkerPool(queues, [methods.add], workers=2).start()
    pool.wait_for_workers(30)
    pids = pool.worker_pids()
    pool.stop()
    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), 10, f"worker {pid} to exit")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_leaving_the_pool_on_an_error_stops_running_tasks_at_once(tmp_path, make_queues):
    queues = make_queues(methods=["wait_for_file"])
    gate = tmp_path / "gate"
    start = None
    with (
        pytest.raises(RuntimeError, match="leaving"),
        WorkerPool(queues, [methods.wait_for_file], workers=1) as pool,
    ):
        queues.send_inputs(str(gate), method="wait_for_file")
        wait_until((tmp_path / "gate.started").exists, 30, "the task to start")
        pids = pool.worker_pids()
        start = time.monotonic()
        raise RuntimeError("leaving")
    assert time.monotonic() - start < 5
    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), 10, f"worker {pid} to exit")
    # The interrupted task is handed back, not lost.
    assert sum(queues.broker.queue_depths().values()) == 1


def test_with_prefetch_a_crash_is_blamed_on_the_task_that_ran(make_queues):
    queues = make_queues(methods=["echo", "die"])
    with WorkerPool(queues, [methods.echo, methods.die], workers=1, prefetch=4) as pool:
        pool.wait_for_workers(30)
        innocent = queues.send_inputs("innocent", method="echo", max_retries=0)
        culprit = queues.send_inputs(method="die", max_retries=0)
        results = {r.task_id: r for r in (queues.get_result(timeout=60) for _ in range(2))}
    assert results[innocent].success, results[innocent].failure
    assert results[innocent].attempt == 1
    assert results[culprit].failure.kind == "worker_lost"


def test_timeout_clock_starts_when_the_worker_is_ready_not_when_it_boots(make_queues):
    queues = make_queues(methods=["add"])
    # The worker has not said it is ready yet; its boot must not count against the task.
    with WorkerPool(queues, [methods.add], workers=1, start_method="spawn"):
        queues.send_inputs(1, 2, method="add", timeout=0.05)
        result = queues.get_result(timeout=60)
    assert result.success, result.failure


def test_two_pools_of_different_methods_may_not_share_a_queue():
    queues = Queues(methods=["add", "echo"])  # both on the default queue
    with WorkerPool(queues, [methods.add], mode="thread"):
        with pytest.raises(ConfigurationError, match="both serve queue 'default'"):
            WorkerPool(queues, [methods.echo], mode="thread").start()
        with WorkerPool(queues, [methods.add], mode="thread"):  # more of the same: fine
            queues.send_inputs(1, 2, method="add")
            assert queues.get_result(timeout=30).value == 3
    with WorkerPool(queues, [methods.echo], mode="thread"):  # the other one has stopped
        queues.send_inputs("x", method="echo")
        assert queues.get_result(timeout=30).value == "x"


def test_a_timeout_of_weeks_is_kept_and_one_that_is_not_a_number_refused():
    queues = Queues(methods=["add"])
    for bad in (float("inf"), float("nan"), -1, 0):
        with pytest.raises(ConfigurationError, match="timeout must be positive, finite"):
            queues.send_inputs(1, 2, method="add", timeout=bad)
    with WorkerPool(queues, [methods.add], workers=1):
        queues.send_inputs(1, 2, method="add", timeout=30 * 24 * 3600)
        assert queues.get_result(timeout=60).value == 3
        queues.send_inputs(2, 2, method="add")  # the pool still serves
        assert queues.get_result(timeout=60).value == 4


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_a_timeout_also_kills_the_programs_its_task_started(tmp_path, make_queues):
    queues = make_queues(methods=["start_program_then_wait"])
    pid_path = tmp_path / "pid"
    with WorkerPool(queues, [methods.start_program_then_wait], workers=1):
        queues.send_inputs(str(pid_path), method="start_program_then_wait", timeout=2)
        wait_until(pid_path.exists, 30, "the program to start")
        program = int(pid_path.read_text())
        assert _running(program)
        result = queues.get_result(timeout=60)
        assert result.failure.kind == "timeout"
        wait_until(lambda: not _running(program), 10, "the task's program to be killed")


def test_a_pool_whose_workers_cannot_start_says_so(tmp_path, monkeypatch, caplog, make_queues):
    # The method's module exists here but not for the worker processes.
    import importlib
    import sys

    module = tmp_path / "only_here.py"
    module.write_text("def work(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    only_here = importlib.import_module("only_here")
    module.unlink()
    queues = make_queues(methods=["work"])
    pool = WorkerPool(queues, [only_here.work], workers=1).start()
    try:
        with pytest.raises(PoolError, match="workers in a row died while starting"):
            pool.wait_for_workers(60)
    finally:
        pool.stop(timeout=1)
        sys.modules.pop("only_here", None)


def test_a_worker_that_dies_takes_the_programs_its_task_started_with_it(tmp_path, make_queues):
    queues = make_queues(methods=["start_program_then_wait"])
    pid_path = tmp_path / "pid"
    with WorkerPool(queues, [methods.start_program_then_wait], workers=1) as pool:
        queues.send_inputs(str(pid_path), method="start_program_then_wait", max_retries=0)
        wait_until(pid_path.exists, 30, "the program to start")
        program = int(pid_path.read_text())
        [worker] = pool.worker_pids()
        os.kill(worker, signal.SIGKILL)  # the worker alone, as the OOM killer would
        assert queues.get_result(timeout=60).failure.kind == "worker_lost"
        wait_until(lambda: not _running(program), 10, "the orphaned program to be killed")
