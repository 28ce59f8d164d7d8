"""Tributary's Python client: publish records, read what the parsers
stored, and serve a parser written in Python.

- :class:`Client` publishes (:meth:`Client.publish`) and reads the Query API
  (records, stats, dead letters, field aggregates, tailing).
- :class:`Record` is one record to publish or one record read back.
- :func:`serve_parser` turns a plain function into a `remote` parser
  plug-in; it returns a dict (JSON), a str (text), :data:`DROP` or
  :data:`KEEP`, or raises to report an error.
"""

from tributary.client import (
    Client,
    DeadLetter,
    FieldAggregate,
    FieldAggregation,
    Stats,
    StoredRecord,
)
from tributary.plugin import DROP, KEEP, ParserServer, serve_parser
from tributary.publisher import (
    PublishError,
    Publisher,
    PublishResult,
    RecordsRejected,
    Rejection,
)
from tributary.records import Record

__all__ = [
    "DROP",
    "KEEP",
    "Client",
    "DeadLetter",
    "FieldAggregate",
    "FieldAggregation",
    "ParserServer",
    "PublishError",
    "PublishResult",
    "Publisher",
    "Record",
    "RecordsRejected",
    "Rejection",
    "Stats",
    "StoredRecord",
    "serve_parser",
]
