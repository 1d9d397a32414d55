"""The one message model and its wire envelope."""

from __future__ import annotations

import msgspec
import pytest

from steersman.errors import EnvelopeError, EnvelopeVersionError, SerializationError
from steersman.task import (
    ENVELOPE_VERSION,
    Failure,
    ResourceRequest,
    Result,
    decode,
    decode_batch,
    dumps,
    encode,
    lanes_of,
)


def make_task(**fields):
    base = dict(task_id="t1", method="simulate", queue="sim", inputs=dumps(((1, 2), {"x": 3})))
    base.update(fields)
    return Result(**base)


def test_envelope_round_trips_every_field():
    task = make_task(
        key="mol-42",
        topic="simulation",
        resources=ResourceRequest(node_count=2, cpu_processes=4, cpu_threads=8, slots=2),
        priority="high",
        timeout=30.0,
        max_retries=5,
        attempt=2,
        task_info={"smiles": "C", "nested": {"a": [1, 2]}},
    )
    task.set_value({"energy": -1.5})
    task.timestamps.created = 1.0
    task.timestamps.queued = 2.0
    back = decode(encode(task))
    assert back == task
    assert back.value == {"energy": -1.5}
    assert back.args == (1, 2)
    assert back.kwargs == {"x": 3}
    assert back.task_info == {"smiles": "C", "nested": {"a": [1, 2]}}


def test_envelope_of_other_version_is_refused_with_clear_error():
    task = make_task(v=ENVELOPE_VERSION + 1)
    with pytest.raises(EnvelopeVersionError, match="envelope version"):
        decode(msgspec.msgpack.encode(task))
    # Version 1 wrote maps: still recognized as another release's, not as garbage.
    old = msgspec.msgpack.encode({"v": 1, "task_id": "t1", "method": "simulate"})
    with pytest.raises(EnvelopeVersionError, match="envelope version 1, this release reads"):
        decode(old)


def test_garbled_envelope_is_refused():
    data = encode(make_task())
    with pytest.raises(EnvelopeError, match="garbled"):
        decode(data[: len(data) // 2])
    with pytest.raises(EnvelopeError, match="garbled"):
        decode(b"\xff\x00 not msgpack")
    # A string that is not UTF-8 (msgspec raises UnicodeDecodeError for it)
    bad_text = data.replace(b"simulate", b"simul\xffte")
    with pytest.raises(EnvelopeError, match="garbled"):
        decode(bad_text)
    with pytest.raises(EnvelopeError, match="garbled"):
        decode_batch(b"\x91" + bad_text)


def test_unknown_fields_from_a_newer_release_are_ignored():
    # Envelopes are msgpack arrays in field order; a newer release adds fields at the end.
    newer = msgspec.msgpack.encode([*msgspec.structs.astuple(make_task()), "shiny_new"])
    assert decode(newer).method == "simulate"


def test_envelope_is_compact():
    # Field names do not travel: a no-op task's envelope stays small in Redis and the AOF.
    data = encode(make_task())
    assert b"task_id" not in data and b"method" not in data
    assert msgspec.msgpack.decode(data)[0] == ENVELOPE_VERSION  # an array, v first


def test_failure_value_is_none_and_reason_is_kept():
    task = make_task()
    task.set_failure(Failure(kind="exception", type="ValueError", message="bad", traceback="tb"))
    back = decode(encode(task))
    assert back.success is False
    assert back.value is None
    assert str(back.failure) == "ValueError: bad"


def test_lambda_inputs_fall_back_to_cloudpickle():
    data = dumps(lambda x: x + 1)
    task = make_task(inputs=dumps(((data,), {})))
    assert task.args[0] == data


def test_unserializable_object_gives_clear_error():
    import threading

    with pytest.raises(SerializationError, match="cannot be serialized"):
        dumps(threading.Lock(), what="the inputs")


def test_derived_times_use_one_clock_each():
    task = make_task()
    ts = task.timestamps
    # Client clock: created 100, received 110. Worker clock is 1000 s ahead: ran 4 s.
    ts.created, ts.result_received = 100.0, 110.0
    ts.started, ts.finished = 1102.0, 1106.0
    assert task.time_running == pytest.approx(4.0)
    assert task.round_trip == pytest.approx(10.0)
    assert task.overhead == pytest.approx(6.0)


def test_lanes_are_ordered_high_to_low():
    assert lanes_of("sim") == ["sim:high", "sim", "sim:low"]


def test_objects_that_fail_to_pickle_in_any_way_give_a_serialization_error():
    from steersman.errors import SerializationError

    class Refuses:
        def __reduce__(self):
            raise RuntimeError("no")

    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    for bad in (Refuses(), nested):
        with pytest.raises(SerializationError, match="cannot be serialized"):
            dumps(bad)
