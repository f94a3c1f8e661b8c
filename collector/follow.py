"""`pxo query --follow`: a row-local pipe query's rows as the edges commit them.

Planning (``plan_follow``): only a table, an optional range opener and
where / project / project-away / extend may follow; every other operator needs
the whole answer and is refused with a positioned error. The edge fragment is
the planner's own (so it is gated and typed exactly as for a query); the
range's end stays open for `last` and `since` (rows keep arriving after now),
and is kept for `between`. A range opener also asks each edge for its backlog:
the matching rows already stored, then the live ones. A row whose integer
arithmetic overflowed ends the stream with the error that names the expression.

Fan-in (``Follow``): one thread per edge reads its Edge.Follow stream; batches
are cast to the planned schema and interleaved into one stream of QueryReply
batches (a bounded queue: a slow client slows the edges' streams, and an edge
whose follower falls too far behind ends it, which is reported). Every change
of a node's state is sent in-band as a QuerySummary naming that node: following
(OK), failed (with why), down, skipped. Edges that register while following
are picked up, and an edge whose stream failed is asked again once it answers
(without backlog: rows committed in between are missing, and its status says
so). The stream ends when the client cancels.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import grpc
import pyarrow as pa
import pyarrow.compute as pc

from pxo.collector import query
from pxo.collector.errors import QueryError
from pxo.collector.executor import plan_or_refusal, rows_allowed, skip_reason
from pxo.collector.plan import LOCAL, Fragment, Plan, plan_pipe
from pxo.collector.plan import sql as s
from pxo.collector.plan.model import OV
from pxo.collector.registry import EdgeEntry, Registry
from pxo.collector.scratch import scratch
from pxo.common import arrowipc
from pxo.common.backoff import Backoff
from pxo.common.contract import NodeState
from pxo.common.schema import Table
from pxo.common.slots import Slots, SlotsFull
from pxo.common.timeutil import to_unix_us
from pxo.v1 import pxo_pb2, pxo_pb2_grpc

log = logging.getLogger(__name__)

State = pxo_pb2.NodeStatus.State

NOT_ROW_LOCAL = ("--follow streams rows as they arrive; summarize, sort, take, top and distinct need the "
                 "whole answer: drop --follow or the operator")
# The open end of a `last` or `since` range while following (DuckDB TIMESTAMP holds it).
FOREVER = dt.datetime(9999, 12, 31)
MAX_FOLLOWS = 8  # concurrent follow streams per collector: each holds a server thread
_follows = Slots(MAX_FOLLOWS)


@dataclass(frozen=True)
class FollowPlan:
    table: str
    fragment: Fragment
    start: dt.datetime | None
    end: dt.datetime | None
    backlog: bool
    schema: pa.Schema
    plan: Plan  # the query's: why a node cannot contribute, what an overflow names

    def skip_reason(self, node: str) -> str:
        return self.plan.skip_reason(node)

    def request(self, node: str, *, backlog: bool, row_limit: int) -> pxo_pb2.FollowRequest:
        return pxo_pb2.FollowRequest(table=self.fragment.table, sql=self.fragment.sql(node),
                                     start_unix_us=to_unix_us(self.start) if self.start else 0,
                                     end_unix_us=to_unix_us(self.end) if self.end else 0,
                                     backlog=backlog, row_limit=row_limit)


def plan_follow(request: pxo_pb2.QueryRequest, catalog: Mapping[str, Table], *, now: dt.datetime) -> FollowPlan:
    """The edge fragment and answer schema of a follow query; QueryError when it cannot follow."""
    if request.syntax == pxo_pb2.SYNTAX_SQL:
        raise QueryError("--follow takes a pipe query (table | where ...), not SQL")
    text = request.text
    p = query.parse(text)
    for op in p.ops:
        if not isinstance(op, (*LOCAL, query.Last, query.Since, query.Between)):
            raise QueryError.at(text, op.pos, NOT_ROW_LOCAL)
    plan = plan_pipe(text, catalog, now=now)
    (fragment,) = plan.fragments.values()
    rng = p.range_op
    end = plan.end if isinstance(rng, query.Between) else (FOREVER if rng is not None else None)
    schema = arrow_schema(tuple((n, t) for n, t in fragment.columns if n != OV))
    return FollowPlan(fragment.table, fragment, plan.start, end, rng is not None, schema, plan)


def arrow_schema(columns: tuple[tuple[str, str], ...]) -> pa.Schema:
    """The Arrow schema DuckDB gives columns of these (planned) DuckDB types: what the
    edges' batches are cast to."""
    with scratch() as con:
        return con.sql(s.to_sql(s.select(*[(n, s.null(t)) for n, t in columns]))).limit(0).to_arrow_table().schema


