"""The `tributary.v1` protos, compiled when the package is built.

`record_pb2`, `ingest_pb2`, `query_pb2`, `plugin_pb2`, `fleet_pb2` and
`coordinator_pb2`, with `*_pb2_grpc` stubs for the services.
"""
