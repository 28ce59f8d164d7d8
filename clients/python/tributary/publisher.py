"""Publishing over `Ingest.Publish`, with the Rust publisher's promise.

- **Window.** Records go in batches of at most ``batch``; a new batch is
  sent only while fewer than ``window`` records are unacknowledged, so
  memory stays bounded whatever the input's length.
- **Acks.** A record is acknowledged (accepted or duplicate) only once the
  queue holds it durably. :meth:`Publisher.publish` returns when every
  record is acknowledged.
- **Resume.** Each record's ``(source, seq)`` is its idempotency key: the
  queue drops a republished key and the store writes each key once. So when
  the stream breaks, the publisher reconnects after a back-off and sends
  every unanswered batch again, in order, with the same keys, and nothing
  is stored twice. A cause that waiting cannot heal (a refused token, an
  unknown method, a batch over the server's limit) fails at once; other
  failures give up after ``retry_secs`` without progress.
- **Refusals.** Records refused as UNAVAILABLE (the queue is down) are
  held and sent again after the back-off; other rejections are final and
  raise :class:`RecordsRejected` once everything else is answered.
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc

from tributary.records import Record, to_proto
from tributary.v1 import ingest_pb2, ingest_pb2_grpc, record_pb2

#: Records per request, at most (the Rust publisher's default).
DEFAULT_BATCH = 500
#: Records sent and not yet acknowledged, at most.
DEFAULT_WINDOW = 20_000
#: Seconds without progress before giving up. Below the queue's dedupe
#: horizon, so that a republished record is still known.
DEFAULT_RETRY_SECS = 30.0

#: Status codes that waiting cannot heal: the stream fails at once.
LASTING = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}

#: `Rejection.code` of a record the queue could not take for now.
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


class PublishError(Exception):
    """The publisher stopped before every record was answered."""


@dataclass
class Rejection:
    """A record refused for good, and why."""

    source: str
    seq: int
    #: A gRPC status code number (3 malformed, 8 oversized).
    code: int
    reason: str


@dataclass
class PublishResult:
    """What became of the records of one :meth:`Publisher.publish`."""

    #: Records durably accepted for the first time.
    accepted: int = 0
    #: Records the queue already held; acknowledged too.
    duplicates: int = 0
    #: Records refused for good.
    rejected: int = 0
    #: Streams re-opened after a failure.
    reconnects: int = 0
    #: Records refused as unavailable and sent again.
    retried: int = 0
    #: The first rejections (at most 100).
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def acknowledged(self) -> int:
        """Records acknowledged: accepted or duplicate."""
        return self.accepted + self.duplicates


class RecordsRejected(PublishError):
    """Some records were refused for good; the others are acknowledged."""

    def __init__(self, result: PublishResult) -> None:
        first = result.rejections[0] if result.rejections else None
        detail = f"; first: seq {first.seq}: {first.reason}" if first else ""
        super().__init__(f"{result.rejected} records rejected{detail}")
        self.result = result


class _Broken(Exception):
    """The stream broke; the publisher reconnects unless it is lasting."""

    def __init__(self, cause: str, lasting: bool = False) -> None:
        super().__init__(cause)
        self.lasting = lasting


def default_source() -> str:
    """A source unique to this producer instance: host, process and start
    time, so that a restarted producer never reuses a key."""
    return f"python-{socket.gethostname()}-{os.getpid()}-{time.time_ns() // 1_000_000}"


class _Backoff:
    """Doubling waits from 100 ms up to 5 s, as the Rust clients' back-off."""

    def __init__(self, first: float = 0.1, most: float = 5.0) -> None:
        self.first = first
        self.most = most
        self.wait = first

    def next_wait(self) -> float:
        wait = self.wait
        self.wait = min(self.wait * 2, self.most)
        return wait

    def reset(self) -> None:
        self.wait = self.first


class _Outbox:
    """The unanswered batches, which outlive a broken stream."""

    def __init__(self) -> None:
        self.unacked: OrderedDict[int, list[record_pb2.Record]] = OrderedDict()
        self.unacked_records = 0
        self.next_batch = 0
        #: Batches of refused records waiting out their back-off.
        self.held: list[int] = []
        self.retry_at: float | None = None

    def add(self, records: list[record_pb2.Record]) -> int:
        batch_id = self.next_batch
        self.next_batch += 1
        self.unacked[batch_id] = records
        self.unacked_records += len(records)
        return batch_id

    def request(self, batch_id: int) -> ingest_pb2.PublishRequest:
        return ingest_pb2.PublishRequest(batch_id=batch_id, records=self.unacked[batch_id])

    def settle(self, response: ingest_pb2.PublishResponse, result: PublishResult) -> bool:
        """Applies one answer; True when it acknowledged anything."""
        records = self.unacked.pop(response.batch_id, None)
        if records is None:
            return False
        self.unacked_records -= len(records)
        result.accepted += response.accepted
        result.duplicates += response.duplicates
        retry = []
        listed = 0
        for rejection in response.rejections:
            listed += 1
            if rejection.code == _UNAVAILABLE and rejection.index < len(records):
                retry.append(records[rejection.index])
                continue
            result.rejected += 1
            if len(result.rejections) < 100:
                result.rejections.append(
                    Rejection(rejection.source, rejection.seq, rejection.code, rejection.reason)
                )
        # Final rejections beyond the first 1,000 are counted, not listed.
        result.rejected += max(0, response.rejected - listed)
        if retry:
            result.retried += len(retry)
            self.held.append(self.add(retry))
        return response.accepted + response.duplicates > 0


