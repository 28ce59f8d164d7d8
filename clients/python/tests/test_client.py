"""The Query reads against a fake in-process Query server: paging, plain
Python values, and the requests they send."""

import datetime as dt
from concurrent import futures

import grpc
import pytest

import tributary
from tributary.records import to_proto
from tributary.v1 import query_pb2, query_pb2_grpc

MOMENT = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def stored_row(row_id):
    message = query_pb2.StoredRecord(id=row_id, parser="orders")
    message.record.CopyFrom(to_proto(tributary.Record(json={"n": row_id}, sent_at=MOMENT), "s", row_id))
    message.stored_at.FromDatetime(MOMENT)
    return message


class FakeQuery(query_pb2_grpc.QueryServicer):
    def __init__(self):
        self.requests = []

    def ListRecords(self, request, context):  # noqa: N802
        self.requests.append(request)
        # Five rows, ids 1 to 5, in pages of `limit`.
        ids = [i for i in range(1, 6) if i > request.after_id][: request.limit]
        last = ids and ids[-1] < 5
        return query_pb2.ListRecordsResponse(
            records=[stored_row(i) for i in ids], next_after_id=ids[-1] if last else 0
        )

    def GetStats(self, request, context):  # noqa: N802
        stats = query_pb2.Stats(dead_letters=2)
        stats.parsers.add(parser="orders", stored=5)
        stats.read_at.FromDatetime(MOMENT)
        return stats

    def ListDeadLetters(self, request, context):  # noqa: N802
        self.requests.append(request)
        letter = query_pb2.DeadLetter(id=9, parser="orders", error="bad", attempts=3)
        letter.record.CopyFrom(to_proto(tributary.Record(text="x"), "s", 1))
        return query_pb2.ListDeadLettersResponse(dead_letters=[letter])

    def AggregateField(self, request, context):  # noqa: N802
        self.requests.append(request)
        answer = query_pb2.AggregateFieldResponse(parser=request.parser, field=request.field, missing=1)
        answer.groups.add(group='"eu"', count=2, avg=1.5, min=1, max=2, p50=1, p95=2, p99=2)
        answer.groups.add(group="7", count=1, avg=3, min=3, max=3, p50=3, p95=3, p99=3)
        return answer

    def TailRecords(self, request, context):  # noqa: N802
        self.requests.append(request)
        for row_id in range(1, 1000):
            yield stored_row(row_id)


@pytest.fixture
def fake():
    query = FakeQuery()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    query_pb2_grpc.add_QueryServicer_to_server(query, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with tributary.Client(f"http://127.0.0.1:{port}") as client:
        yield query, client
    server.stop(None).wait()


def test_records_page_through_every_row(fake):
    query, client = fake
    rows = list(client.records(parser="orders", page_size=2))
    assert [row.id for row in rows] == [1, 2, 3, 4, 5]
    assert [r.after_id for r in query.requests] == [0, 2, 4]
    assert rows[0].record.json == {"n": 1}
    assert (rows[0].parser, rows[0].stored_at, rows[0].received_at) == ("orders", MOMENT, None)


def test_stats_and_dead_letters_are_plain_values(fake):
    _, client = fake
    assert client.stats() == tributary.Stats(parsers={"orders": 5}, dead_letters=2, read_at=MOMENT)
    (letter,) = client.dead_letters(parser="orders")
    assert (letter.id, letter.error, letter.attempts, letter.record.text) == (9, "bad", 3, "x")


def test_aggregate_field_sends_the_range_and_decodes_groups(fake):
    query, client = fake
    answer = client.aggregate_field("orders", "total", from_=MOMENT, group_by="region")
    request = query.requests[-1]
    assert getattr(request, "from").ToDatetime(tzinfo=dt.timezone.utc) == MOMENT
    assert not request.HasField("to")
    assert request.group_by == "region"
    assert [group.group for group in answer.groups] == ["eu", 7]
    assert (answer.missing, answer.groups[0].avg) == (1, 1.5)


def test_tail_yields_until_closed_and_names_kinds(fake):
    query, client = fake
    tail = client.tail(parser="orders", kinds=["json"], backlog=3)
    assert [next(tail).id for _ in range(3)] == [1, 2, 3]
    tail.close()
    assert list(query.requests[-1].kinds) == [6]


def test_an_unknown_kind_is_refused(fake):
    _, client = fake
    with pytest.raises(ValueError, match="unknown kind"):
        next(client.tail(kinds=["jsn"]))


@pytest.mark.parametrize("url", ["ftp://x:1"])
def test_an_unsupported_scheme_is_refused(url):
    with pytest.raises(ValueError, match="http:// or https://"):
        tributary.Client(url)
