"""The client of a mesh: publishing and the Query API's reads, as plain
Python values."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from tributary.publisher import (
    DEFAULT_BATCH,
    DEFAULT_RETRY_SECS,
    DEFAULT_WINDOW,
    Publisher,
    PublishResult,
)
from tributary.records import KINDS, Record, from_proto, from_timestamp, to_timestamp
from tributary.v1 import query_pb2, query_pb2_grpc, record_pb2

#: Where `tributary up` listens by default.
DEFAULT_CONNECT = "http://127.0.0.1:8080"


@dataclass
class StoredRecord:
    """A record as a parser stored it."""

    #: The store's row id; increases with the order of storing.
    id: int
    #: The parser (consumer group) that stored it.
    parser: str
    #: The record after the parser processed it; None when the stored body
    #: does not decode (see `degraded`).
    record: Record | None
    received_at: _dt.datetime | None
    stored_at: _dt.datetime | None
    #: What of the row could not be shown, one line each.
    degraded: list[str] = field(default_factory=list)


@dataclass
class DeadLetter:
    """A record a parser gave up on, with its last error."""

    id: int
    parser: str
    record: Record | None
    error: str
    attempts: int
    dead_at: _dt.datetime | None
    degraded: list[str] = field(default_factory=list)


@dataclass
class Stats:
    """Counts of what is stored."""

    #: Records stored per parser.
    parsers: dict[str, int]
    #: Records in the dead-letter table.
    dead_letters: int
    read_at: _dt.datetime | None


@dataclass
class FieldAggregate:
    """Aggregates of one field's numeric values (nearest-rank percentiles)."""

    #: The group_by field's value (decoded from its JSON text), or None
    #: when not grouped.
    group: Any
    count: int
    avg: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float


@dataclass
class FieldAggregation:
    """The answer of :meth:`Client.aggregate_field`."""

    parser: str
    field: str
    groups: list[FieldAggregate]
    #: Records in the range without the field (or the group_by field).
    missing: int
    #: Records whose field holds something other than a number.
    non_numeric: int
    #: More than 1,000 groups; only the first 1,000 are shown.
    groups_truncated: bool


def target_of(connect: str) -> tuple[str, bool]:
    """The gRPC target of an endpoint URL (`http://host:port`, or a bare
    `host:port`) and whether it wants TLS."""
    for scheme, tls in (("http://", False), ("https://", True)):
        if connect.startswith(scheme):
            return connect[len(scheme) :].rstrip("/"), tls
    if "://" in connect:
        raise ValueError(f"unsupported endpoint {connect!r}: use http:// or https://")
    return connect, False


def _stamp(message: Any, name: str) -> _dt.datetime | None:
    return from_timestamp(getattr(message, name)) if message.HasField(name) else None


def _record(message: Any) -> Record | None:
    return from_proto(message.record) if message.HasField("record") else None


def stored_record(message: query_pb2.StoredRecord) -> StoredRecord:
    """The Python value of a StoredRecord proto."""
    return StoredRecord(
        id=message.id,
        parser=message.parser,
        record=_record(message),
        received_at=_stamp(message, "received_at"),
        stored_at=_stamp(message, "stored_at"),
        degraded=list(message.degraded),
    )


def _kind_number(kind: str) -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return record_pb2.RecordKind.Value(f"RECORD_KIND_{kind.upper()}")