_Ended = tuple[str, pxo_pb2.NodeStatus.State, str]  # a node's stream ended: (node, state, detail)


@dataclass
class _Link:
    """One edge's follow stream."""

    node: str
    backoff: Backoff  # when to ask again: grows while attempts fail before the edge confirms
    address: str = ""
    thread: threading.Thread | None = None
    call: grpc.Call | None = None
    attempts: int = 0
    retry_at: float = 0.0  # monotonic time before which it is not asked again
    detail: str = ""  # what to say once the edge confirms
    confirmed: threading.Event = field(default_factory=threading.Event)
    reported: tuple[pxo_pb2.NodeStatus.State, str] | None = None  # the last state sent for it (state, detail)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class Follow:
    def __init__(self, registry: Registry, stub: Callable[[str], pxo_pb2_grpc.EdgeStub], plan: FollowPlan, *,
                 row_limit: int, retry_after: float = 1.0, retry_cap: float = 10.0, check_every: float = 0.5,
                 queue_replies: int = 64, confirm_wait: float = 3.0) -> None:
        self.confirm_wait = confirm_wait
        self.registry = registry
        self._stub = stub
        self.plan = plan
        self.row_limit = row_limit
        self.retry_after = retry_after
        self.retry_cap = retry_cap
        self.check_every = check_every
        self._out: queue.Queue[pxo_pb2.QueryReply | _Ended] = queue.Queue(queue_replies)
        self._links: dict[str, _Link] = {}
        self._lock = threading.Lock()
        self.stop = threading.Event()

    # -- the stream -------------------------------------------------------------

    def run(self) -> Iterator[pxo_pb2.QueryReply]:
        try:
            yield pxo_pb2.QueryReply(batch=pxo_pb2.ArrowBatch(ipc_stream=arrowipc.encode_schema(self.plan.schema)))
            first = self._reconcile()
            # the first summary waits (briefly) for the edges to confirm their subscriptions
            started = [link for link in self._links.values() if link.running]
            deadline = time.monotonic() + self.confirm_wait
            for link in started:
                link.confirmed.wait(max(0.0, deadline - time.monotonic()))
            for link in started:
                first += self._note(link.node, State.OK, link.detail if link.confirmed.is_set() else "connecting")
            yield self._summary(first, all_nodes=True)
            next_check = time.monotonic() + self.check_every
            while not self.stop.is_set():
                if time.monotonic() >= next_check:
                    changed = self._reconcile()
                    if changed:
                        yield self._summary(changed)
                    next_check = time.monotonic() + self.check_every
                try:
                    item = self._out.get(timeout=min(self.check_every, 0.25))
                except queue.Empty:
                    continue
                if isinstance(item, tuple):  # a stream ended: (node, state, detail)
                    changed = self._note(*item)
                    if changed:
                        yield self._summary(changed)
                else:
                    yield item
                    if item.WhichOneof("part") == "error":  # an overflow: the query fails
                        return
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        with self._lock:
            links = list(self._links.values())
        for link in links:
            if link.call is not None:
                link.call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs: RpcContext.cancel
        for link in links:
            if link.thread is not None:
                link.thread.join(timeout=2)

    def _summary(self, statuses: list[pxo_pb2.NodeStatus], *, all_nodes: bool = False) -> pxo_pb2.QueryReply:
        """The nodes whose state changed (at first, every node); ``partial`` is about those."""
        if all_nodes:  # the first summary: every known node, in name order
            statuses = sorted(statuses, key=lambda s: s.node)
        return pxo_pb2.QueryReply(summary=pxo_pb2.QuerySummary(
            nodes=statuses, partial=any(s.state not in (State.OK, State.SKIPPED) for s in statuses),
            start_unix_us=to_unix_us(self.plan.start) if self.plan.start else 0))

    def _note(self, node: str, state: pxo_pb2.NodeStatus.State, detail: str) -> list[pxo_pb2.NodeStatus]:
        link = self._links[node]
        if link.reported == (state, detail):
            return []
        link.reported = (state, detail)
        return [pxo_pb2.NodeStatus(node=node, state=state, detail=detail)]

    # -- which edges to follow --------------------------------------------------------

    def _reconcile(self) -> list[pxo_pb2.NodeStatus]:
        """Start streams for edges that can contribute and are not followed; report what changed."""
        changed: list[pxo_pb2.NodeStatus] = []
        now = time.monotonic()
        for entry in self.registry.snapshot():
            with self._lock:
                link = self._links.setdefault(
                    entry.node, _Link(entry.node, backoff=Backoff(self.retry_after, self.retry_cap)))
            if link.running:
                continue
            reason = skip_reason(entry, [self.plan.table], self.plan.skip_reason)
            if reason:
                changed += self._note(entry.node, State.SKIPPED, reason)
                continue
            if entry.state == NodeState.DOWN:
                # (no "for N s" in it: the same state must not be reported again every check)
                changed += self._note(entry.node, State.DOWN, "edge down: it stopped heartbeating; "
                                                               "following again when it is back")
                continue
            if now < link.retry_at:
                continue
            changed += self._start(link, entry)
        return changed

    def _start(self, link: _Link, entry: EdgeEntry) -> list[pxo_pb2.NodeStatus]:
        backlog = self.plan.backlog and link.attempts == 0
        detail = "following" if link.attempts == 0 else \
            "following again; rows committed while it was not followed are not in this stream"
        if backlog:
            detail = "following, after the stored rows of the range"
        link.attempts += 1
        link.detail = detail
        link.address = entry.address
        link.call = None
        link.confirmed = threading.Event()
        link.thread = threading.Thread(target=self._pump, args=(link, entry.address, backlog),
                                       name=f"follow-{entry.node}", daemon=True)
        link.thread.start()
        return []

    # -- one edge ------------------------------------------------------------------

    def _put(self, item: pxo_pb2.QueryReply | _Ended) -> bool:
        while not self.stop.is_set():
            try:
                self._out.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, link: _Link, address: str, backlog: bool) -> None:
        names = self.plan.schema.names
        request = self.plan.request(link.node, backlog=backlog, row_limit=self.row_limit)
        detail = "the edge ended its stream"
        try:
            call = self._stub(address).Follow(request)
            link.call = call
            if self.stop.is_set():
                call.cancel()
            for msg in call:
                if not link.confirmed.is_set():  # the edge's first message: it is subscribed
                    link.confirmed.set()
                    link.backoff.reset()
                    if not self._put((link.node, State.OK, link.detail)):
                        return
                _, batches = arrowipc.decode(msg.ipc_stream)
                for b in batches:
                    if not b.num_rows:
                        continue
                    part = pa.Table.from_batches([b])
                    site = pc.min(part.column(OV)).as_py() if OV in part.column_names else None
                    if site is not None:
                        self._put(pxo_pb2.QueryReply(error=self.plan.plan.overflow(site).to_proto()))
                        return
                    part = part.select(names).cast(self.plan.schema)
                    for out in part.to_batches():
                        if not self._put(pxo_pb2.QueryReply(batch=pxo_pb2.ArrowBatch(
                                ipc_stream=arrowipc.encode(out)))):
                            return
        except grpc.RpcError as exc:
            if self.stop.is_set():
                return
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                detail = f"edge unreachable at {address}"
            else:
                detail = exc.details() or code.name.lower()
        except Exception as exc:  # a malformed answer must not take the stream down
            if self.stop.is_set():
                return
            log.exception("bad follow answer from %s", link.node)
            detail = f"bad answer from the edge: {exc}"
        finally:
            # once confirmed, the backoff starts over: a stream that ran is asked again soon
            link.retry_at = time.monotonic() + link.backoff.delay()
        if not self.stop.is_set():
            self._put((link.node, State.FAILED, f"{detail}; following again when it answers"))


def serve(request: pxo_pb2.QueryRequest, context: grpc.ServicerContext, *, registry: Registry,
          stub: Callable[[str], pxo_pb2_grpc.EdgeStub], row_cap: int,
          now: Callable[[], dt.datetime]) -> Iterator[pxo_pb2.QueryReply]:
    """Collector.Follow: plan, then stream until the client cancels."""
    plan, refusal = plan_or_refusal(lambda: plan_follow(request, registry.catalog(), now=now()), request.text)
    if plan is None:
        assert refusal is not None
        yield refusal
        return
    try:
        slot = _follows.take()
    except SlotsFull as exc:
        yield pxo_pb2.QueryReply(error=pxo_pb2.QueryError(
            message=f"this collector already serves {exc.cap} follow streams, its most; try again later"))
        return
    with slot:
        follow = Follow(registry, stub, plan, row_limit=rows_allowed(request.row_limit, row_cap))
        context.add_callback(follow.stop.set)
        yield from follow.run()
