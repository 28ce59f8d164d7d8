"""The publisher against a fake in-process Ingest server: resume after a
dropped stream, refusals, and lasting failures."""

import threading
from concurrent import futures

import grpc
import pytest

import tributary
from tributary.v1 import ingest_pb2, ingest_pb2_grpc


class FakeIngest(ingest_pb2_grpc.IngestServicer):
    """Keeps what it acknowledged by key, as the queue dedups. Its hooks
    decide, per request, to break the stream or refuse records."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stored = {}
        self.requests = 0
        self.streams = 0
        #: Break the stream at these request numbers, after keeping their
        #: records and before answering.
        self.break_at = set()
        #: Refuse every record as unavailable at these request numbers.
        self.refuse_at = set()
        #: Reject the record with this seq as malformed.
        self.malformed_seq = None
        self.abort_with = None

    def Publish(self, request_iterator, context):  # noqa: N802
        with self.lock:
            self.streams += 1
        if self.abort_with:
            context.abort(self.abort_with, "no")
        for request in request_iterator:
            with self.lock:
                self.requests += 1
                number = self.requests
            response = ingest_pb2.PublishResponse(batch_id=request.batch_id)
            for index, record in enumerate(request.records):
                if number in self.refuse_at:
                    response.rejections.add(index=index, seq=record.seq, code=14, reason="queue down")
                    response.rejected += 1
                elif record.seq == self.malformed_seq:
                    response.rejections.add(index=index, seq=record.seq, code=3, reason="malformed")
                    response.rejected += 1
                else:
                    with self.lock:
                        key = (record.source, record.seq)
                        if key in self.stored:
                            response.duplicates += 1
                        else:
                            self.stored[key] = record
                            response.accepted += 1
            if number in self.break_at:
                # The records are held, but the answer is lost with the stream.
                context.abort(grpc.StatusCode.UNAVAILABLE, "ingest server going away")
            yield response


@pytest.fixture
def ingest():
    fake = FakeIngest()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    ingest_pb2_grpc.add_IngestServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    server.stop(None).wait()


def orders(n):
    return ({"json": {"id": i, "item": "tea"}} for i in range(n))


def test_every_record_is_acknowledged_once_in_batches_within_the_window(ingest):
    with tributary.Client(ingest.url) as client:
        result = client.publish(orders(1000), source="p", batch=100, window=300)
    assert (result.accepted, result.duplicates, result.rejected, result.reconnects) == (1000, 0, 0, 0)
    assert sorted(seq for _, seq in ingest.stored) == list(range(1000))
    assert ingest.requests == 10
    assert ingest.stored[("p", 7)].json["id"] == 7


def test_a_dropped_stream_resumes_with_the_unacknowledged_batches(ingest):
    # The fourth request's records are kept but its answer is lost with the
    # stream: the batches in flight then are sent again on a new stream,
    # with the same keys, and the kept ones come back as duplicates.
    ingest.break_at = {4}
    with tributary.Client(ingest.url) as client:
        result = client.publish(orders(1000), source="p", batch=100, window=300)
    assert ingest.streams == 2
    assert result.reconnects == 1
    assert sorted(seq for _, seq in ingest.stored) == list(range(1000)), "every record once"
    assert (result.accepted, result.duplicates) == (900, 100)


def test_records_refused_as_unavailable_are_sent_again(ingest):
    ingest.refuse_at = {1, 2}
    with tributary.Client(ingest.url) as client:
        result = client.publish(orders(50), source="p", batch=50, window=50)
    assert result.retried == 100
    assert result.accepted == 50
    assert sorted(seq for _, seq in ingest.stored) == list(range(50))


def test_final_rejections_raise_after_the_rest_is_acknowledged(ingest):
    ingest.malformed_seq = 3
    with tributary.Client(ingest.url) as client, pytest.raises(tributary.RecordsRejected) as raised:
        client.publish(orders(10), source="p", batch=4, window=8)
    assert raised.value.result.accepted == 9
    assert raised.value.result.rejections[0].seq == 3
    assert len(ingest.stored) == 9


def test_a_lasting_failure_fails_at_once(ingest):
    ingest.abort_with = grpc.StatusCode.UNAUTHENTICATED
    with tributary.Client(ingest.url) as client, pytest.raises(tributary.PublishError, match="UNAUTHENTICATED"):
        client.publish(orders(10), retry_secs=60)
    assert ingest.streams == 1


def test_an_unreachable_server_is_given_up_on_after_the_retry_time():
    with tributary.Client("http://127.0.0.1:1") as client, pytest.raises(tributary.PublishError, match="gave up"):
        client.publish(orders(1), retry_secs=0.5)


def test_records_of_the_publishers_own_source_count_up_from_zero(ingest):
    with tributary.Client(ingest.url) as client:
        publisher = client.publisher()
        publisher.publish(orders(3))
        publisher.publish([tributary.Record(text="more")])
        publisher.publish([tributary.Record(text="own", source="mine", seq=9)])
    assert sorted(ingest.stored) == sorted(
        [(publisher.source, seq) for seq in range(4)] + [("mine", 9)]
    )


def test_a_seq_without_a_source_is_refused(ingest):
    with tributary.Client(ingest.url) as client, pytest.raises(ValueError, match="source"):
        client.publish([{"text": "x", "seq": 1}])
