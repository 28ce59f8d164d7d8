#!/usr/bin/env python3
"""A hostile but legal Python grpcio client against the Pull contract.

Against a server that serves Ingest (for example `tributary up
--no-workloads`), with stubs compiled from the repository's protos at run
time (see peer.py), it tries what an adversarial user would:

1. Forged ack: group `victim` holds a delivery; a stream subscribed as group
   `evil` acks the victim's ack id. The server must refuse it with
   PERMISSION_DENIED on evil's stream, and when the victim's stream closes,
   the victim's next stream must get the same records again, at once.
2. Regroup: group `g1` holds an SMS delivery, subscribes again for probes
   only, and group `g2` acks the same message for itself; then `g1` nacks.
   Publishing must still work afterwards, and g1 must get its SMS back.
3. Idle group: group `typo` subscribes once and leaves; records published
   afterwards wait for it. ListGroups must show its lag, DeleteGroup must
   drop it and report what it still wanted, and ListGroups must no longer
   list it.

Usage: hostile.py --addr 127.0.0.1:PORT
Prints "hostile ok" and exits 0; on a failed check prints why and exits 1.
"""

from __future__ import annotations

import argparse
import queue
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer  # noqa: E402

TIMEOUT_S = 20.0


class Puller:
    """One Pull stream: requests go in through a queue, responses come out."""

    def __init__(self, pb, channel, group: str, kinds: list[int], deadline_ms: int = 30_000):
        self.pb = pb
        self.requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        self.requests.put(
            pb.ingest_pb2.PullRequest(
                subscribe=pb.ingest_pb2.Subscription(
                    parser=group, kinds=kinds, max_outstanding=100, ack_deadline_ms=deadline_ms
                )
            )
        )
        stub = pb.ingest_pb2_grpc.IngestStub(channel)
        self.call = stub.Pull(self._requests())
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self):
        while True:
            item = self.requests.get()
            if item is None:
                return
            yield item

    def _read(self):
        try:
            for response in self.call:
                self.responses.put(response)
        except Exception as e:  # the stream ends when we close it
            self.responses.put(e)

    def response(self, timeout: float = TIMEOUT_S):
        item = self.responses.get(timeout=timeout)
        if isinstance(item, Exception):
            raise peer.PeerFailure(f"pull stream failed: {item}")
        return item

    def delivery(self):
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            response = self.response(deadline - time.monotonic())
            if response.deliveries:
                return response.deliveries[0]
        raise peer.PeerFailure("no delivery")

    def send(self, **fields):
        self.requests.put(self.pb.ingest_pb2.PullRequest(**fields))

    def close(self):
        self.requests.put(None)
        self.call.cancel()


def check(condition: bool, what: str):
    if not condition:
        raise peer.PeerFailure(what)


def publish(pb, channel, records):
    stub = pb.ingest_pb2_grpc.IngestStub(channel)
    response = stub.PublishBatch(pb.ingest_pb2.PublishBatchRequest(records=records), timeout=TIMEOUT_S)
    check(not response.rejections, f"rejected: {response.rejections}")
    return response


def forged_ack(pb, channel, tag: str):
    text = pb.record_pb2.RECORD_KIND_TEXT
    probe = pb.record_pb2.RECORD_KIND_PROBE
    victim = Puller(pb, channel, f"victim{tag}", [text])
    evil = Puller(pb, channel, f"evil{tag}", [probe])
    publish(pb, channel, [pb.record_pb2.Record(source=f"forge{tag}", seq=0, text=pb.record_pb2.Text(body="mine"))])
    held = victim.delivery()
    evil.send(ack_ids=[held.ack_id])
    refused = evil.response()
    check(len(refused.refusals) == 1, f"no refusal: {refused}")
    check(refused.refusals[0].code == 7, f"not PERMISSION_DENIED: {refused.refusals[0]}")
    victim.close()
    replica = Puller(pb, channel, f"victim{tag}", [text])
    started = time.monotonic()
    again = replica.delivery()
    check(list(again.records) == list(held.records), "a different delivery came back")
    check(time.monotonic() - started < 10, "handed back only at the deadline")
    replica.send(ack_ids=[again.ack_id])
    replica.close()
    evil.close()


def regroup(pb, channel, tag: str):
    sms = pb.record_pb2.RECORD_KIND_SMS
    probe = pb.record_pb2.RECORD_KIND_PROBE
    g1 = Puller(pb, channel, f"g1{tag}", [sms])
    g2 = Puller(pb, channel, f"g2{tag}", [sms])
    publish(pb, channel, [pb.record_pb2.Record(source=f"sms{tag}", seq=0, sms=pb.record_pb2.SmsMessage(phone_number="15550100", body="hi"))])
    held = g1.delivery()
    g1_probes = Puller(pb, channel, f"g1{tag}", [probe])
    theirs = g2.delivery()
    g2.send(ack_ids=[theirs.ack_id])
    g1.send(nacks=[pb.ingest_pb2.Nack(ack_id=held.ack_id, error="later")])
    records = [
        pb.record_pb2.Record(source=f"after{tag}", seq=i, text=pb.record_pb2.Text(body="still works"))
        for i in range(5)
    ]
    response = publish(pb, channel, records)
    check(response.accepted == 5, f"publishing broke: {response}")
    again = g1.delivery()
    check(list(again.records) == list(held.records), "g1 lost its SMS")
    g1.send(ack_ids=[again.ack_id])
    for p in (g1, g2, g1_probes):
        p.close()


def idle_group(pb, channel, tag: str):
    stub = pb.ingest_pb2_grpc.IngestStub(channel)
    text = pb.record_pb2.RECORD_KIND_TEXT
    typo = Puller(pb, channel, f"typo{tag}", [text])
    typo.close()
    publish(pb, channel, [pb.record_pb2.Record(source=f"idle{tag}", seq=i, text=pb.record_pb2.Text(body="x")) for i in range(3)])
    groups = {g.name: g for g in stub.ListGroups(pb.ingest_pb2.ListGroupsRequest(), timeout=TIMEOUT_S).groups}
    check(f"typo{tag}" in groups, f"idle group not listed: {sorted(groups)}")
    check(groups[f"typo{tag}"].lag >= 1, f"no lag: {groups[f'typo{tag}']}")
    dropped = stub.DeleteGroup(pb.ingest_pb2.DeleteGroupRequest(group=f"typo{tag}"), timeout=TIMEOUT_S).dropped
    check(dropped >= 1, f"nothing dropped: {dropped}")
    groups = {g.name for g in stub.ListGroups(pb.ingest_pb2.ListGroupsRequest(), timeout=TIMEOUT_S).groups}
    check(f"typo{tag}" not in groups, "deleted group still listed")


def main(argv=None) -> int:
    import grpc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True)
    args = parser.parse_args(argv)
    tag = secrets.token_hex(3)
    with tempfile.TemporaryDirectory() as out:
        try:
            pb = peer.generate_stubs(peer.REPO_ROOT / "proto", Path(out))
            with grpc.insecure_channel(args.addr) as channel:
                forged_ack(pb, channel, tag)
                regroup(pb, channel, tag)
                idle_group(pb, channel, tag)
        except (peer.PeerFailure, queue.Empty) as e:
            print(f"hostile check failed: {e!r}", file=sys.stderr)
            return 1
    print("hostile ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