class Client:
    """A connection to a mesh: `tributary up`, an ingest/query server, or
    Envoy in front of them (which serves both).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        connect: str = DEFAULT_CONNECT,
        *,
        token: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        target, tls = target_of(connect)
        # Pages and tails may carry up to 64 MiB when asked; the default
        # 4 MiB limit would refuse them.
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024), *options]
        if tls:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._query = query_pb2_grpc.QueryStub(self.channel)

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- publishing ---------------------------------------------------------

    def publisher(
        self,
        *,
        source: str | None = None,
        batch: int = DEFAULT_BATCH,
        window: int = DEFAULT_WINDOW,
        retry_secs: float = DEFAULT_RETRY_SECS,
    ) -> Publisher:
        """A publisher on this client's channel (see :class:`Publisher`)."""
        return Publisher(
            self.channel,
            source=source,
            batch=batch,
            window=window,
            retry_secs=retry_secs,
            metadata=self._metadata,
        )

    def publish(self, records: Iterable[Record | dict], **settings: Any) -> PublishResult:
        """Publishes `records` and returns once every one is acknowledged
        (durably held by the queue). `settings` go to :meth:`publisher`."""
        return self.publisher(**settings).publish(records)

    # -- reads --------------------------------------------------------------

    def records_page(
        self, *, parser: str = "", source: str = "", limit: int = 100, after_id: int = 0
    ) -> tuple[list[StoredRecord], int]:
        """One page of stored records, oldest first, and the `after_id` of
        the next page (0 when this one is the last)."""
        page = self._query.ListRecords(
            query_pb2.ListRecordsRequest(
                parser=parser, source=source, limit=limit, after_id=after_id
            ),
            metadata=self._metadata,
        )
        return [stored_record(r) for r in page.records], page.next_after_id

    def records(
        self, *, parser: str = "", source: str = "", after_id: int = 0, page_size: int = 1000
    ) -> Iterator[StoredRecord]:
        """Every stored record (of `parser` and `source`, when given), oldest
        first, paging through ListRecords."""
        while True:
            page, after_id = self.records_page(
                parser=parser, source=source, limit=page_size, after_id=after_id
            )
            yield from page
            if after_id == 0:
                return

    def stats(self) -> Stats:
        """Records stored per parser, and dead letters."""
        stats = self._query.GetStats(query_pb2.GetStatsRequest(), metadata=self._metadata)
        return Stats(
            parsers={p.parser: p.stored for p in stats.parsers},
            dead_letters=stats.dead_letters,
            read_at=_stamp(stats, "read_at"),
        )

    def dead_letters(self, *, parser: str = "", page_size: int = 1000) -> Iterator[DeadLetter]:
        """Every dead letter (of `parser`, when given), oldest first."""
        after_id = 0
        while True:
            page = self._query.ListDeadLetters(
                query_pb2.ListDeadLettersRequest(
                    parser=parser, limit=page_size, after_id=after_id
                ),
                metadata=self._metadata,
            )
            for letter in page.dead_letters:
                yield DeadLetter(
                    id=letter.id,
                    parser=letter.parser,
                    record=_record(letter),
                    error=letter.error,
                    attempts=letter.attempts,
                    dead_at=_stamp(letter, "dead_at"),
                    degraded=list(letter.degraded),
                )
            after_id = page.next_after_id
            if after_id == 0:
                return

    def aggregate_field(
        self,
        parser: str,
        field: str,
        from_: _dt.datetime | None = None,
        to: _dt.datetime | None = None,
        group_by: str = "",
    ) -> FieldAggregation:
        """Count, average, min, max and percentiles of the numeric `field`
        (a dotted path) of the JSON records `parser` stored, sent within
        [`from_`, `to`), optionally one result per value of `group_by`."""
        request = query_pb2.AggregateFieldRequest(parser=parser, field=field, group_by=group_by)
        if from_ is not None:
            getattr(request, "from").CopyFrom(to_timestamp(from_))
        if to is not None:
            request.to.CopyFrom(to_timestamp(to))
        answer = self._query.AggregateField(request, metadata=self._metadata)
        return FieldAggregation(
            parser=answer.parser,
            field=answer.field,
            groups=[
                FieldAggregate(
                    group=json.loads(g.group) if g.group else None,
                    count=g.count,
                    avg=g.avg,
                    min=g.min,
                    max=g.max,
                    p50=g.p50,
                    p95=g.p95,
                    p99=g.p99,
                )
                for g in answer.groups
            ],
            missing=answer.missing,
            non_numeric=answer.non_numeric,
            groups_truncated=answer.groups_truncated,
        )

    def tail(
        self,
        *,
        parser: str = "",
        source: str = "",
        kinds: Sequence[str] = (),
        backlog: int = 0,
        poll_ms: int = 0,
    ) -> Iterator[StoredRecord]:
        """Follows stored records as they arrive: first the last `backlog`
        matching ones, then each new one, until the generator is closed
        (which cancels the call). `kinds` are payload names such as
        ``"json"``."""
        request = query_pb2.TailRecordsRequest(
            parser=parser,
            source=source,
            kinds=[_kind_number(kind) for kind in kinds],
            backlog=backlog,
            poll_ms=poll_ms,
        )
        call = self._query.TailRecords(request, metadata=self._metadata)
        try:
            for message in call:
                yield stored_record(message)
        finally:
            call.cancel()
