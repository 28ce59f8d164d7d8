#!/usr/bin/env python3
"""A Python gRPC peer for Tributary: a client that no Rust code of ours wrote.

It compiles the repository's .proto files with grpc_tools.protoc at run time
(into a temporary directory), then, against one server that serves both the
Ingest and Query services:

1. publishes N text records from a fresh source on the bidi stream
   tributary.v1.Ingest/Publish, in batches of 100 (batch ids 0, 1, ...), and
   checks that every batch is echoed in order, fully accepted, never rejected;
2. polls tributary.v1.Query/GetStats every 100 ms (up to 30 s) until parser
   "raw" has stored them;
3. calls tributary.v1.Query/ListRecords for parser "raw" and that source and
   checks that exactly min(N, 1000) records come back, all from the source,
   with distinct seqs in 0..N-1.

Usage:
    peer.py --addr 127.0.0.1:PORT [--count N]
    peer.py --stubs-only          # only generate and import the stubs

Prints a one-line summary and exits 0; on any failure prints the reason to
stderr and exits 1. Needs grpcio, grpcio-tools and protobuf (scripts/tools.sh
installs them; run with $TRIBUTARY_PYTHON).
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_FILES = [
    "google/api/http.proto",
    "google/api/annotations.proto",
    "tributary/v1/record.proto",
    "tributary/v1/ingest.proto",
    "tributary/v1/coordinator.proto",
    "tributary/v1/fleet.proto",  # query.proto's dashboard carries the fleet status
    "tributary/v1/query.proto",
]
BATCH_SIZE = 100
PARSER = "raw"
LIST_LIMIT = 1000
POLL_INTERVAL_S = 0.1
POLL_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 60.0


class PeerFailure(Exception):
    """A check failed; the message says which."""


def _well_known_proto_dir() -> str:
    """grpc_tools' bundled include dir (google/protobuf/*.proto)."""
    try:
        from importlib.resources import files

        return str(files("grpc_tools") / "_proto")
    except (ImportError, TypeError):  # pragma: no cover - very old Pythons
        import grpc_tools

        return os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")


def generate_stubs(proto_dir: Path, out_dir: Path) -> SimpleNamespace:
    """Compiles PROTO_FILES into out_dir and imports the generated modules."""
    from grpc_tools import protoc

    for rel in PROTO_FILES:
        if not (proto_dir / rel).is_file():
            raise PeerFailure(f"missing proto file {proto_dir / rel}")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{_well_known_proto_dir()}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    # protoc resolves the file names against the include paths.
    rc = protoc.main(args)
    if rc != 0:
        raise PeerFailure(f"grpc_tools.protoc failed with exit code {rc}: {' '.join(args)}")

    # The generated modules import each other as `tributary.v1.x_pb2` and
    # `google.api.x_pb2`; `google` is a namespace package shared with protobuf.
    sys.path.insert(0, str(out_dir))
    importlib.invalidate_caches()
    mods = {
        name: importlib.import_module(f"tributary.v1.{name}")
        for name in (
            "record_pb2",
            "ingest_pb2",
            "ingest_pb2_grpc",
            "query_pb2",
            "query_pb2_grpc",
            "coordinator_pb2",
            "coordinator_pb2_grpc",
        )
    }
    from google.protobuf import timestamp_pb2

    mods["timestamp_pb2"] = timestamp_pb2
    return SimpleNamespace(**mods)


