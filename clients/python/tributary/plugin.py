"""A parser written as a plain Python function, served as a `remote` parser
plug-in (the `RemoteParser` service of `plugin.proto`).

The function takes one record as a dict (see :meth:`Record.to_dict`) and
returns what to store:

- a dict: the record is stored with it as its JSON payload;
- a str: stored as text;
- :data:`DROP`: acknowledged and not stored;
- :data:`KEEP`: stored as delivered.

Raising an exception reports an error result with the exception's
message: the worker retries the record and dead-letters it after
`--max-attempts`. Anything else returned is an error too.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from tributary.records import from_proto, to_struct
from tributary.v1 import plugin_pb2, plugin_pb2_grpc

log = logging.getLogger(__name__)

#: Streams served at once (one per parser worker); each holds a thread.
DEFAULT_STREAMS = 32
#: Batches processed at once per stream when the hello's window is larger.
MAX_WINDOW = 64


class _Outcome:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"tributary.{self.name}"


#: Return it to acknowledge a record without storing it.
DROP = _Outcome("DROP")
#: Return it to store a record as it was delivered.
KEEP = _Outcome("KEEP")

ParserFn = Callable[[dict[str, Any]], Any]


def result_of(fn: ParserFn, record: Any) -> plugin_pb2.ProcessResult:
    """Runs `fn` on one record proto and turns its answer into a result."""
    try:
        answer = fn(from_proto(record).to_dict())
        if answer is DROP:
            return plugin_pb2.ProcessResult(drop=plugin_pb2.Drop())
        if answer is KEEP:
            return plugin_pb2.ProcessResult(keep=plugin_pb2.Keep())
        if isinstance(answer, str):
            return plugin_pb2.ProcessResult(text=answer)
        if isinstance(answer, dict):
            return plugin_pb2.ProcessResult(json=to_struct(answer))
        raise TypeError(
            f"a parser returns a dict, a str, tributary.DROP or tributary.KEEP, "
            f"not {type(answer).__name__}"
        )
    except Exception as error:  # noqa: BLE001 - any failure is the record's error
        return plugin_pb2.ProcessResult(error=str(error) or type(error).__name__)


def answer(fn: ParserFn, batch: plugin_pb2.ProcessBatch) -> plugin_pb2.ProcessResponse:
    """One result per record of `batch`, in its order."""
    return plugin_pb2.ProcessResponse(
        batch_id=batch.batch_id, results=[result_of(fn, record) for record in batch.records]
    )


class _Servicer(plugin_pb2_grpc.RemoteParserServicer):
    def __init__(self, fn: ParserFn) -> None:
        self.fn = fn

    def Process(  # noqa: N802 - the gRPC method's name
        self, request_iterator: Iterator[plugin_pb2.ProcessRequest], context: grpc.ServicerContext
    ) -> Iterator[plugin_pb2.ProcessResponse]:
        first = next(request_iterator, None)
        if first is None or not first.HasField("hello"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello")
        window = max(1, min(first.hello.window, MAX_WINDOW))
        log.info("worker of %r connected (window %d)", first.hello.parser, window)
        answers: queue.SimpleQueue = queue.SimpleQueue()
        done = object()

        def read() -> None:
            # Batches run on a pool as wide as the window: the worker sends
            # no more than that unanswered, so none waits for a thread.
            with ThreadPoolExecutor(window, thread_name_prefix="tributary-batch") as pool:
                try:
                    for request in request_iterator:
                        if request.HasField("batch"):
                            pool.submit(lambda b=request.batch: answers.put(answer(self.fn, b)))
                except grpc.RpcError:
                    pass  # the worker went away; its batches come again elsewhere
                except Exception:  # noqa: BLE001 - log, then end the stream
                    log.exception("reading the worker's stream failed")
            answers.put(done)

        threading.Thread(target=read, name="tributary-plugin-reader", daemon=True).start()
        while (response := answers.get()) is not done:
            yield response


class ParserServer:
    """A running plug-in server: its `port`, :meth:`wait` and :meth:`stop`."""

    def __init__(self, server: grpc.Server, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port

    @property
    def endpoint(self) -> str:
        """The URL to put in the remote parser's spec."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def wait(self) -> None:
        """Blocks until the server stops."""
        self._server.wait_for_termination()

    def stop(self, grace: float | None = None) -> None:
        """Stops serving; open streams end after `grace` seconds."""
        self._server.stop(grace).wait()


def serve_parser(
    fn: ParserFn,
    port: int = 50051,
    host: str = "127.0.0.1",
    *,
    block: bool = True,
    streams: int = DEFAULT_STREAMS,
) -> ParserServer:
    """Serves `fn` as a remote parser on `host:port` (port 0 picks a free
    one). With `block` (the default) it serves until interrupted; otherwise
    it returns the running :class:`ParserServer` at once."""
    server = grpc.server(ThreadPoolExecutor(streams, thread_name_prefix="tributary-plugin"))
    plugin_pb2_grpc.add_RemoteParserServicer_to_server(_Servicer(fn), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    running = ParserServer(server, host, bound)
    if block:
        try:
            running.wait()
        except KeyboardInterrupt:
            running.stop(grace=1.0)
    return running
