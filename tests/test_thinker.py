"""BaseThinker and its decorators."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import methods
from conftest import wait_until
from steersman import (
    BaseThinker,
    ConfigurationError,
    Queues,
    ResourceCounter,
    WorkerPool,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)


def thread_queues(*names, topics=()):
    return Queues(methods=list(names), topics=topics)


def test_agent_decorator_works_with_and_without_parentheses(no_thread_leak):
    calls = []

    class Thinker(BaseThinker):
        @agent
        def bare(self):
            calls.append("bare")

        @agent()
        def called(self):
            calls.append("called")

    Thinker(thread_queues("add")).run()
    assert sorted(calls) == ["bare", "called"]


def test_finishing_agent_sets_done_and_stops_the_others(no_thread_leak):
    class Thinker(BaseThinker):
        @agent
        def quick(self):
            pass

        @agent
        def waits_for_done(self):
            assert self.done.wait(10)

    thinker = Thinker(thread_queues("add"))
    start = time.monotonic()
    thinker.run()
    assert thinker.done.is_set()
    assert time.monotonic() - start < 5


def test_startup_agent_does_not_end_the_run(no_thread_leak):
    seen = []

    class Thinker(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues)
            self.ready = threading.Event()

        @agent(startup=True)
        def setup(self):
            seen.append("setup")
            self.ready.set()

        @agent
        def main(self):
            assert self.ready.wait(10)
            assert not self.done.is_set()  # the startup agent ended without setting it
            seen.append("main")

    Thinker(thread_queues("add")).run()
    assert seen == ["setup", "main"]


def test_each_agent_gets_its_own_logger_and_local_details(no_thread_leak, caplog):
    names = {}

    class Thinker(BaseThinker):
        def prepare_agent(self):
            self.local_details.prepared = True

        @agent(startup=True)
        def first(self):
            self.logger.info("hello from first")
            names["first"] = (
                self.logger.name,
                self.local_details.name,
                self.local_details.prepared,
            )

        @agent
        def second(self):
            names["second"] = (
                self.logger.name,
                self.local_details.name,
                self.local_details.prepared,
            )

    with caplog.at_level(logging.INFO):
        Thinker(thread_queues("add")).run()
    assert names["first"][0].endswith("Thinker.first")
    assert names["second"][0].endswith("Thinker.second")
    assert names["first"][1:] == ("first", True)
    assert names["second"][1:] == ("second", True)
    assert any(r.name.endswith("Thinker.first") and "hello" in r.message for r in caplog.records)


def test_prepare_and_tear_down_run_once_per_agent(no_thread_leak):
    events = []
    lock = threading.Lock()

    class Thinker(BaseThinker):
        def prepare_agent(self):
            with lock:
                events.append(("prepare", self.local_details.name))

        def tear_down_agent(self):
            with lock:
                events.append(("tear_down", self.local_details.name))

        @agent
        def a(self):
            pass

        @agent
        def b(self):
            raise RuntimeError("b fails")

    with pytest.raises(RuntimeError):
        Thinker(thread_queues("add")).run()
    assert sorted(events) == [
        ("prepare", "a"),
        ("prepare", "b"),
        ("tear_down", "a"),
        ("tear_down", "b"),
    ]


def test_result_processor_gets_results_of_its_topic(no_thread_leak):
    queues = thread_queues("add", topics=["sums"])

    class Thinker(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues)
            self.got = []

        @agent
        def submit(self):
            for i in range(5):
                self.queues.send_inputs(i, 100, method="add", topic="sums")

        @result_processor(topic="sums")
        def collect(self, result):
            self.got.append(result.value)

    thinker = Thinker(queues)
    with WorkerPool(queues, [methods.add], mode="thread", workers=2):
        thinker.run()
    # The submitter finished at once; the processor still drained every result.
    assert sorted(thinker.got) == [100, 101, 102, 103, 104]
    assert queues.active_count() == 0


def test_task_submitter_runs_each_time_slots_are_acquired(no_thread_leak):
    queues = thread_queues("add", topics=["sim"])

    class Thinker(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues, ResourceCounter(2, ["sim"]))
            self.rec.reallocate(None, "sim", 2)
            self.in_flight = 0
            self.max_in_flight = 0
            self.sent = 0
            self.results = []
            self.lock = threading.Lock()

        @task_submitter(task_type="sim", n_slots=1)
        def submit(self):
            with self.lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.sent += 1
                if self.sent == 10:
                    self.done.set()
            self.queues.send_inputs(0.01, method="sleep_then", topic="sim")

        @result_processor(topic="sim")
        def receive(self, result):
            with self.lock:
                self.in_flight -= 1
            self.results.append(result)
            self.rec.release("sim", 1)

    queues = Queues(methods=["sleep_then"], topics=["sim"])
    thinker = Thinker(queues)
    with WorkerPool(queues, [methods.sleep_then], mode="thread", workers=4):
        thinker.run()
    assert thinker.sent == 10
    assert len(thinker.results) == 10
    assert thinker.max_in_flight == 2  # never more tasks out than slots


def test_task_submitter_reads_n_slots_from_an_attribute(no_thread_leak):
    class Thinker(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues, ResourceCounter(3, ["sim"]))
            self.rec.reallocate(None, "sim", 3)
            self.batch = 3
            self.acquired = []

        @task_submitter(task_type="sim", n_slots="batch")
        def submit(self):
            self.acquired.append(self.rec.available_slots("sim"))
            self.done.set()

    thinker = Thinker(thread_queues("add"))
    thinker.run()
    assert thinker.acquired == [0]  # all three slots were taken at once


def test_a_task_submitter_whose_slot_count_drops_to_zero_stops_the_run_saying_so(
    no_thread_leak,
):
    class Thinker(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues, ResourceCounter(3, ["sim"]))
            self.rec.reallocate(None, "sim", 3)
            self.batch = 1
            self.calls = 0

        @task_submitter(task_type="sim", n_slots="batch")
        def submit(self):
            self.calls += 1
            self.batch = 0  # e.g. a batch size computed from what is left

    thinker = Thinker(thread_queues("add"))
    with pytest.raises(ConfigurationError, match="n_slots of 1 or more, got 0"):
        thinker.run()
    assert thinker.calls == 1


def test_event_responder_runs_when_event_is_set_and_clears_it(no_thread_leak):
    class Thinker(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues)
            self.retrain = threading.Event()  # a plain Event is accepted
            self.responses = 0
            self.answered = threading.Semaphore(0)

        @agent
        def trigger(self):
            for _ in range(3):
                self.retrain.set()
                assert self.answered.acquire(timeout=10)
                wait_until(lambda: not self.retrain.is_set(), 10, "the event to be cleared")

        @event_responder(event_name="retrain")
        def respond(self):
            self.responses += 1
            self.answered.release()

    thinker = Thinker(thread_queues("add"))
    thinker.run()
    assert thinker.responses == 3


def test_an_event_shared_with_another_component_still_triggers_its_responder(no_thread_leak):
    # The Event is given to the thinker by something else, which keeps it and sets it.
    trigger = threading.Event()
    answered = threading.Semaphore(0)

    class Thinker(BaseThinker):
        def __init__(self, queues, event):
            super().__init__(queues)
            self.new_data = event

        @agent
        def watcher(self):  # stands for another component holding the same Event
            trigger.set()
            assert answered.acquire(timeout=10), "the responder did not run"
            self.done.set()

        @event_responder(event_name="new_data")
        def respond(self):
            answered.release()

    thinker = Thinker(thread_queues("add"), trigger)
    thinker.run()
    assert thinker.new_data is trigger


def test_event_responder_borrows_slots_and_hands_them_back(no_thread_leak):
    observed = {}

    class Thinker(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues, ResourceCounter(4, ["sim", "ml"]))
            self.rec.reallocate(None, "sim", 4)
            self.retrain = threading.Event()

        @agent
        def trigger(self):
            self.retrain.set()
            wait_until(lambda: "during" in observed, 10, "the responder")
            wait_until(lambda: not self.retrain.is_set(), 10, "the event to clear")

        @event_responder(
            event_name="retrain",
            reallocate_resources=True,
            gather_from="sim",
            gather_to="ml",
            disperse_to="sim",
            max_slots=2,
        )
        def train(self):
            # Gathering runs beside the responder: wait for it to reach max_slots.
            wait_until(lambda: self.rec.allocated_slots("ml") == 2, 10, "slots to arrive")
            assert self.rec.acquire("ml", 2, timeout=10)
            observed["during"] = (self.rec.allocated_slots("sim"), self.rec.allocated_slots("ml"))
            self.rec.release("ml", 2)

    thinker = Thinker(thread_queues("add"))
    thinker.run()
    assert observed["during"] == (2, 2)
    assert thinker.rec.allocated_slots("ml") == 0
    assert thinker.rec.allocated_slots("sim") == 4
    assert thinker.rec.available_slots("sim") == 4


def test_an_event_responder_that_would_move_slots_in_a_circle_is_refused(no_thread_leak):
    for bad, message in (
        ({"gather_from": "sim", "gather_to": "sim"}, "into itself"),
        ({"gather_from": "sim", "gather_to": "ml", "slot_step": 0}, "slot_step of 1 or more"),
    ):

        class Thinker(BaseThinker):
            def __init__(self, queues):
                super().__init__(queues, ResourceCounter(4, ["sim", "ml"]))
                self.retrain = threading.Event()

            @event_responder(event_name="retrain", reallocate_resources=True, **bad)
            def train(self):
                pass

        with pytest.raises(ConfigurationError, match=message):
            Thinker(thread_queues("add")).run()


def test_agent_that_raises_makes_run_raise_promptly_with_its_name(no_thread_leak):
    queues = Queues(methods=["sleep_then"], topics=["sim"])

    class Thinker(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues, ResourceCounter(1, ["sim"]))

        @agent
        def doomed(self):
            time.sleep(0.05)
            raise KeyError("missing molecule")

        @result_processor(topic="sim")
        def waits_forever(self, result):
            pass

        @task_submitter(task_type="sim")
        def never_gets_slots(self):
            pass

        @agent
        def blocks_on_get_result(self):
            self.queues.get_result(topic="sim")

    start = time.monotonic()
    with pytest.raises(KeyError, match="missing molecule") as caught:
        Thinker(queues).run()
    assert time.monotonic() - start < 5
    assert "raised by agent 'doomed' of Thinker" in caught.value.__notes__


def test_early_end_cancels_tasks_not_yet_started_and_says_which(no_thread_leak, caplog):
    queues = Queues(methods=["sleep_then"], topics=["sim"])

    class Thinker(BaseThinker):
        @agent
        def submit_then_fail(self):
            self.ids = [
                self.queues.send_inputs(0, method="sleep_then", topic="sim") for _ in range(5)
            ]
            raise RuntimeError("policy bug")

    thinker = Thinker(queues)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError) as caught:
        thinker.run()  # no worker pool: nothing can start
    assert sorted(t.task_id for t in thinker.cancelled_tasks) == sorted(thinker.ids)
    assert "5 task(s) not yet started were cancelled" in caught.value.__notes__
    assert any(
        "cancelled 5 task(s)" in r.message and thinker.ids[0] in r.message for r in caplog.records
    )
    assert queues.active_count() == 0
    assert sum(queues.broker.queue_depths().values()) == 0


def test_agent_failure_leaves_no_worker_process_or_thread(no_thread_leak):
    queues = Queues(methods=["sleep_then"])

    class Thinker(BaseThinker):
        @agent
        def fail(self):
            self.queues.send_inputs(0.01, method="sleep_then")
            raise RuntimeError("boom")

    pool = WorkerPool(queues, [methods.sleep_then], workers=2).start()
    pids = pool.worker_pids()
    with pytest.raises(RuntimeError):
        Thinker(queues).run()
    pool.stop()
    from test_workers import _alive

    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), 10, f"worker {pid} to exit")


def test_misconfigured_agents_fail_before_anything_starts():
    class NeedsCounter(BaseThinker):
        @task_submitter(task_type="sim")
        def submit(self):
            pass

    with pytest.raises(ConfigurationError, match="needs a ResourceCounter"):
        NeedsCounter(thread_queues("add")).run()

    class WrongTopic(BaseThinker):
        @result_processor(topic="simulation")
        def process(self, result):
            pass

    with pytest.raises(ConfigurationError, match="topic 'simulation'.*declared: default"):
        WrongTopic(thread_queues("add")).run()

    class TwoOnOneTopic(BaseThinker):
        @result_processor
        def first(self, result):
            pass

        @result_processor
        def second(self, result):
            pass

    with pytest.raises(ConfigurationError, match="several result processors for topic"):
        TwoOnOneTopic(thread_queues("add")).run()

    class MisspeltEvent(BaseThinker):
        def __init__(self, queues):
            super().__init__(queues)
            self.retrain = threading.Event()

        @event_responder(event_name="retrian")
        def respond(self):
            pass

    with pytest.raises(ConfigurationError, match="'retrian', which is not set"):
        MisspeltEvent(thread_queues("add")).run()

    class NoAgents(BaseThinker):
        pass

    with pytest.raises(ConfigurationError, match="no agents"):
        NoAgents(thread_queues("add")).run()


def test_thinker_runs_as_a_thread_with_start_and_join(no_thread_leak):
    class Thinker(BaseThinker):
        @agent
        def work(self):
            self.value = 42

    thinker = Thinker(thread_queues("add"))
    thinker.start()
    thinker.join(10)
    assert not thinker.is_alive()
    assert thinker.value == 42


CTRL_C_SCRIPT = """
import sys
from steersman import BaseThinker, Queues, agent

class Thinker(BaseThinker):
    @agent
    def submit_and_wait(self):
        for _ in range(3):
            self.queues.send_inputs(1, method="add")
        print("waiting", flush=True)
        self.done.wait()

thinker = Thinker(Queues(methods=["add"]))
try:
    thinker.run()
except KeyboardInterrupt:
    print(f"interrupted; cancelled {len(thinker.cancelled_tasks)}", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_stops_the_run_and_cancels_unstarted_tasks(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted; cancelled 3" in out
