#!/usr/bin/env python3
"""A parser plug-in in Python: adds each order's total, upper-cases its item,
and fails on an order whose `fail` field is true (that record is retried,
then dead-lettered with this message)."""

import argparse

import tributary


def parse(record):
    if record["kind"] != "json":
        return tributary.KEEP
    order = record["json"]
    if order.get("fail"):
        raise ValueError(f"order {order.get('order_id')} is marked to fail")
    order["total"] = round(order["qty"] * order["price"], 2)
    order["item"] = order["item"].upper()
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=50051, help="port to listen on; 0 picks one (default: %(default)s)")
    args = parser.parse_args()
    server = tributary.serve_parser(parse, port=args.port, host=args.host, block=False)
    # The first line names the endpoint, for the remote parser's spec.
    print(f"listening on {server.endpoint}", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop(grace=1.0)


if __name__ == "__main__":
    main()
