"""Runs a planned query: fans the fragment out to every live edge concurrently,
each with its own deadline (every node gets its own SQL: its name is a literal
in it), merges the partial answers in an in-memory DuckDB and runs the final
step there (``merge_and_finish``, callable on its own with per-node Arrow
tables: the exactness tests drive it directly).

Every known edge gets a status in the answer: ok, failed, timed out, down (it
stopped heartbeating, so it was not asked) or skipped. Nothing is dropped
silently.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import TypeVar

import duckdb
import grpc
import pyarrow as pa
import pyarrow.compute as pc

from pxo.collector.errors import QueryError
from pxo.collector.plan import RELATIVE_ERROR, Plan, plan_pipe, plan_sql
from pxo.collector.plan import sql as s
from pxo.collector.registry import EdgeEntry, Registry
from pxo.collector.scratch import scratch
from pxo.common import arrowipc
from pxo.common.contract import NodeState
from pxo.common.schema import Table
from pxo.common.timeutil import to_unix_us, utc_now
from pxo.v1 import pxo_pb2, pxo_pb2_grpc

log = logging.getLogger(__name__)

State = pxo_pb2.NodeStatus.State
@dataclass
class NodeResult:
    node: str
    state: pxo_pb2.NodeStatus.State = State.OK
    detail: str = ""
    tables: dict[str, pa.Table] = field(default_factory=dict)
    rows: int = 0

    def status(self) -> pxo_pb2.NodeStatus:
        return pxo_pb2.NodeStatus(node=self.node, state=self.state, detail=self.detail, rows=self.rows)


class Executor:
    def __init__(
        self,
        registry: Registry,
        *,
        channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
        edge_timeout: float = 10.0,
        row_cap: int = 100_000,
        byte_cap: int = 256 << 20,
        max_workers: int = 64,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.registry = registry
        self._channel_factory = channel_factory
        self._channels: dict[str, grpc.Channel] = {}
        self._channels_lock = threading.Lock()
        self.edge_timeout = edge_timeout
        self.row_cap = row_cap
        self.byte_cap = byte_cap
        self._pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fanout")
        self.clock = clock
        # The catalog and the registrations it was built from (the edges' NodeInfo objects,
        # which a heartbeat updates in place and only a new registration replaces).
        self._catalog: tuple[tuple[pxo_pb2.NodeInfo, ...], dict[str, Table]] = ((), {})
        self._catalog_lock = threading.Lock()

    def stub(self, address: str) -> pxo_pb2_grpc.EdgeStub:
        with self._channels_lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = self._channel_factory(address)
            return pxo_pb2_grpc.EdgeStub(ch)

    def catalog(self) -> dict[str, Table]:
        """The registry's catalog, built again only when an edge registered, came or went:
        rebuilding it costs about 0.2 ms per edge, more than a query's own work at the
        collector once there are a few dozen edges."""
        infos = tuple(e.info for e in self.registry.snapshot())
        with self._catalog_lock:
            built_from, catalog = self._catalog
            if len(built_from) != len(infos) or any(a is not b for a, b in zip(built_from, infos, strict=True)):
                catalog = self.registry.catalog()
                self._catalog = (infos, catalog)
            return catalog

    # -- one query ---------------------------------------------------------------

    def plan(self, request: pxo_pb2.QueryRequest, catalog: Mapping[str, Table]) -> Plan:
        if request.syntax == pxo_pb2.SYNTAX_SQL:
            return plan_sql(request.text, catalog)
        return plan_pipe(request.text, catalog, now=self.clock())

    def run(self, request: pxo_pb2.QueryRequest) -> Iterator[pxo_pb2.QueryReply]:
        catalog = self.catalog()
        plan, refusal = plan_or_refusal(lambda: self.plan(request, catalog), request.text)
        if plan is None:
            assert refusal is not None
            yield refusal
            return
        cap = rows_allowed(request.row_limit, self.row_cap)
        timeout = request.timeout_ms / 1000 if request.timeout_ms else self.edge_timeout
        budget = _Budget(self.byte_cap)
        results = self._fan_out(plan, cap, timeout, budget)
        if budget.exceeded:
            yield pxo_pb2.QueryReply(error=pxo_pb2.QueryError(
                message=f"the nodes' partial answers exceed the collector's limit of {_mib(self.byte_cap)} "
                        "(--byte-cap-mb); narrow the query: a shorter range, a where, fewer columns or 'by' keys",
                hint="summarize, top and take ship far less than raw rows"))
            return
        yield from self._merge(plan, results, cap)

    def _fan_out(self, plan: Plan, cap: int, timeout: float, budget: _Budget) -> list[NodeResult]:
        results: list[NodeResult] = []
        pending: dict[futures.Future[NodeResult], NodeResult] = {}
        for entry in self.registry.snapshot():
            r = NodeResult(entry.node)
            results.append(r)
            if entry.state == NodeState.DOWN:
                silent = time.time() - entry.last_seen_wall
                r.state, r.detail = State.DOWN, f"edge down: no heartbeat for {silent:.0f} s"
                continue
            reason = skip_reason(entry, [f.table for f in plan.fragments.values()], plan.skip_reason)
            if reason:
                r.state, r.detail = State.SKIPPED, reason
                continue
            pending[self._pool.submit(self._ask, entry, plan, cap, timeout, r, budget)] = r
        futures.wait(pending)
        return results

    def _ask(self, entry: EdgeEntry, plan: Plan, cap: int, timeout: float,
             r: NodeResult, budget: _Budget) -> NodeResult:
        deadline = time.monotonic() + timeout
        stub = self.stub(entry.address)
        # one more than the cap reveals truncation
        row_limit = plan.edge_row_limit if 0 < plan.edge_row_limit <= cap else cap + 1
        try:
            for name, fragment in plan.fragments.items():
                frag = pxo_pb2.Fragment(sql=fragment.sql(entry.node), start_unix_us=to_unix_us(plan.start),
                                        end_unix_us=to_unix_us(plan.end), row_limit=row_limit)
                schema, batches = None, []
                stream = stub.Execute(frag, timeout=max(deadline - time.monotonic(), 0.001))
                for msg in stream:
                    if not budget.take(len(msg.ipc_stream)):
                        stream.cancel()  # the query fails as a whole: stop holding anything
                        r.tables.clear()
                        return r
                    schema, bs = arrowipc.decode(msg.ipc_stream)
                    batches.extend(bs)
                tbl = pa.Table.from_batches(batches, schema=schema)
                r.tables[name] = tbl
                r.rows += tbl.num_rows
        except grpc.RpcError as exc:
            if budget.exceeded:
                r.tables.clear()
                return r
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                r.state, r.detail = State.TIMED_OUT, f"no answer within {timeout:g} s"
            elif code == grpc.StatusCode.UNAVAILABLE:
                r.state, r.detail = State.FAILED, f"edge unreachable at {entry.address}"
            else:
                r.state, r.detail = State.FAILED, exc.details() or code.name
            r.tables.clear()
            r.rows = 0
        except Exception as exc:  # a malformed answer must not take the query down
            log.exception("bad answer from %s", entry.node)
            r.state, r.detail = State.FAILED, f"bad answer from the edge: {exc}"
            r.tables.clear()
            r.rows = 0
        return r

    def _merge(self, plan: Plan, results: list[NodeResult], cap: int) -> Iterator[pxo_pb2.QueryReply]:
        try:
            answer, truncated = merge_and_finish(plan, [(r.node, r.tables) for r in results if r.state == State.OK],
                                                 cap)
        except QueryError as exc:
            yield pxo_pb2.QueryReply(error=exc.to_proto())
            return
        sent_schema = False
        for batch in answer.to_batches(max_chunksize=8192):
            if batch.num_rows:
                yield pxo_pb2.QueryReply(batch=pxo_pb2.ArrowBatch(ipc_stream=arrowipc.encode(batch)))
                sent_schema = True
        if not sent_schema:
            yield pxo_pb2.QueryReply(batch=pxo_pb2.ArrowBatch(ipc_stream=arrowipc.encode_schema(answer.schema)))
        statuses = [r.status() for r in results]
        yield pxo_pb2.QueryReply(summary=pxo_pb2.QuerySummary(
            nodes=statuses,
            partial=any(s.state not in (State.OK, State.SKIPPED) for s in statuses),
            start_unix_us=to_unix_us(plan.start),
            end_unix_us=to_unix_us(plan.end),
            rows=answer.num_rows,
            truncated=truncated,
            approximate_columns=list(plan.approximate),
            relative_error=RELATIVE_ERROR if plan.approximate else 0.0,
        ))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._channels_lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()


def rows_allowed(requested: int, cap: int) -> int:
    """The rows an answer may hold: what the request asked for (0: no wish), never more than the cap."""
    return min(requested or cap, cap)


def skip_reason(entry: EdgeEntry, tables: Iterable[str], excluded: Callable[[str], str]) -> str:
    """Why an edge cannot contribute to a query reading ``tables`` ('' when it can): it lacks
    one of them, or ``excluded`` (the query's where node ...) says why not."""
    have = {t.name for t in entry.info.tables}
    missing = sorted({t for t in tables if t not in have})
    if missing:
        return f"no table {', '.join(missing)} on this node"
    return excluded(entry.node)


P = TypeVar("P")


def plan_or_refusal(make: Callable[[], P], text: str) -> tuple[P, None] | tuple[None, pxo_pb2.QueryReply]:
    """The plan ``make`` returns, or the error reply that says why there is none (a
    planner bug too must answer in one sentence)."""
    try:
        return make(), None
    except QueryError as exc:
        return None, pxo_pb2.QueryReply(error=exc.to_proto())
    except Exception:
        log.exception("planning %r failed", text)
        return None, pxo_pb2.QueryReply(error=pxo_pb2.QueryError(
            message="internal error while planning the query (the collector's log has the details)"))


class _Budget:
    """The bytes one query's partial answers may hold at the collector, shared by its
    fan-out threads: the first message over the cap fails the whole query."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self.exceeded = False
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            self.used += n
            if self.used > self.cap:
                self.exceeded = True
            return not self.exceeded


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.4g} MiB" if n >= 1 << 20 else f"{n / 1024:.4g} KiB"


def merge_and_finish(plan: Plan, parts: list[tuple[str, Mapping[str, pa.Table]]],
                     cap: int) -> tuple[pa.Table, bool]:
    """The collector's half of a query: the partial answers of the nodes that answered
    (node name, merge table name -> Arrow table) go into one in-memory DuckDB, and the
    plan's final step runs over them. Returns at most ``cap`` rows and whether the cap
    cut the answer; QueryError when a node's partial answer was cut but must be complete,
    or when an integer overflowed (the answer's witness column names where: rows with
    one come first, render_expr.py)."""
    for node, tables in parts:
        if any(t.num_rows > cap for t in tables.values()) and plan.complete:
            raise QueryError(f"node {node} holds more than {cap} matching rows or groups, more than a "
                             "query may ship to the collector; narrow it (a shorter range, a where, "
                             "fewer 'by' keys)")
    with scratch(threads=2) as con:
        registered: list[str] = []
        try:
            _fill(con, plan, parts, registered)
            try:
                answer = con.sql(plan.final_sql).limit(cap + 1).to_arrow_table()
            except duckdb.Error as exc:
                raise QueryError(str(exc).splitlines()[0]) from exc
        finally:
            for name in registered:  # the view goes with the rollback, the Arrow data with this
                con.unregister(name)
    if plan.witness:
        site = pc.min(answer.column(plan.witness)).as_py()
        if site is not None:
            raise plan.overflow(site)
        answer = answer.drop_columns([plan.witness])
    truncated = answer.num_rows > cap or any(t.num_rows > cap for _, ts in parts for t in ts.values())
    return answer.slice(0, cap), truncated


def _fill(con: duckdb.DuckDBPyConnection, plan: Plan, parts: list[tuple[str, Mapping[str, pa.Table]]],
          registered: list[str]) -> None:
    """One relation per fragment holding every node's partial answer, cast to the planned
    types: a view over the parts concatenated in Arrow, which the final step reads in
    place (only the columns it needs; copying the rows into a table first cost more than
    the rest of the query). The names of the Arrow tables it registers on ``con`` go into
    ``registered``: the caller unregisters them once the final step has run."""
    try:
        for i, (name, fragment) in enumerate(plan.fragments.items()):
            pieces = []
            for node, tables in parts:
                part = tables.get(name)
                if part is None or part.num_rows == 0:
                    continue
                if fragment.add_node and "node" not in part.column_names:
                    part = part.add_column(0, "node", pa.array([node] * part.num_rows, pa.string()))
                part = pa.table({c: part[c] if c in part.column_names else pa.nulls(part.num_rows)
                                 for c, _ in fragment.columns})
                pieces.append(part)
            if not pieces:
                con.execute(_merge_table_sql(name, fragment.columns, None))
                continue
            try:
                merged = pa.concat_tables(pieces, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # edges of different versions
                raise QueryError(f"the nodes' partial answers do not merge: {exc}") from exc
            arrow_name = f"pxo_part_{i}"
            con.register(arrow_name, merged)
            registered.append(arrow_name)
            con.execute(_merge_table_sql(name, fragment.columns, arrow_name))
    except duckdb.Error as exc:
        raise QueryError(f"the nodes' partial answers do not merge: {str(exc).splitlines()[0]}") from exc


@functools.lru_cache(maxsize=512)
def _merge_table_sql(name: str, columns: tuple[tuple[str, str], ...], arrow: str | None) -> str:
    """The merge table ``name``: a view over the registered Arrow data ``arrow`` with the
    planned types, or (None: no node sent rows) an empty table of them. The same for
    every run of a plan, so written once."""
    if arrow is None:
        return s.to_sql(s.create_temp_table(name, columns))
    return s.to_sql(s.create_temp_view(name, s.from_(s.select(*[(n, s.cast(s.col(n), t)) for n, t in columns]),
                                                     arrow)))
