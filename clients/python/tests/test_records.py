"""Conversion of records between Python values and the proto."""

import datetime as dt

import pytest

from tributary import Record
from tributary.records import from_proto, to_proto
from tributary.v1 import record_pb2

MOMENT = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    "record",
    [
        Record(json={"order": {"id": "A-1", "total": 12.5, "qty": 3}, "tags": ["x", None, True]}),
        Record(text="hello"),
        Record(blob=("image/png", b"\x89PNG\x00")),
        Record(random_number={"value": -7, "tick": 42}),
        Record(probe=9),
        Record(
            sensor_reading={
                "sensor_id": "s1",
                "metric": "temperature",
                "value": 21.5,
                "unit": "celsius",
                "measured_at": MOMENT,
            }
        ),
        Record(sms={"phone_number": "4912345", "body": "hi"}),
    ],
    ids=lambda record: record.kind,
)
def test_every_kind_round_trips(record):
    record.sent_at = MOMENT
    record.attributes = {"worker": "w1"}
    message = to_proto(record, "src", 5)
    assert message.WhichOneof("payload") == record.kind
    back = from_proto(message)
    assert back.kind == record.kind
    assert back.payload == record.payload
    assert (back.source, back.seq, back.sent_at, back.attributes) == ("src", 5, MOMENT, {"worker": "w1"})


def test_whole_numbers_come_back_as_ints_and_fractions_as_floats():
    message = to_proto(Record(json={"a": 3, "b": 2.5, "c": [1, 1.5], "d": 2**60}), "s", 0)
    back = from_proto(message).json
    assert back == {"a": 3, "b": 2.5, "c": [1, 1.5], "d": float(2**60)}
    assert isinstance(back["a"], int) and isinstance(back["d"], float)


def test_a_plain_int_is_a_random_number_value():
    message = to_proto(Record(random_number=7), "s", 0)
    assert (message.random_number.value, message.random_number.tick) == (7, 0)


def test_sent_at_defaults_to_now():
    before = dt.datetime.now(dt.timezone.utc)
    message = to_proto(Record(text="x"), "s", 0)
    assert message.sent_at.ToDatetime(tzinfo=dt.timezone.utc) >= before.replace(microsecond=0)


@pytest.mark.parametrize("fields", [{}, {"json": {}, "text": "x"}])
def test_a_record_carries_exactly_one_payload(fields):
    with pytest.raises(ValueError, match="exactly one payload"):
        Record(**fields)


def test_json_must_be_a_json_object():
    with pytest.raises(TypeError, match="not a JSON object"):
        to_proto(Record(json={"when": dt.datetime.now()}), "s", 0)


def test_to_dict_names_the_payload_by_its_kind():
    record = from_proto(to_proto(Record(json={"a": 1}, sent_at=MOMENT), "s", 2))
    assert record.to_dict() == {
        "source": "s",
        "seq": 2,
        "sent_at": MOMENT,
        "attributes": {},
        "kind": "json",
        "json": {"a": 1},
    }


def test_a_record_without_payload_is_refused():
    with pytest.raises(ValueError, match="no payload"):
        from_proto(record_pb2.Record(source="s", seq=1))
