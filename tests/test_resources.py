"""ResourceCounter: acquire, release, reallocate; fairness and freedom from deadlock."""

from __future__ import annotations

import random
import threading
import time

import pytest

from conftest import wait_until
from steersman import ConfigurationError, Flag, ResourceCounter


def test_slots_start_unallocated():
    rec = ResourceCounter(8, ["sim", "ml"])
    assert rec.unallocated_slots == 8
    assert rec.available_slots(None) == 8
    assert rec.allocated_slots("sim") == 0


def test_acquire_and_release_within_a_pool():
    rec = ResourceCounter(4, ["sim"])
    assert rec.reallocate(None, "sim", 3)
    assert rec.allocated_slots("sim") == 3
    assert rec.acquire("sim", 2)
    assert rec.available_slots("sim") == 1
    assert not rec.acquire("sim", 2, timeout=0.05)  # all or nothing
    assert rec.available_slots("sim") == 1
    rec.release("sim", 2)
    assert rec.available_slots("sim") == 3


def test_release_with_rerequest_acquires_again():
    rec = ResourceCounter(2, ["sim"])
    rec.reallocate(None, "sim", 2)
    rec.acquire("sim", 2)
    assert rec.release("sim", 1, rerequest=True, timeout=1) is True
    assert rec.available_slots("sim") == 0


def test_releasing_more_than_acquired_is_an_error():
    rec = ResourceCounter(2, ["sim"])
    rec.reallocate(None, "sim", 1)
    with pytest.raises(ConfigurationError, match="release only what was acquired"):
        rec.release("sim", 1)


def test_unknown_task_type_names_the_known_ones():
    rec = ResourceCounter(2, ["sim", "ml"])
    with pytest.raises(KeyError, match="'gpu' is unknown; known: None .*'sim', 'ml'"):
        rec.acquire("gpu", 1)


def test_acquire_blocks_until_release_and_wakes_at_once():
    rec = ResourceCounter(1, ["sim"])
    rec.reallocate(None, "sim", 1)
    rec.acquire("sim", 1)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: rec.acquire("sim", 1) and got.set())
    waiter.start()
    assert not got.wait(0.1)
    released = time.monotonic()
    rec.release("sim", 1)
    assert got.wait(5)
    assert time.monotonic() - released < 1.0
    waiter.join()


def test_cancel_if_flag_stops_a_blocked_acquire_at_once():
    rec = ResourceCounter(1, ["sim"])
    cancel = Flag()
    outcome = []
    waiter = threading.Thread(
        target=lambda: outcome.append(rec.acquire("sim", 1, cancel_if=cancel))
    )
    waiter.start()
    wait_until(lambda: len(rec._waiters["sim"]) == 1, 5, "the waiter to queue")
    cancel.set()
    waiter.join(5)
    assert outcome == [False]


def test_cancel_if_plain_event_also_works():
    rec = ResourceCounter(1, ["sim"])
    cancel = threading.Event()
    cancel.set()
    assert rec.acquire("sim", 1, cancel_if=cancel) is False


def test_requests_are_served_first_come_first_served():
    rec = ResourceCounter(4, ["sim"])
    rec.reallocate(None, "sim", 4)
    rec.acquire("sim", 4)
    order = []

    def request(name, n):
        rec.acquire("sim", n)
        order.append(name)

    big = threading.Thread(target=request, args=("big", 3))
    big.start()
    wait_until(lambda: len(rec._waiters["sim"]) == 1, 5, "big to queue")
    small = threading.Thread(target=request, args=("small", 1))
    small.start()
    wait_until(lambda: len(rec._waiters["sim"]) == 2, 5, "small to queue")
    rec.release("sim", 1)  # enough for small, but big came first
    time.sleep(0.05)  # give a wrong implementation the chance to serve small
    assert order == []
    rec.release("sim", 2)
    big.join(5)
    rec.release("sim", 1)
    small.join(5)
    assert order == ["big", "small"]


