#!/usr/bin/env python3
"""Publishes N JSON order records to a Tributary mesh and waits until every
one is acknowledged (durably held by the queue)."""

import argparse
import json
import random
import sys

import tributary

REGIONS = ["eu", "us", "apac"]
ITEMS = ["tea", "coffee", "cocoa", "mate"]


def orders(count: int, seed: int, fail: set[int]):
    """`count` orders, the same ones for the same seed; those numbered in
    `fail` carry `"fail": true`."""
    rng = random.Random(seed)
    for number in range(count):
        order = {
            "order_id": f"order-{number}",
            "item": rng.choice(ITEMS),
            "region": rng.choice(REGIONS),
            "qty": rng.randint(1, 5),
            "price": round(rng.uniform(1, 20), 2),
        }
        if number in fail:
            order["fail"] = True
        yield tributary.Record(json=order)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connect", default="http://127.0.0.1:8080", help="the mesh's endpoint (default: %(default)s)")
    parser.add_argument("--count", type=int, default=1000, help="orders to publish (default: %(default)s)")
    parser.add_argument("--source", help="the records' source (default: unique per run)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated orders (default: %(default)s)")
    parser.add_argument("--fail", type=int, action="append", default=[], metavar="N", help="mark order N to fail in the example parser (repeatable)")
    parser.add_argument("--batch", type=int, default=500, help="records per request (default: %(default)s)")
    parser.add_argument("--retry-secs", type=float, default=30, help="seconds to keep retrying without progress (default: %(default)s)")
    args = parser.parse_args()

    with tributary.Client(args.connect) as client:
        publisher = client.publisher(source=args.source, batch=args.batch, retry_secs=args.retry_secs)
        try:
            result = publisher.publish(orders(args.count, args.seed, set(args.fail)))
        except tributary.PublishError as error:
            print(f"publish failed: {error}", file=sys.stderr)
            return 1
    # One JSON line, for scripts and tests.
    print(
        json.dumps(
            {
                "source": publisher.source,
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "reconnects": result.reconnects,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