class Publisher:
    """Publishes records over one channel to an ingest server (or
    `tributary up`, or Envoy). Reusable: each :meth:`publish` call answers
    for its own records."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        source: str | None = None,
        batch: int = DEFAULT_BATCH,
        window: int = DEFAULT_WINDOW,
        retry_secs: float = DEFAULT_RETRY_SECS,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if window < batch:
            raise ValueError("window must be at least batch")
        self._stub = ingest_pb2_grpc.IngestStub(channel)
        #: The source given to records that carry none.
        self.source = source or default_source()
        self._seq = itertools.count()
        self.batch = batch
        self.window = window
        self.retry_secs = retry_secs
        self._metadata = metadata

    def publish(self, records: Iterable[Record | dict]) -> PublishResult:
        """Publishes `records` (:class:`Record` values, or dicts of its
        fields such as ``{"json": {...}}``) and returns once every one is
        acknowledged. Raises :class:`RecordsRejected` if any was refused for
        good, :class:`PublishError` if the mesh stayed unreachable."""
        result = PublishResult()
        outbox = _Outbox()
        batches = self._batches(records)
        input_done = False
        failing_since: float | None = None
        reconnect = _Backoff()
        while True:
            answered = result.acknowledged + result.rejected
            try:
                input_done = self._stream(batches, input_done, outbox, result)
                break
            except _Broken as broken:
                if broken.lasting:
                    raise PublishError(f"cannot publish: {broken}") from None
                now = time.monotonic()
                if result.acknowledged + result.rejected > answered:
                    # The stream made progress before it broke.
                    failing_since = None
                    reconnect.reset()
                failing_since = failing_since or now
                if now - failing_since >= self.retry_secs:
                    raise PublishError(
                        f"gave up after {self.retry_secs:g} s of failures "
                        f"({outbox.unacked_records} records unacknowledged): {broken}"
                    ) from None
                time.sleep(reconnect.next_wait())
                result.reconnects += 1
        if result.rejected:
            raise RecordsRejected(result)
        return result

    def _batches(self, records: Iterable[Record | dict]) -> Iterator[list[record_pb2.Record]]:
        """The input as batches of protos, keyed as they are taken."""
        batch: list[record_pb2.Record] = []
        for record in records:
            if isinstance(record, dict):
                record = Record(**record)
            if record.source is None:
                if record.seq is not None:
                    raise ValueError("a record with a seq needs its source too")
                key = (self.source, next(self._seq))
            elif record.seq is None:
                raise ValueError(f"record of source {record.source!r} has no seq")
            else:
                key = (record.source, record.seq)
            batch.append(to_proto(record, *key))
            if len(batch) == self.batch:
                yield batch
                batch = []
        if batch:
            yield batch

    def _stream(
        self,
        batches: Iterator[list[record_pb2.Record]],
        input_done: bool,
        outbox: _Outbox,
        result: PublishResult,
    ) -> bool:
        """One publish stream: everything unanswered goes first, then new
        batches within the window, until the input is done and answered.
        Raises :class:`_Broken` when the stream fails."""
        requests: queue.SimpleQueue = queue.SimpleQueue()
        closed = object()

        def outgoing() -> Iterator[ingest_pb2.PublishRequest]:
            while (request := requests.get()) is not closed:
                yield request

        # A new stream starts over: held batches go again at once too, and
        # the answers tell whether the queue is back.
        outbox.held.clear()
        outbox.retry_at = None
        for batch_id in outbox.unacked:
            requests.put(outbox.request(batch_id))
        in_flight = len(outbox.unacked)
        refusals = _Backoff()
        refused_since: float | None = None
        responses = self._stub.Publish(outgoing(), metadata=self._metadata)
        try:
            while True:
                while not input_done and outbox.unacked_records + self.batch <= self.window:
                    try:
                        records = next(batches)
                    except StopIteration:
                        input_done = True
                        break
                    requests.put(outbox.request(outbox.add(records)))
                    in_flight += 1
                if outbox.held and outbox.retry_at is None:
                    outbox.retry_at = time.monotonic() + refusals.next_wait()
                if outbox.retry_at is not None and (
                    in_flight == 0 or time.monotonic() >= outbox.retry_at
                ):
                    time.sleep(max(0.0, outbox.retry_at - time.monotonic()))
                    for batch_id in outbox.held:
                        requests.put(outbox.request(batch_id))
                        in_flight += 1
                    outbox.held.clear()
                    outbox.retry_at = None
                if input_done and not outbox.unacked:
                    requests.put(closed)
                    for _ in responses:
                        pass
                    return True
                try:
                    response = next(responses)
                except StopIteration:
                    raise _Broken("the server ended the publish stream") from None
                in_flight -= 1
                if outbox.settle(response, result):
                    refusals.reset()
                    refused_since = None
                elif outbox.held:
                    refused_since = refused_since or time.monotonic()
                    if time.monotonic() - refused_since >= self.retry_secs:
                        raise PublishError(
                            f"gave up after {self.retry_secs:g} s of records refused as "
                            f"unavailable ({outbox.unacked_records} unacknowledged)"
                        )
        except grpc.RpcError as error:
            code = error.code()
            raise _Broken(
                f"{code.name if code else 'UNKNOWN'}: {error.details()}",
                lasting=code in LASTING,
            ) from None
        finally:
            requests.put(closed)
            responses.cancel()
