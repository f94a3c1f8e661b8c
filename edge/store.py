"""The node-local store: one DuckDB file, batched appends, gated reads.

Writes: sources call ``append`` (cheap, thread-safe); a writer thread commits
what arrived at most every ``flush_interval`` seconds, one transaction per
table batch. A committed batch is in DuckDB's write-ahead log, so an edge
killed with SIGKILL loses at most the batch it had not flushed yet.

Retention: every ``retention_interval`` the writer deletes rows older than
their table's age limit, then the oldest rows of the biggest table while the
store holds more than ``max_bytes``. A failed write (a full disk) is reported
in the store's status and retried; the edge does not crash.

Reads: each fragment runs on its own cursor (DuckDB MVCC: a read never blocks
ingest), after the SQL gate, on a connection with external access off,
extension autoload off, memory and thread limits, and configuration locked;
with a deadline (the query is interrupted) and a row cap.

Follow (``pxo query --follow``): ``follow`` subscribes to one table; after
each commit the writer hands the committed rows, as Arrow, to every
subscriber of that table (a bounded queue each: the writer never waits for a
reader; a subscriber that falls behind by more than its bound is ended with
"follower too slow, N rows dropped"). The subscriber's own thread runs the
gated fragment over those rows only, in a small hardened in-memory DuckDB
(never on the writer's connection). A backlog of stored rows is read from a
snapshot pinned under the same lock the writer holds to commit and publish,
so no row comes twice and none falls between the backlog and the live rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from pxo.common import sqlgate
from pxo.common.schema import Table
from pxo.common.timeutil import utc_now
from pxo.edge import allocator, arrowout
from pxo.edge.arrowout import Batch
from pxo.edge.deadlines import Deadlines
from pxo.edge.errors import FragmentError, StoreError
from pxo.edge.sources.base import SourceStatus
from pxo.edge.watchdog import Busy

log = logging.getLogger(__name__)

DEFAULT_ROW_CAP = 1_000_000
DEFAULT_FOLLOW_QUEUE_ROWS = 100_000
_FLUSH = object()  # stands for "the flush deadline passed" inside the writer


class FollowerTooSlow(FragmentError):
    """A follower read more slowly than its table was written: its queue overflowed."""


class Subscription:
    """The committed rows of one table waiting for one follower: bounded in rows.

    ``offer`` is called by the writer (under the store's subscription lock) and never
    blocks; once the bound is exceeded the subscription is marked overflowed and
    everything offered afterwards is counted as dropped."""

    def __init__(self, table: str, max_rows: int) -> None:
        self.table = table
        self.max_rows = max_rows
        self._q: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.queued_rows = 0
        self.dropped = 0
        self.overflowed = False

    def offer(self, batch: Batch) -> None:
        with self._lock:
            if self.overflowed or self.queued_rows + batch.num_rows > self.max_rows:
                self.overflowed = True
                self.dropped += batch.num_rows
                return
            self.queued_rows += batch.num_rows
        self._q.put(batch)

    def get(self, timeout: float) -> Batch | None:
        """The next committed batch, None when none came within ``timeout``;
        FollowerTooSlow once the queue has overflowed (what was still queued counts as dropped)."""
        with self._lock:
            if self.overflowed:
                raise FollowerTooSlow(f"follower too slow, {self.dropped + self.queued_rows} rows dropped "
                                      f"(more than {self.max_rows} rows were waiting for it)")
        try:
            batch = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self.queued_rows -= batch.num_rows
        return batch


def _empty(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> Batch:
    try:
        return arrowout.empty(con, sql, params)
    except duckdb.Error as exc:
        raise FragmentError(str(exc).splitlines()[0]) from exc


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
        retention: dt.timedelta = dt.timedelta(days=30),
        retention_by_table: Mapping[str, dt.timedelta] | None = None,
        max_bytes: int = 1 << 30,
        retention_interval: float = 60.0,
        max_pending_rows: int = 200_000,
        urgent_delay: float = 0.02,
        release_idle: float = 1.0,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        """``release_idle``: seconds without an answer after which the memory answers freed
        goes back to the kernel (edge/allocator.py)."""
        self.path = path
        self.tables: dict[str, Table] = {t.name: t for t in tables}
        self.flush_interval = flush_interval
        self.max_batch_rows = max_batch_rows
        self.row_cap = row_cap
        self.retention = retention
        self.retention_by_table = dict(retention_by_table or {})
        self.max_bytes = max_bytes
        self.retention_interval = retention_interval
        self.max_pending_rows = max_pending_rows
        # Rare rows someone is waiting for (an OOM kill: Table.urgent) commit within
        # urgent_delay; high-rate tables are batched for flush_interval.
        self.urgent_tables = frozenset(t.name for t in self.tables.values() if t.urgent)
        self.urgent_delay = urgent_delay
        self._clock = clock
        # Rows a failed commit (e.g. a full disk) left behind, retried on every flush.
        self._unwritten: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        self.rows_dropped = 0
        self.writer_busy = Busy("store writer")  # each commit and retention pass (edge/watchdog.py)
        self.rows_deleted_by_retention = 0
        self._since = time.time()
        # rows, flush barriers (Events), or None to stop the writer
        self._queue: queue.Queue[tuple[str, Mapping[str, Any]] | threading.Event | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        # Followers by table; the writer commits and publishes under _sub_lock, so a
        # follower's backlog snapshot and its subscription see the same commits.
        self._sub_lock = threading.Lock()
        self._subs: dict[str, list[Subscription]] = defaultdict(list)
        self._memory_limit = memory_limit
        self._release = allocator.IdleRelease(idle=release_idle)
        self._deadlines = Deadlines("store-deadlines")  # interrupts a query past its timeout
        self.rows_written = 0
        self.write_error: str = ""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(
                str(path),
                config={**sqlgate.HARDENED, "memory_limit": memory_limit, "threads": threads},
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
        self._warm()

    def _warm(self) -> None:
        """Pay the process's one-time costs of a query (the SQL gate's parser, DuckDB's
        first Arrow answer, the IPC encoder) now, not in the first query someone waits
        for: about 20 ms a node, which a 16-node answer paid on two cores."""
        if not self.tables:
            return
        sql = f'SELECT * FROM "{next(iter(self.tables))}" LIMIT 0'
        sqlgate.check(sql, self.tables)
        cur = self._con.cursor()
        try:
            for batch in self._read(cur, sql, {}, 1, 10.0):
                batch.ipc()
        finally:
            cur.close()

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
        next_retention = time.monotonic()
        while True:
            if time.monotonic() >= next_retention:
                try:
                    with self.writer_busy:
                        self.enforce_retention(cur)
                except Exception:  # never the writer: retention is tried again next time
                    log.exception("store: retention failed")
                next_retention = time.monotonic() + self.retention_interval
            wait_for = next_retention if deadline is None else min(deadline, next_retention)
            timeout = max(0.0, wait_for - time.monotonic())
            item: object
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _FLUSH  # the oldest pending row has waited flush_interval
            if isinstance(item, tuple):
                pending[item[0]].append(item[1])
                count += 1
                delay = self.urgent_delay if item[0] in self.urgent_tables else self.flush_interval
                deadline = min(deadline or float("inf"), time.monotonic() + delay)
                if count < self.max_batch_rows and time.monotonic() < deadline:
                    continue  # a steady stream still commits every flush_interval
            if count or any(self._unwritten.values()):
                try:
                    with self.writer_busy:
                        self._flush(cur, pending)
                except Exception as exc:  # never the writer: its rows wait in _unwritten, retried
                    log.exception("store: writing failed unexpectedly; keeping rows and retrying")
                    self.write_error = f"writing failed: {type(exc).__name__}: {exc}"
                    self._bound_unwritten()
                pending, count = defaultdict(list), 0
            # rows a failed write left behind are retried on their own schedule
            deadline = time.monotonic() + 2.0 if any(self._unwritten.values()) else None
            if isinstance(item, threading.Event):
                item.set()  # a flush() barrier: everything before it is committed
            elif item is None:
                break
        cur.close()

    def _flush(self, cur: duckdb.DuckDBPyConnection, pending: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        for name, rows in pending.items():
            self._unwritten[name].extend(rows)
        for name in list(self._unwritten):
            rows = self._unwritten[name]
            if not rows:
                continue
            table = self.tables.get(name)
            if table is None:  # a source's bug: rows for a table this store does not hold
                log.error("store: %d row(s) for a table it does not hold, %r, left out", len(rows), name)
                self.rows_dropped += len(rows)
                del self._unwritten[name]
                continue
            try:
                batch, problems = arrowout.build(table, rows)
            except Exception:  # a source's bug the row checks do not catch (a row that is no dict)
                log.exception("store: %d row(s) of %s left out: they could not be read", len(rows), name)
                self.rows_dropped += len(rows)
                self._unwritten[name] = []
                continue
            if problems:  # a source's bug: that row is dropped, never the batch or the writer
                for line in problems.values():
                    log.error("store: row left out: %s", line)
                self.rows_dropped += len(problems)
                rows[:] = [r for i, r in enumerate(rows) if i not in problems]
            try:
                cur.register("pxo_batch", batch)
                try:
                    with self._sub_lock:  # commit and publish as one step for followers
                        cur.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM pxo_batch')
                        for sub in self._subs.get(name, ()):
                            sub.offer(batch)
                finally:
                    cur.unregister("pxo_batch")
            except duckdb.Error as exc:
                # Never crash on a write error (a full disk...): keep the rows, retry on the
                # next flush, and say so in the store's status until a write succeeds.
                if not self.write_error:
                    log.error("store: cannot write to %s: %s; keeping rows and retrying", name, exc)
                self.write_error = f"cannot write to {self.path}: {str(exc).splitlines()[0]}"
                self._bound_unwritten(name)
                continue
            self.rows_written += batch.num_rows
            self._unwritten[name] = []
            if self.write_error:
                log.info("store: writes succeed again")
                self.write_error = ""

    def _bound_unwritten(self, first: str | None = None) -> None:
        """Bounded memory while writes fail: past ``max_pending_rows`` rows waiting, the oldest
        go, from table ``first`` (the one that just failed), then from the others."""
        excess = sum(len(v) for v in self._unwritten.values()) - self.max_pending_rows
        order = ([first] if first is not None else []) + [n for n in self._unwritten if n != first]
        for name in order:
            if excess <= 0:
                return
            rows = self._unwritten[name]
            n = min(excess, len(rows))
            del rows[:n]
            self.rows_dropped += n
            excess -= n

    # -- retention -----------------------------------------------------------------

    def used_bytes(self, cur: duckdb.DuckDBPyConnection | None = None) -> int:
        """Bytes the store holds: used blocks plus the write-ahead log (the file never shrinks,
        but DuckDB reuses freed blocks, so this is what counts against max_bytes)."""
        c = cur or self._con.cursor()
        try:
            rows = c.execute("SELECT block_size, used_blocks FROM pragma_database_size()").fetchall()
        finally:
            if cur is None:
                c.close()
        wal = Path(str(self.path) + ".wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        return int(rows[0][0]) * int(rows[0][1]) + wal_bytes if rows else wal_bytes

    def enforce_retention(self, cur: duckdb.DuckDBPyConnection | None = None) -> None:
        """Delete rows past their table's age, then the oldest rows while the store is too big."""
        c = cur or self._con.cursor()
        now = self._clock()
        try:
            for name, t in self.tables.items():
                if "time" not in t.column_names:
                    continue
                age = self.retention_by_table.get(name, self.retention)
                n = c.execute(f'DELETE FROM "{name}" WHERE "time" < $cut', {"cut": now - age}).fetchall()
                self.rows_deleted_by_retention += int(n[0][0]) if n else 0
            for _ in range(50):
                if self.used_bytes(c) <= self.max_bytes:
                    break
                counts = {name: c.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0]
                          for name, t in self.tables.items() if "time" in t.column_names}
                biggest = max(counts, key=lambda k: counts[k], default=None)
                if biggest is None or counts[biggest] == 0:
                    break
                # the oldest tenth of the biggest table
                cut = c.execute(f'SELECT quantile_disc("time", 0.1) FROM "{biggest}"').fetchall()[0][0]
                n = c.execute(f'DELETE FROM "{biggest}" WHERE "time" <= $cut', {"cut": cut}).fetchall()
                self.rows_deleted_by_retention += int(n[0][0]) if n else 0
                c.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.error("store: retention failed: %s", str(exc).splitlines()[0])
        finally:
            if cur is None:
                c.close()

    def status(self) -> SourceStatus:
        """The store as a status line beside the sources' (probe_status, heartbeats)."""
        waiting = sum(len(v) for v in self._unwritten.values())
        detail = self.write_error
        if detail:
            detail += f" ({waiting} rows waiting, {self.rows_dropped} dropped)"
        return SourceStatus("store", "degraded" if self.write_error else "running", detail,
                            self.rows_written, self.rows_dropped, self._since)

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
                '((tid = $pid OR pid = $pid) AND "time" BETWEEN $lo AND $hi)) LIMIT 1',
                {"boot": boot_id, "seq": kmsg_seq, "pid": pid, "lo": when - slack, "hi": when + slack},
            ).fetchall()
        finally:
            cur.close()
        return bool(row)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The edge's own questions to its store (`pxo explain`'s evidence): committed rows as
        dicts, with bound parameters. Not for SQL from outside: that goes through ``execute``
        and the SQL gate."""
        self.flush()
        cur = self._con.cursor()
        try:
            rel = cur.execute(sql, params or {})
            names = [d[0] for d in rel.description or []]
            return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]
        finally:
            cur.close()
            self._release.answered()

    def execute(
        self,
        sql: str,
        *,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        row_limit: int = 0,
        timeout: float = 30.0,
    ) -> Iterator[Batch]:
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
        try:
            yield from self._read(cur, sql, params, cap, timeout)
        finally:
            cur.close()
            self._release.answered()  # its memory goes back to the kernel once the store is idle

    def _read(self, cur: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], cap: int, timeout: float,
              *, what: str = "query", complete: bool = False) -> Iterator[Batch]:
        """Batches of an already gated SELECT on ``cur`` (at least one, maybe empty; each fits a gRPC
        message), cut at ``cap`` rows, or with ``complete`` refused when more than ``cap`` rows
        match; interrupted after ``timeout`` seconds."""
        deadline = self._deadlines.arm(timeout, cur.interrupt)
        try:
            if complete:
                n = cur.execute(f"SELECT count(*) FROM ({sql})", params or None).fetchall()[0][0]
                if n > cap:
                    raise FragmentError(f"the {what} holds {n} matching rows, more than the cap of {cap}: "
                                        "shorten the range or narrow the where clause")
            yield from arrowout.read(cur, sql, params, cap, self._con.cursor)
        except duckdb.InterruptException as exc:
            raise FragmentError(f"the {what} ran longer than its {timeout:g} s deadline and was stopped") from exc
        except duckdb.Error as exc:
            raise FragmentError(str(exc).splitlines()[0]) from exc
        finally:
            self._deadlines.cancel(deadline)

    # -- follow ------------------------------------------------------------------

    def followers(self, table: str | None = None) -> int:
        with self._sub_lock:
            return sum(len(v) for k, v in self._subs.items() if table in (None, k))

    def follow(
        self,
        table: str,
        sql: str,
        *,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        backlog: bool = False,
        row_limit: int = 0,
        stop: threading.Event | None = None,
        timeout: float = 30.0,
        max_queued_rows: int = DEFAULT_FOLLOW_QUEUE_ROWS,
        poll: float = 0.25,
    ) -> Iterator[Batch]:
        """Rows of ``table`` through one gated SELECT over that table alone: first (with
        ``backlog``) the stored rows, then the rows of every later commit, until ``stop``
        is set or the caller stops iterating. The first batch, sent once subscribed, has
        the schema and no rows; every later one has rows. FollowerTooSlow when the caller falls behind by more
        than ``max_queued_rows``; FragmentError for a refused or failing SELECT."""
        stop = stop or threading.Event()
        if table not in self.tables:
            raise FragmentError(f"refused: no table {table!r} on this node")
        try:
            used = sqlgate.check(sql, self.tables)
        except sqlgate.SqlRefused as exc:
            raise FragmentError(f"refused: {exc}") from exc
        if used != {table}:
            raise FragmentError(f"refused: a follow fragment reads exactly the table {table}")
        params = {k: v for k, v in (("start", start), ("end", end)) if f"${k}" in sql}
        scratch = duckdb.connect(":memory:", config={**sqlgate.HARDENED, "threads": 1,
                                                     "memory_limit": self._memory_limit})
        cur: duckdb.DuckDBPyConnection | None = None
        sub = Subscription(table, max_queued_rows)
        try:
            scratch.execute(self.tables[table].ddl())
            scratch.execute("SET lock_configuration = true")
            with self._sub_lock:
                if backlog:  # pin the snapshot: it holds exactly the commits published before sub
                    cur = self._con.cursor()
                    cur.execute("BEGIN TRANSACTION")
                    cur.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchall()
                self._subs[table].append(sub)
            # first, the schema and no rows: the caller knows it is subscribed
            yield _empty(scratch, sql, params)
            if cur is not None:
                cap = min(row_limit or self.row_cap, self.row_cap)
                yield from (b for b in self._read(cur, sql, params, cap, timeout, what="backlog", complete=True)
                            if b.num_rows)
                cur.close()
                cur = None
            while not stop.is_set():
                committed = sub.get(poll)
                if committed is None:
                    continue
                scratch.execute("BEGIN TRANSACTION")
                try:
                    scratch.register("pxo_batch", committed)
                    scratch.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM pxo_batch')
                    scratch.unregister("pxo_batch")
                    out = list(arrowout.read(scratch, sql, params, self.row_cap, scratch.cursor))
                except duckdb.Error as exc:
                    raise FragmentError(str(exc).splitlines()[0]) from exc
                finally:
                    scratch.execute("ROLLBACK")
                yield from (b for b in out if b.num_rows)
        finally:
            with self._sub_lock:
                if sub in self._subs.get(table, ()):
                    self._subs[table].remove(sub)
            if cur is not None:
                with contextlib.suppress(duckdb.Error):
                    cur.close()
            scratch.close()

    def close(self) -> None:
        self._release.close()
        self._deadlines.close()
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=10)
            self._writer = None
        with contextlib.suppress(duckdb.Error):
            self._con.execute("CHECKPOINT")
        self._con.close()