def _now(pb: SimpleNamespace):
    ts = pb.timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def publish(pb: SimpleNamespace, channel, source: str, count: int) -> int:
    """Publishes `count` records on one Publish stream; returns batches sent."""
    import grpc

    batches = []
    for batch_id, start in enumerate(range(0, count, BATCH_SIZE)):
        records = [
            pb.record_pb2.Record(
                source=source,
                seq=seq,
                sent_at=_now(pb),
                text=pb.record_pb2.Text(body=f"python peer record {seq} from {source}"),
            )
            for seq in range(start, min(start + BATCH_SIZE, count))
        ]
        batches.append(pb.ingest_pb2.PublishRequest(batch_id=batch_id, records=records))

    stub = pb.ingest_pb2_grpc.IngestStub(channel)
    accepted = 0
    received = 0
    try:
        responses = stub.Publish(iter(batches), timeout=RPC_TIMEOUT_S, wait_for_ready=True)
        for resp in responses:
            if received >= len(batches):
                raise PeerFailure(
                    f"Publish: got more responses than the {len(batches)} batches sent "
                    f"(extra batch_id={resp.batch_id})"
                )
            want_id = batches[received].batch_id
            size = len(batches[received].records)
            if resp.batch_id != want_id:
                raise PeerFailure(
                    f"Publish: response {received} has batch_id={resp.batch_id}, expected {want_id}"
                )
            if resp.rejections:
                first = resp.rejections[0]
                raise PeerFailure(
                    f"Publish: batch {want_id} had {len(resp.rejections)} rejection(s); first: "
                    f"index={first.index} seq={first.seq} code={first.code} reason={first.reason!r}"
                )
            if resp.accepted + resp.duplicates != size:
                raise PeerFailure(
                    f"Publish: batch {want_id} of {size} records answered accepted={resp.accepted} "
                    f"duplicates={resp.duplicates}"
                )
            accepted += resp.accepted
            received += 1
    except grpc.RpcError as err:
        raise PeerFailure(
            f"Publish failed after {received} of {len(batches)} responses: "
            f"{err.code()} {err.details()}"
        ) from None
    if received != len(batches):
        raise PeerFailure(f"Publish: stream ended after {received} of {len(batches)} responses")
    if accepted != count:
        raise PeerFailure(f"Publish: sum(accepted)={accepted}, expected {count}")
    return len(batches)


def raw_stored(pb: SimpleNamespace, stub) -> int:
    stats = stub.GetStats(pb.query_pb2.GetStatsRequest(), timeout=10, wait_for_ready=True)
    for entry in stats.parsers:
        if entry.parser == PARSER:
            return entry.stored
    return 0


def wait_stored(pb: SimpleNamespace, stub, target: int, deadline: float) -> int:
    """Polls GetStats until parser "raw" has stored >= target, or fails at deadline."""
    import grpc

    last, last_err = None, None
    while True:
        try:
            last = raw_stored(pb, stub)
            last_err = None
            if last >= target:
                return last
        except grpc.RpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise PeerFailure(f"GetStats failed: {err.code()} {err.details()}") from None
            last_err = f"{err.code()} {err.details()}"
        if time.monotonic() >= deadline:
            raise PeerFailure(
                f"GetStats: parser {PARSER!r} stored={last} after {POLL_TIMEOUT_S:.0f} s, "
                f"expected >= {target}" + (f" (last error: {last_err})" if last_err else "")
            )
        time.sleep(POLL_INTERVAL_S)


def check_listed(pb: SimpleNamespace, stub, source: str, count: int, deadline: float) -> int:
    """ListRecords for (raw, source): exactly min(count, 1000), distinct seqs."""
    import grpc

    want = min(count, LIST_LIMIT)
    req = pb.query_pb2.ListRecordsRequest(parser=PARSER, source=source, limit=LIST_LIMIT)
    while True:
        try:
            resp = stub.ListRecords(req, timeout=10, wait_for_ready=True)
        except grpc.RpcError as err:
            raise PeerFailure(f"ListRecords failed: {err.code()} {err.details()}") from None
        got = len(resp.records)
        # Fewer than expected can only mean "not stored yet": retry until the
        # deadline. Anything else is judged at once.
        if got >= want or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)

    if got != want:
        raise PeerFailure(f"ListRecords: got {got} records for source {source!r}, expected {want}")
    seqs = set()
    for i, stored in enumerate(resp.records):
        rec = stored.record
        if rec.source != source:
            raise PeerFailure(
                f"ListRecords: record {i} (id={stored.id}) has source {rec.source!r}, expected {source!r}"
            )
        if stored.parser and stored.parser != PARSER:
            raise PeerFailure(f"ListRecords: record {i} has parser {stored.parser!r}, expected {PARSER!r}")
        if rec.seq in seqs:
            raise PeerFailure(f"ListRecords: seq {rec.seq} appears more than once")
        if rec.seq >= count:
            raise PeerFailure(f"ListRecords: seq {rec.seq} was never sent (sent 0..{count - 1})")
        seqs.add(rec.seq)
    return got


