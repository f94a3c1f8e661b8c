"""The node-local store: one DuckDB file, batched appends, gated reads.

Writes: sources call ``append`` (cheap, thread-safe); a writer thread commits
what arrived at most every ``flush_interval`` seconds, one transaction per
table batch. A committed batch is in DuckDB's write-ahead log, so an edge
killed with SIGKILL loses at most the batch it had not flushed yet.

Reads: each fragment runs on its own cursor (DuckDB MVCC: a read never blocks
ingest), after the SQL gate, on a connection with external access off,
extension autoload off, memory and thread limits, and configuration locked;
with a deadline (the query is interrupted) and a row cap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pxo.common import sqlgate
from pxo.common.schema import Table
from pxo.edge.errors import FragmentError, StoreError

log = logging.getLogger(__name__)

DEFAULT_ROW_CAP = 1_000_000
_FLUSH = object()  # stands for "the flush deadline passed" inside the writer


class Store:
    def __init__(
        self,
        path: Path,
        tables: Iterable[Table],
        *,
        flush_interval: float = 0.5,
        max_batch_rows: int = 50_000,
        memory_limit: str = "512MB",
        threads: int = 2,
        row_cap: int = DEFAULT_ROW_CAP,
    ) -> None:
        self.path = path
        self.tables: dict[str, Table] = {t.name: t for t in tables}
        self.flush_interval = flush_interval
        self.max_batch_rows = max_batch_rows
        self.row_cap = row_cap
        # rows, flush barriers (Events), or None to stop the writer
        self._queue: queue.Queue[tuple[str, Mapping[str, Any]] | threading.Event | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self.rows_written = 0
        self.write_error: str = ""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(
                str(path),
                config={
                    "enable_external_access": False,
                    "autoload_known_extensions": False,
                    "autoinstall_known_extensions": False,
                    "memory_limit": memory_limit,
                    "threads": threads,
                },
            )
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreError(f"the store {path} is in use by another process (another edge?)") from exc
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        for t in self.tables.values():
            self._ensure_table(t)
        self._con.execute("SET lock_configuration = true")

    def _ensure_table(self, t: Table) -> None:
        self._con.execute(t.ddl())
        existing = {r[0] for r in self._con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", [t.name]
        ).fetchall()}
        for c in t.columns:
            if c.name not in existing:  # a newer edge added a column: keep old rows
                self._con.execute(f'ALTER TABLE "{t.name}" ADD COLUMN "{c.name}" {c.type}')

    # -- ingest ----------------------------------------------------------------

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        self._queue.put((table, row))

    def _write_loop(self) -> None:
        cur = self._con.cursor()
        pending: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        count = 0
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            item: object
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _FLUSH  # the oldest pending row has waited flush_interval
            if isinstance(item, tuple):
                pending[item[0]].append(item[1])
                count += 1
                if deadline is None:
                    deadline = time.monotonic() + self.flush_interval
                if count < self.max_batch_rows and time.monotonic() < deadline:
                    continue  # a steady stream still commits every flush_interval
            if count:
                self._flush(cur, pending)
                pending, count, deadline = defaultdict(list), 0, None
            if isinstance(item, threading.Event):
                item.set()  # a flush() barrier: everything before it is committed
            elif item is None:
                break
        cur.close()

    def _flush(self, cur: duckdb.DuckDBPyConnection, pending: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        for name, rows in pending.items():
            t = self.tables[name]
            batch = pa.table({c.name: [r.get(c.name) for r in rows] for c in t.columns})
            try:
                cur.register("pxo_batch", batch)
                cur.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM pxo_batch')
                cur.unregister("pxo_batch")
                self.rows_written += len(rows)
                self.write_error = ""
            except duckdb.Error as exc:
                # Never crash the edge on a write error (e.g. a full disk): report it.
                self.write_error = f"cannot write {len(rows)} rows to {name}: {exc}"
                log.error("%s", self.write_error)

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit everything appended so far now; False if the writer did not finish in time."""
        if self._writer is None:
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    # -- reads -----------------------------------------------------------------

    def oom_kill_recorded(self, boot_id: str, kmsg_seq: int, pid: int, when: dt.datetime,
                          slack: dt.timedelta = dt.timedelta(seconds=5)) -> bool:
        """Is this kill already in the store? By its kernel log record, or by pid and time
        (a row eBPF recorded without its kernel log record)."""
        if "oom_events" not in self.tables:
            return False
        self.flush()
        cur = self._con.cursor()
        try:
            row = cur.execute(
                'SELECT 1 FROM oom_events WHERE boot_id = $boot AND (kmsg_seq = $seq OR '
                '(pid = $pid AND "time" BETWEEN $lo AND $hi)) LIMIT 1',
                {"boot": boot_id, "seq": kmsg_seq, "pid": pid, "lo": when - slack, "hi": when + slack},
            ).fetchone()
        finally:
            cur.close()
        return row is not None

    def execute(
        self,
        sql: str,
        *,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        row_limit: int = 0,
        timeout: float = 30.0,
        batch_rows: int = 65_536,
    ) -> Iterator[pa.RecordBatch]:
        """Run one gated SELECT; yields record batches (at least one, maybe empty)."""
        try:
            sqlgate.check(sql, self.tables)
        except sqlgate.SqlRefused as exc:
            raise FragmentError(f"refused: {exc}") from exc
        cap = min(row_limit or self.row_cap, self.row_cap)
        params = {}
        if "$start" in sql:
            params["start"] = start
        if "$end" in sql:
            params["end"] = end
        cur = self._con.cursor()
        timer = threading.Timer(timeout, cur.interrupt)
        timer.start()
        try:
            reader = cur.sql(sql, params=params or None).to_arrow_reader(batch_rows)
            sent = 0
            yielded = False
            for batch in reader:
                if sent + batch.num_rows > cap:
                    batch = batch.slice(0, cap - sent)
                sent += batch.num_rows
                yielded = True
                yield batch
                if sent >= cap:
                    break
            if not yielded:
                yield pa.RecordBatch.from_pylist([], schema=reader.schema)
        except duckdb.InterruptException as exc:
            raise FragmentError(f"the query ran longer than its {timeout:g} s deadline and was stopped") from exc
        except duckdb.Error as exc:
            raise FragmentError(str(exc).splitlines()[0]) from exc
        finally:
            timer.cancel()
            cur.close()

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=10)
            self._writer = None
        with contextlib.suppress(duckdb.Error):
            self._con.execute("CHECKPOINT")
        self._con.close()
