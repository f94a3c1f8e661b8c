"""A bare gRPC server answering the edge's Execute over an edge's store, one layer at a time,
for bench/execute_grpc.py --bisect: where the edge's CPU per Execute beyond DuckDB goes.

    python bench/execute_server.py DATA_DIR MODE     # writes DATA_DIR/edge.addr

MODE, each one layer more than the one before (the same gRPC server as the edge's otherwise:
grpc.server on a thread pool of 8, one store opened as edge/main.py opens it, no sources):

- ``raw``: DuckDB answers on a cursor of the store (``execute().fetchall()``); one tiny reply;
- ``stream``: the same answer as the edge reads it, an Arrow stream (edge/arrowout.stream);
- ``read``: and cut into gRPC-sized Arrow IPC batches (edge/arrowout.read), sent as the edge does;
- ``store``: the store's own ``execute`` (the SQL gate, the deadline, the row cap, the idle release).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from pxo.common.timeutil import from_unix_us
from pxo.edge import arrowout
from pxo.edge.sources import all_tables
from pxo.edge.store import Store
from pxo.v1 import pxo_pb2, pxo_pb2_grpc

MODES = ("raw", "stream", "read", "store")


class Bare(pxo_pb2_grpc.EdgeServicer):
    def __init__(self, store: Store, mode: str) -> None:
        self.store, self.mode = store, mode

    def Execute(self, request: pxo_pb2.Fragment, context: Any) -> Iterator[pxo_pb2.ArrowBatch]:
        start, end = from_unix_us(request.start_unix_us), from_unix_us(request.end_unix_us)
        if self.mode == "store":
            for batch in self.store.execute(request.sql, start=start, end=end, row_limit=request.row_limit):
                yield pxo_pb2.ArrowBatch(ipc_stream=batch.ipc())
            return
        params = {k: v for k, v in (("start", start), ("end", end)) if f"${k}" in request.sql}
        cur = self.store._con.cursor()
        try:
            if self.mode == "raw":
                cur.execute(request.sql, params).fetchall()
            elif self.mode == "stream":
                for _array in arrowout.stream(cur, request.sql, params):
                    pass
            else:
                for batch in arrowout.read(cur, request.sql, params, self.store.row_cap, self.store._con.cursor):
                    yield pxo_pb2.ArrowBatch(ipc_stream=batch.ipc())
                return
        finally:
            cur.close()
        yield pxo_pb2.ArrowBatch(ipc_stream=b"-")


def main() -> None:
    data, mode = Path(sys.argv[1]), sys.argv[2]
    if mode not in MODES:
        raise SystemExit(f"mode: one of {', '.join(MODES)}")
    store = Store(data / "edge.duckdb", all_tables(), threads=1, memory_limit="32MB")  # edge/main.py's defaults
    store.start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pxo_pb2_grpc.add_EdgeServicer_to_server(Bare(store, mode), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    (data / "edge.addr").write_text(f"127.0.0.1:{port}\n")
    server.wait_for_termination()


if __name__ == "__main__":
    main()
