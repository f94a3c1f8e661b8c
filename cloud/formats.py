"""The answer formats of POST /api/v1/query: one writer interface (``AnswerWriter``), one
writer per format, and the choice by the request's Accept header (``choose``), made here
and nowhere else.

    JsonWriter    application/json (the default)   streamed: columns, the rows, the summary last
    NdjsonWriter  application/x-ndjson             streamed: {"columns"}, a {"row"} each, {"summary"} last;
                                                   a follow stream's NDJSON too (node changes, no summary)
    CsvWriter     text/csv                         read whole first: the summary goes in X-Pxo-* headers
    ArrowWriter   application/vnd.apache.arrow.stream  streamed; the summary is the last, empty, batch's
                                                   custom metadata (pxo.summary)

A query the collector refuses fails before a writer starts (an HTTP error); a collector
that fails after the rows started ends the answer with an error instead of the summary.
"""

from __future__ import annotations

import csv
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pxo.cloud.collector_client import QueryStream, columns_of, json_value, rows_of
from pxo.cloud.errors import CloudError, CollectorUnavailable, NotAcceptable

ARROW_STREAM = "application/vnd.apache.arrow.stream"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Answer:
    """An answer ready to send: its body, chunk by chunk, and the headers that go with it."""

    chunks: Iterator[bytes]
    headers: dict[str, str]


class AnswerWriter(ABC):
    """How a collector's answer becomes an HTTP body in one format."""

    media_type: ClassVar[str]  # the answer's Content-Type
    accepts: ClassVar[tuple[str, ...]]  # the Accept media ranges that choose this writer, its own first
    follow_ok: ClassVar[bool] = False  # a client that accepts this format also takes a follow stream (NDJSON)

    @abstractmethod
    def write(self, stream: QueryStream, cluster: str) -> Answer:
        """The answer to ``stream`` (a query of cluster ``cluster``)."""


def _streamed(chunks: Iterator[bytes], cluster: str) -> Answer:
    return Answer(chunks, {"X-Pxo-Cluster": cluster})


def _broken(exc: CloudError) -> dict[str, Any]:
    """An error that arrived after the answer had started: it ends the body instead of a summary."""
    error: dict[str, Any] = exc.body()["error"]
    return error


class JsonWriter(AnswerWriter):
    media_type = "application/json"
    accepts = ("application/json", "*/*", "application/*")
    follow_ok = True

    def write(self, stream: QueryStream, cluster: str) -> Answer:
        return _streamed(self._chunks(stream, cluster), cluster)

    @staticmethod
    def _chunks(stream: QueryStream, cluster: str) -> Iterator[bytes]:
        """The JSON document batch by batch; the summary (nodes, partial, truncated, range,
        approximate columns) last, or an "error" member instead when the collector's stream broke."""
        yield ('{"columns": ' + json.dumps(columns_of(stream.schema)) + ', "rows": [').encode()
        sep = ""
        try:
            for batch in stream.batches():
                parts = [json.dumps([json_value(v) for v in row]) for row in rows_of(batch)]
                if parts:
                    yield (sep + ", ".join(parts)).encode()
                    sep = ", "
        except CloudError as exc:
            yield ("], " + json.dumps({"error": _broken(exc), "cluster": cluster})[1:]).encode()
            return
        yield ("], " + json.dumps({**(stream.meta or {}), "cluster": cluster})[1:]).encode()


class NdjsonWriter(AnswerWriter):
    """{"columns", "cluster"} first; {"row": [...]} per row; {"summary": {...}} last (a query)
    or {"nodes": [...]} whenever nodes change (``follow``: a follow stream, which has no end);
    {"error": {...}} if the collector's stream breaks."""

    media_type = NDJSON
    accepts = (NDJSON, "application/jsonl")
    follow_ok = True

    def __init__(self, *, follow: bool = False) -> None:
        self.follow = follow

    def write(self, stream: QueryStream, cluster: str) -> Answer:
        return _streamed(self._lines(stream, cluster), cluster)

    def _lines(self, stream: QueryStream, cluster: str) -> Iterator[bytes]:
        yield (json.dumps({"columns": columns_of(stream.schema), "cluster": cluster}) + "\n").encode()
        try:
            for ev in stream.events():
                if isinstance(ev, list):
                    if self.follow:
                        yield (json.dumps({"nodes": ev}) + "\n").encode()
                    continue
                rows = [json.dumps({"row": [json_value(v) for v in row]}) for row in rows_of(ev)]
                yield ("\n".join(rows) + "\n").encode()
        except CloudError as exc:
            yield (json.dumps({"error": _broken(exc)}) + "\n").encode()
            return
        if self.follow:
            return
        if stream.meta is None:
            ended = CollectorUnavailable("the collector's answer ended without its summary")
            yield (json.dumps({"error": _broken(ended)}) + "\n").encode()
        else:
            yield (json.dumps({"summary": {**stream.meta, "cluster": cluster}}) + "\n").encode()


