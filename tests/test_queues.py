"""The client API: declarations, send_inputs, get_result, counts, priorities, keys."""

from __future__ import annotations

import threading

import pytest

import methods
from steersman import (
    ConfigurationError,
    ResultTimeout,
    SerializationError,
    UnknownMethodError,
    UnknownTopicError,
    WorkerPool,
)


def test_unknown_method_is_an_error_naming_the_declared_ones(make_queues):
    queues = make_queues(methods={"simulate": "sim", "train": "ml"})
    with pytest.raises(UnknownMethodError, match=r"'simulat' is not declared.*simulate, train"):
        queues.send_inputs(1, method="simulat")


def test_unknown_topic_is_an_error_naming_the_declared_ones(make_queues):
    queues = make_queues(methods=["add"], topics=["sim"])
    with pytest.raises(UnknownTopicError, match=r"'simulation'.*default, sim"):
        queues.send_inputs(1, method="add", topic="simulation")
    with pytest.raises(UnknownTopicError):
        queues.get_result(topic="nope", timeout=0)


def test_default_topic_always_exists(make_queues):
    assert make_queues(methods=["add"], topics=["a"]).topics == ("default", "a")


def test_bad_priority_and_resources_are_clear_errors(make_queues):
    queues = make_queues(methods=["add"])
    with pytest.raises(ConfigurationError, match="priority 'urgent'"):
        queues.send_inputs(1, method="add", priority="urgent")
    with pytest.raises(ConfigurationError, match="known fields"):
        queues.send_inputs(1, method="add", resources={"gpus": 1})


def test_fields_of_the_wrong_type_fail_at_send(make_queues):
    queues = make_queues(methods=["add"])
    with pytest.raises(ConfigurationError, match="key must be a string"):
        queues.send_inputs(1, method="add", key=42)
    with pytest.raises(ConfigurationError, match="max_retries must be a whole number"):
        queues.send_inputs(1, method="add", max_retries=2.0)
    with pytest.raises(SerializationError, match="task_info must be plain data"):
        queues.send_inputs(1, method="add", task_info={"when": object()})
    assert queues.active_count() == 0


def test_unserializable_input_fails_at_send_and_is_not_counted(make_queues):
    queues = make_queues(methods=["add"])
    with pytest.raises(SerializationError, match="inputs of a 'add' task"):
        queues.send_inputs(threading.Lock(), method="add")
    assert queues.active_count() == 0


def test_get_result_times_out_with_a_clear_error(make_queues):
    queues = make_queues(methods=["add"])
    with pytest.raises(ResultTimeout, match="no result on topic 'default' within 0.05 s"):
        queues.get_result(timeout=0.05)


def test_results_come_back_on_their_topic_and_counts_drop(make_queues):
    queues = make_queues(methods=["add"], topics=["a", "b"])
    with WorkerPool(queues, [methods.add], mode="thread"):
        queues.send_inputs(1, 2, method="add", topic="a")
        queues.send_inputs(3, method="add", input_kwargs={"b": 4}, topic="b")
        assert queues.active_count() == 2
        assert queues.get_result(topic="b", timeout=10).value == 7
        assert queues.get_result(topic="a", timeout=10).value == 3
        assert queues.wait_until_done(timeout=10)
        assert queues.active_count() == 0


def test_wait_until_done_times_out_while_results_are_untaken(make_queues):
    queues = make_queues(methods=["add"])
    with WorkerPool(queues, [methods.add], mode="thread"):
        queues.send_inputs(1, method="add")
        assert not queues.wait_until_done(timeout=0.1)
        queues.get_result(timeout=10)
        assert queues.wait_until_done(timeout=10)


def test_high_priority_lane_is_served_before_normal_before_low(make_queues):
    queues = make_queues(methods=["echo"])
    for priority in ["low", "normal", "high", "low", "normal", "high"]:
        queues.send_inputs(priority, method="echo", priority=priority)
    with WorkerPool(queues, [methods.echo], mode="thread", workers=1):
        order = [queues.get_result(timeout=10).value for _ in range(6)]
    assert order == ["high", "high", "normal", "normal", "low", "low"]


def test_submission_with_a_known_key_is_not_run_again(make_queues):
    queues = make_queues(methods=["echo"])
    first = queues.send_inputs("a", method="echo", key="molecule-1")
    second = queues.send_inputs("b", method="echo", key="molecule-1")
    assert first == second
    assert queues.active_count() == 1
    with WorkerPool(queues, [methods.echo], mode="thread"):
        assert queues.get_result(timeout=10).value == "a"
        with pytest.raises(ResultTimeout):
            queues.get_result(timeout=0.2)


def test_task_info_round_trips_unchanged(make_queues):
    queues = make_queues(methods=["add"])
    info = {"round": 3, "tags": ["x", "y"], "score": 0.5}
    with WorkerPool(queues, [methods.add], workers=1):
        queues.send_inputs(1, method="add", task_info=info)
        assert queues.get_result(timeout=30).task_info == info


def test_keep_inputs_false_drops_inputs_from_the_result(make_queues):
    queues = make_queues(methods=["add"])
    with WorkerPool(queues, [methods.add], mode="thread"):
        queues.send_inputs(1, method="add", keep_inputs=False)
        result = queues.get_result(timeout=10)
    assert result.value == 1
    assert result.inputs is None
    with pytest.raises(AttributeError, match="keep_inputs=False"):
        _ = result.args


def test_every_result_has_ordered_timestamps_and_non_negative_overhead(make_queues):
    queues = make_queues(methods=["sleep_then"])
    with WorkerPool(queues, [methods.sleep_then], workers=2):
        for i in range(20):
            queues.send_inputs(0.01 * (i % 3), i, method="sleep_then")
        results = [queues.get_result(timeout=30) for _ in range(20)]
    for result in results:
        ts = result.timestamps
        hops = [
            ts.created,
            ts.queued,
            ts.picked_up,
            ts.started,
            ts.finished,
            ts.result_queued,
            ts.result_received,
        ]
        assert None not in hops, hops
        assert hops == sorted(hops), hops
        assert result.overhead >= 0
        assert result.time_running >= 0
        assert result.worker.pid > 0 and result.worker.host
        assert "steersman" in result.worker.versions
        assert result.serialization.inputs_bytes > 0


def test_send_batch_submits_many_with_keys_and_options(make_queues):
    queues = make_queues(methods=["add"], topics=["sums"])
    ids = queues.send_batch(
        [(i, 1) for i in range(50)],
        method="add",
        topic="sums",
        keys=[f"k{i}" for i in range(50)],
        priority="high",
    )
    assert len(set(ids)) == 50 and queues.active_count("sums") == 50
    again = queues.send_batch(
        [(i, 1) for i in range(50)], method="add", topic="sums", keys=[f"k{i}" for i in range(50)]
    )
    assert again == ids and queues.active_count("sums") == 50
    assert queues.broker.queue_depths().get("default:high") == 50
    with pytest.raises(ConfigurationError, match="2 inputs but 1 keys"):
        queues.send_batch([(1, 1), (2, 2)], method="add", keys=["only-one"])
    with pytest.raises(ConfigurationError, match="keys= .one per item., not key="):
        queues.send_batch([(1, 1)], method="add", key="k")
    with pytest.raises(ConfigurationError, match="unknown option.s. priorty"):
        queues.send_batch([(1, 1)], method="add", priorty="high")
    [shared] = queues.send_batch([(1,)], method="add", input_kwargs={"b": 5})
    assert shared not in ids
