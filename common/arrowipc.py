"""Arrow IPC framing: every message carries one self-contained IPC stream
(schema plus zero or one record batch), so no reader stitches bytes across
gRPC messages."""

from __future__ import annotations

import pyarrow as pa


def encode(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def encode_schema(schema: pa.Schema) -> bytes:
    """An IPC stream with the schema and no batch: how an empty answer still has columns."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema):
        pass
    data: bytes = sink.getvalue().to_pybytes()
    return data


def decode(data: bytes) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    reader = pa.ipc.open_stream(data)
    return reader.schema, list(reader)