class CsvWriter(AnswerWriter):
    """The answer is read whole (bounded by the collector's caps) before anything is sent, so
    that its summary can go in headers; a collector error is then still an HTTP error."""

    media_type = "text/csv; charset=utf-8"
    accepts = ("text/csv", "text/*")
    chunk_rows = 2000

    def write(self, stream: QueryStream, cluster: str) -> Answer:
        table = stream.read_all()
        assert stream.meta is not None  # read_all ends only after the summary
        return Answer(self._chunks(table), summary_headers(stream.meta, cluster, table.num_rows))

    def _chunks(self, table: Any) -> Iterator[bytes]:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(table.column_names)
        for batch in table.to_batches(max_chunksize=self.chunk_rows):
            for row in rows_of(batch):
                w.writerow(["" if v is None else json_value(v) for v in row])
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
        if buf.tell():
            yield buf.getvalue().encode()


def summary_headers(meta: dict[str, Any], cluster: str, rows: int) -> dict[str, str]:
    bad = [n for n in meta["nodes"] if n["state"] not in ("ok", "skipped")]
    return {
        "X-Pxo-Cluster": cluster,
        "X-Pxo-Rows": str(rows),
        "X-Pxo-Partial": "true" if meta["partial"] else "false",
        "X-Pxo-Truncated": "true" if meta["truncated"] else "false",
        "X-Pxo-Nodes": ", ".join(f"{n['node']}={n['state']}" for n in meta["nodes"])[:4000],
        **({"X-Pxo-Missing-Nodes": ", ".join(n["node"] for n in bad)[:4000]} if bad else {}),
        **({"X-Pxo-Approximate-Columns": ", ".join(meta["approximate_columns"])[:4000],
            "X-Pxo-Relative-Error": f"{meta['relative_error']:g}"} if meta.get("approximate_columns") else {}),
    }


class ArrowWriter(AnswerWriter):
    """An Arrow IPC stream batch by batch; the summary is the custom metadata (key ``pxo.summary``,
    JSON) of a last batch with no rows, or ``pxo.error`` there when the collector's stream broke."""

    media_type = ARROW_STREAM
    accepts = (ARROW_STREAM,)

    def write(self, stream: QueryStream, cluster: str) -> Answer:
        return _streamed(self._chunks(stream, cluster), cluster)

    @staticmethod
    def _chunks(stream: QueryStream, cluster: str) -> Iterator[bytes]:
        import pyarrow as pa

        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, stream.schema) as writer:
            yield _drain(sink)
            try:
                for batch in stream.batches():
                    writer.write_batch(batch)
                    yield _drain(sink)
                trailer = {"pxo.summary": json.dumps({**(stream.meta or {}), "cluster": cluster})}
            except CloudError as exc:
                trailer = {"pxo.error": json.dumps(_broken(exc))}
            writer.write_batch(pa.RecordBatch.from_pylist([], schema=stream.schema), custom_metadata=trailer)
        yield _drain(sink)


def _drain(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data


WRITERS: tuple[type[AnswerWriter], ...] = (JsonWriter, NdjsonWriter, CsvWriter, ArrowWriter)


def choose(accept: str) -> type[AnswerWriter]:
    """The writer for an Accept header: the first media range listed that a writer takes
    (parameters such as q are not weighed); JSON when there is none; NotAcceptable else."""
    if not accept.strip():
        return JsonWriter
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        for writer in WRITERS:
            if media in writer.accepts:
                return writer
    offered = [w.accepts[0] for w in WRITERS]
    raise NotAcceptable(f"cannot answer in {accept!r}: ask for {', '.join(offered[:-1])} or {offered[-1]}")