def test_reallocate_all_waits_for_slots_in_use():
    rec = ResourceCounter(3, ["sim", "ml"])
    rec.reallocate(None, "sim", 3)
    rec.acquire("sim", 2)
    done = threading.Event()
    mover = threading.Thread(target=lambda: rec.reallocate("sim", "ml", "all") and done.set())
    mover.start()
    assert not done.wait(0.05)
    rec.release("sim", 2)
    assert done.wait(5)
    mover.join()
    assert rec.allocated_slots("ml") == 3
    assert rec.available_slots("ml") == 3
    assert rec.allocated_slots("sim") == 0


def test_non_blocking_reallocate_calls_back():
    rec = ResourceCounter(2, ["sim"])
    called = threading.Event()
    assert rec.reallocate(None, "sim", 2, block=False, callback=called.set)
    assert called.wait(5)
    assert rec.allocated_slots("sim") == 2


def test_two_reallocations_drawing_from_one_pool_do_not_deadlock():
    rec = ResourceCounter(4, ["sim", "a", "b"])
    rec.reallocate(None, "sim", 4)
    rec.acquire("sim", 4)  # every slot busy
    results = []
    movers = [
        threading.Thread(
            target=lambda to=to: results.append(rec.reallocate("sim", to, 3, timeout=10))
        )
        for to in ("a", "b")
    ]
    for mover in movers:
        mover.start()
    wait_until(lambda: len(rec._waiters["sim"]) == 2, 5, "both movers to queue")
    rec.release("sim", 4)  # enough for one whole request, not for both
    wait_until(lambda: len(results) == 1, 5, "the first mover")
    # The second mover waits for 3 slots; give it the first mover's back.
    first = "a" if rec.allocated_slots("a") == 3 else "b"
    rec.reallocate(first, "sim", 3)
    for mover in movers:
        mover.join(10)
    assert results == [True, True]


def test_many_threads_reallocating_at_once_end_in_a_deterministic_state():
    pools = ["p0", "p1", "p2", "p3"]
    rec = ResourceCounter(40, pools)
    for pool in pools:
        rec.reallocate(None, pool, 10)
    rng = random.Random(7)
    # Each worker moves 1-3 slots from one pool to another and later moves them back, so the
    # final state is the starting one whatever the interleaving.
    plans = [(rng.choice(pools), rng.choice(pools), rng.randint(1, 3)) for _ in range(400)]
    plans = [(a, b, n) for a, b, n in plans if a != b]
    errors = []

    def work(chunk):
        try:
            for src, dst, n in chunk:
                assert rec.reallocate(src, dst, n, timeout=30)
                if rng.random() < 0.5:
                    assert rec.acquire(dst, n, timeout=30)
                    rec.release(dst, n)
                assert rec.reallocate(dst, src, n, timeout=30)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(plans[i::16],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock: threads still waiting"
    assert errors == []
    snapshot = rec.snapshot()
    assert snapshot == {None: (0, 0), **{p: (10, 10) for p in pools}}


def test_reallocating_all_moves_what_is_left_when_its_turn_comes():
    # A move of "all" waiting behind another move takes what the pool has when its turn
    # comes, not what it had when asked (it could never be granted, and blocked the pool).
    rec = ResourceCounter(4, ["sim", "ml"])
    rec.reallocate(None, "sim", 4)
    assert rec.acquire("sim", 4)
    first = threading.Thread(target=lambda: rec.reallocate("sim", "ml", 2))
    first.start()
    wait_until(lambda: len(rec._waiters["sim"]) == 1, 5, "the first move to wait")
    moved = []
    second = threading.Thread(
        target=lambda: moved.append(rec.reallocate("sim", None, "all", timeout=10))
    )
    second.start()
    wait_until(lambda: len(rec._waiters["sim"]) == 2, 5, "the second move to wait")
    rec.release("sim", 4)
    first.join(10)
    second.join(10)
    assert moved == [True]
    assert rec.snapshot() == {None: (2, 2), "sim": (0, 0), "ml": (2, 2)}


def test_releasing_a_negative_count_is_refused():
    rec = ResourceCounter(2, ["sim"])
    with pytest.raises(ConfigurationError, match="whole number >= 0"):
        rec.release("sim", -3)
    assert rec.snapshot()["sim"] == (0, 0)