def _channel(addr: str, tls_ca: Path | None):
    import grpc

    if tls_ca is None:
        return grpc.insecure_channel(addr)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
    return grpc.secure_channel(addr, credentials)


def run(addr: str, count: int, proto_dir: Path, tls_ca: Path | None = None) -> str:
    import grpc

    with tempfile.TemporaryDirectory(prefix="tributary-peer-") as tmp:
        pb = generate_stubs(proto_dir, Path(tmp))
        source = f"python-peer-{secrets.token_hex(8)}"
        with _channel(addr, tls_ca) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=10)
            except grpc.FutureTimeoutError:
                raise PeerFailure(f"could not connect to {addr} within 10 s") from None

            query = pb.query_pb2_grpc.QueryStub(channel)
            # What "raw" held before us, so that older data cannot satisfy the wait.
            try:
                baseline = raw_stored(pb, query)
            except grpc.RpcError as err:
                raise PeerFailure(f"GetStats failed: {err.code()} {err.details()}") from None

            started = time.monotonic()
            batches = publish(pb, channel, source, count)
            published = time.monotonic()

            deadline = published + POLL_TIMEOUT_S
            stored = wait_stored(pb, query, baseline + count, deadline)
            listed = check_listed(pb, query, source, count, deadline)
            done = time.monotonic()

    return (
        f"peer ok: addr={addr} source={source} published={count} in {batches} batches "
        f"({published - started:.2f} s), raw stored {baseline}->{stored}, "
        f"listed={listed} distinct ({done - published:.2f} s to store)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", help="host:port of a server with Ingest and Query, e.g. 127.0.0.1:50051")
    ap.add_argument("--count", type=int, default=1000, help="records to publish (default 1000)")
    ap.add_argument("--proto-dir", type=Path, default=REPO_ROOT / "proto", help=argparse.SUPPRESS)
    ap.add_argument("--tls-ca", type=Path, help="PEM CA to trust: connect over TLS")
    ap.add_argument(
        "--stubs-only",
        action="store_true",
        help="only generate and import the stubs, then exit",
    )
    args = ap.parse_args(argv)

    try:
        if args.stubs_only:
            with tempfile.TemporaryDirectory(prefix="tributary-peer-") as tmp:
                pb = generate_stubs(args.proto_dir, Path(tmp))
                services = [
                    s.full_name
                    for m in (pb.ingest_pb2, pb.query_pb2, pb.coordinator_pb2)
                    for s in m.DESCRIPTOR.services_by_name.values()
                ]
            print(f"peer stubs ok: {', '.join(services)}")
            return 0
        if not args.addr:
            ap.error("--addr is required")
        if args.count < 1:
            ap.error("--count must be at least 1")
        print(run(args.addr, args.count, args.proto_dir, args.tls_ca))
        return 0
    except PeerFailure as err:
        print(f"peer.py: FAIL: {err}", file=sys.stderr)
        return 1
    except ImportError as err:
        print(
            f"peer.py: FAIL: {err} (run with the tools venv: source scripts/tools.sh; "
            f'"$TRIBUTARY_PYTHON" tests/peer/peer.py ...)',
            file=sys.stderr,
        )
        return 1
    except Exception as err:  # any other surprise is a failure too, with its type
        print(f"peer.py: FAIL: unexpected {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
