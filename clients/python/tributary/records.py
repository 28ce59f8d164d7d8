"""Records as Python values, and their conversion to and from the proto.

A :class:`Record` carries exactly one payload, named after the proto's
`Record.payload` case:

- ``json``: a dict (a JSON object);
- ``text``: a str;
- ``blob``: a ``(content_type, bytes)`` pair;
- ``random_number``: ``{"value": int, "tick": int}`` (or just an int);
- ``probe``: an int (the probe number);
- ``sensor_reading``: ``{"sensor_id", "metric", "value", "unit",
  "measured_at"}``;
- ``sms``: ``{"phone_number", "body"}``.

JSON travels as a `google.protobuf.Struct`, whose numbers are doubles: read
back, a whole number within 2**53 comes out as an int, any other number as a
float, so ``{"qty": 3}`` round-trips as ``{"qty": 3}``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from tributary.v1 import record_pb2

#: The payload cases, in the proto's order.
KINDS = ("random_number", "probe", "sensor_reading", "sms", "text", "json", "blob")

#: Largest integer a double holds exactly.
_EXACT = 2**53


@dataclass
class Record:
    """One record: who sent it, its position, labels and one payload.

    ``source`` and ``seq`` form the record's idempotency key. Leave them
    unset to let the publisher assign its own source and count ``seq`` up
    from 0; set both to choose the key yourself (a restarted producer must
    take a new source, as the proto says).
    """

    json: dict[str, Any] | None = None
    text: str | None = None
    blob: tuple[str, bytes] | None = None
    random_number: dict[str, int] | int | None = None
    probe: int | None = None
    sensor_reading: dict[str, Any] | None = None
    sms: dict[str, str] | None = None
    source: str | None = None
    seq: int | None = None
    sent_at: _dt.datetime | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_kinds = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(set_kinds) != 1:
            raise ValueError(
                f"a record carries exactly one payload of {', '.join(KINDS)}; "
                f"got {len(set_kinds)} ({', '.join(set_kinds) or 'none'})"
            )

    @property
    def kind(self) -> str:
        """The name of the payload that is set, for example ``"json"``."""
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def payload(self) -> Any:
        """The payload that is set."""
        return getattr(self, self.kind)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict: ``source``, ``seq``, ``sent_at``,
        ``attributes``, ``kind`` and the payload under its kind's name."""
        return {
            "source": self.source,
            "seq": self.seq,
            "sent_at": self.sent_at,
            "attributes": dict(self.attributes),
            "kind": self.kind,
            self.kind: self.payload,
        }


def to_proto(record: Record, source: str, seq: int) -> record_pb2.Record:
    """The proto of `record`, keyed `(source, seq)`. `sent_at` is now when
    the record does not carry one."""
    message = record_pb2.Record(source=source, seq=seq)
    message.sent_at.CopyFrom(to_timestamp(record.sent_at or now()))
    for key, value in record.attributes.items():
        message.attributes[key] = value
    kind = record.kind
    payload = record.payload
    if kind == "json":
        if not isinstance(payload, dict):
            raise TypeError(f"json must be a dict, not {type(payload).__name__}")
        message.json.CopyFrom(to_struct(payload))
    elif kind == "text":
        message.text.body = payload
    elif kind == "blob":
        content_type, data = payload
        message.blob.content_type = content_type
        message.blob.data = bytes(data)
    elif kind == "random_number":
        if isinstance(payload, int):
            payload = {"value": payload}
        message.random_number.value = payload.get("value", 0)
        message.random_number.tick = payload.get("tick", 0)
    elif kind == "probe":
        message.probe.number = payload
    elif kind == "sensor_reading":
        reading = dict(payload)
        measured_at = reading.pop("measured_at", None)
        json_format.ParseDict(reading, message.sensor_reading)
        if measured_at is not None:
            message.sensor_reading.measured_at.CopyFrom(to_timestamp(measured_at))
    elif kind == "sms":
        json_format.ParseDict(payload, message.sms)
    return message


def from_proto(message: record_pb2.Record) -> Record:
    """The Python value of a record proto."""
    kind = message.WhichOneof("payload")
    if kind is None:
        raise ValueError(f"record {message.source}/{message.seq} has no payload")
    if kind == "json":
        payload: Any = from_struct(message.json)
    elif kind == "text":
        payload = message.text.body
    elif kind == "blob":
        payload = (message.blob.content_type, bytes(message.blob.data))
    elif kind == "random_number":
        payload = {"value": message.random_number.value, "tick": message.random_number.tick}
    elif kind == "probe":
        payload = message.probe.number
    elif kind == "sensor_reading":
        reading = message.sensor_reading
        payload = {
            "sensor_id": reading.sensor_id,
            "metric": reading.metric,
            "value": reading.value,
            "unit": reading.unit,
            "measured_at": from_timestamp(reading.measured_at)
            if reading.HasField("measured_at")
            else None,
        }
    else:
        payload = {"phone_number": message.sms.phone_number, "body": message.sms.body}
    return Record(
        source=message.source,
        seq=message.seq,
        sent_at=from_timestamp(message.sent_at) if message.HasField("sent_at") else None,
        attributes=dict(message.attributes),
        **{kind: payload},
    )


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A JSON object as a Struct. Raises TypeError or ValueError for what
    JSON cannot hold (a set, a datetime, a non-string key)."""
    struct = struct_pb2.Struct()
    try:
        struct.update(value)
    except (TypeError, ValueError, AttributeError) as error:
        raise TypeError(f"not a JSON object: {error}") from error
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict, whole numbers as ints (see the module's doc)."""
    return _whole_numbers(json_format.MessageToDict(struct))


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def now() -> _dt.datetime:
    """The current time, in UTC."""
    return _dt.datetime.now(_dt.timezone.utc)


def to_timestamp(moment: _dt.datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a Timestamp; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> _dt.datetime:
    """A Timestamp as an aware datetime in UTC."""
    return stamp.ToDatetime(tzinfo=_dt.timezone.utc)
