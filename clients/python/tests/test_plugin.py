"""serve_parser against a real RemoteParser client over a real socket."""

import queue
import threading

import grpc
import pytest

import tributary
from tributary.records import from_struct, to_proto
from tributary.v1 import plugin_pb2, plugin_pb2_grpc


def parse(record):
    order = record["json"] if record["kind"] == "json" else None
    if order is None:
        return tributary.KEEP
    if order.get("fail"):
        raise ValueError(f"order {order['id']} says fail")
    if order.get("drop"):
        return tributary.DROP
    if order.get("as_text"):
        return f"order {order['id']}"
    if order.get("weird"):
        return 42
    return {**order, "total": order["qty"] * order["price"], "seq": record["seq"]}


@pytest.fixture
def server():
    running = tributary.serve_parser(parse, port=0, block=False)
    yield running
    running.stop()


class Worker:
    """A RemoteParser client as the parser worker drives it."""

    def __init__(self, endpoint, window):
        self.channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
        self.requests = queue.SimpleQueue()
        self.requests.put(plugin_pb2.ProcessRequest(hello=plugin_pb2.PluginHello(parser="orders", window=window)))
        self.responses = plugin_pb2_grpc.RemoteParserStub(self.channel).Process(iter(self.requests.get, None))

    def send(self, batch_id, records):
        protos = [to_proto(tributary.Record(**fields), "test", seq) for seq, fields in enumerate(records)]
        self.requests.put(plugin_pb2.ProcessRequest(batch=plugin_pb2.ProcessBatch(batch_id=batch_id, records=protos)))

    def close(self):
        self.requests.put(None)
        self.responses.cancel()
        self.channel.close()


def order(**fields):
    return {"json": {"id": "A-1", "qty": 2, "price": 2.5, **fields}}


def test_each_answer_becomes_its_result(server):
    worker = Worker(server.endpoint, window=4)
    try:
        worker.send(
            7,
            [
                order(),
                order(fail=True),
                order(drop=True),
                order(as_text=True),
                {"text": "line"},
                order(weird=True),
            ],
        )
        response = next(worker.responses)
    finally:
        worker.close()
    assert response.batch_id == 7
    kinds = [result.WhichOneof("outcome") for result in response.results]
    assert kinds == ["json", "error", "drop", "text", "keep", "error"]
    assert from_struct(response.results[0].json) == {"id": "A-1", "qty": 2, "price": 2.5, "total": 5, "seq": 0}
    assert response.results[1].error == "order A-1 says fail"
    assert response.results[3].text == "order A-1"
    assert "not int" in response.results[5].error


def test_batches_run_concurrently_and_are_answered_by_id():
    release = threading.Event()
    started = queue.SimpleQueue()

    def slow(record):
        started.put(record["seq"])
        if record["json"]["id"] == "slow":
            # Held until the fast batch has been answered: only concurrent
            # batches let that happen.
            assert release.wait(10), "the fast batch was not answered while this one ran"
        return record["json"]

    running = tributary.serve_parser(slow, port=0, block=False)
    worker = Worker(running.endpoint, window=2)
    try:
        worker.send(1, [{"json": {"id": "slow"}}])
        worker.send(2, [{"json": {"id": "fast"}}])
        first = next(worker.responses)
        release.set()
        second = next(worker.responses)
    finally:
        worker.close()
        running.stop()
    assert (first.batch_id, second.batch_id) == (2, 1)
    assert from_struct(second.results[0].json) == {"id": "slow"}


def test_a_stream_without_hello_is_refused(server):
    channel = grpc.insecure_channel(server.endpoint.removeprefix("http://"))
    batch = plugin_pb2.ProcessRequest(batch=plugin_pb2.ProcessBatch(batch_id=1))
    responses = plugin_pb2_grpc.RemoteParserStub(channel).Process(iter([batch]))
    with pytest.raises(grpc.RpcError) as refused:
        next(responses)
    channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_endpoint_names_the_bound_port(server):
    assert server.port > 0
    assert server.endpoint == f"http://127.0.0.1:{server.port}"
