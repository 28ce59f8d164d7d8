"""An OTLP/gRPC trace receiver that accepts every export and counts the
bytes received, logging a line per minute. It needs no generated code: the
empty ExportTraceServiceResponse encodes as zero bytes."""

import signal
import sys
import threading
import time
from concurrent import futures

import grpc

received = {"exports": 0, "bytes": 0}
lock = threading.Lock()


def export(request: bytes, context) -> bytes:
    with lock:
        received["exports"] += 1
        received["bytes"] += len(request)
    return b""


def main() -> None:
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("0.0.0.0:4317")
    server.start()
    # As a container's PID 1, Python would ignore SIGTERM without a handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("otlp receiver listening on 0.0.0.0:4317", flush=True)
    while True:
        time.sleep(60)
        with lock:
            print(f"received {received['exports']} exports, {received['bytes']} bytes", flush=True)


if __name__ == "__main__":
    sys.exit(main())
