"""The kernel log (/dev/kmsg) as the OOM killer writes it.

Each read of /dev/kmsg returns one record, ``level,seq,usec,flags;text``
followed by optional ``" KEY=value"`` continuation lines (see the kernel's
Documentation/ABI/testing/dev-kmsg). ``seq`` increases by one per record since
boot: with /proc/sys/kernel/random/boot_id it identifies a record for good,
which is how an edge that restarts recognises kills it already recorded.

For every OOM kill the kernel prints (mm/oom_kill.c, mm/memcontrol.c):

    <comm> invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0
    CPU: 0 UID: 0 PID: 18442 Comm: <comm> ...                    the triggering task
    ... call trace ...
    memory: usage 65536kB, limit 65536kB, failcnt 0             (memcg OOMs)
    memory+swap: usage ...  | swap: usage ...                   (v1 | v2)
    Memory cgroup stats for /a/b:  ... one stat per record ...
    Tasks state (memory values in pages):                        (vm.oom_dump_tasks)
    [  pid  ]   uid  tgid total_vm      rss rss_anon ... name    the candidates
    oom-kill:constraint=CONSTRAINT_MEMCG,...,oom_memcg=/a/b,task_memcg=/a/b,task=x,pid=N,uid=U
    Memory cgroup out of memory: Killed process N (x) total-vm:...kB, anon-rss:...kB, ...

Everything up to and including the ``oom-kill:`` line is rate limited by the
kernel (``oom_rs``: a burst of 10 per 5 s); the ``Killed process`` line is
not. So in a burst some kills arrive with no report: they are still kills.

A memory.oom.group kill prints, after the chosen victim's line, "Tasks in
/g are going to be killed due to memory.oom.group set" and then a "Killed
process" line for every task of /g, the chosen victim AGAIN among them (the
kernel kills and counts it twice: memory.events says oom_kill 4 for a group
of 3). That repeated line is flagged ``duplicate``; the others are members.

``KmsgInput`` reads the device: the backlog the kernel still holds when the
edge starts, then new records as they come.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pxo.edge.errors import EdgeError

log = logging.getLogger(__name__)

CONSTRAINTS = {
    "CONSTRAINT_NONE": "global",
    "CONSTRAINT_MEMCG": "memcg",
    "CONSTRAINT_CPUSET": "cpuset",
    "CONSTRAINT_MEMORY_POLICY": "mempolicy",
}

# A report and the kills it explains are printed within milliseconds; a
# "Killed process" line this much later than its report belongs to another
# (rate-limited, so unreported) OOM.
REPORT_WINDOW_US = 5_000_000
# A group kill's member lines follow its "Tasks in" line within microseconds
# to milliseconds (one task at a time, under the OOM lock).
GROUP_WINDOW_US = 1_000_000


@dataclass(frozen=True)
class Record:
    level: int  # syslog level (0 emerg .. 7 debug)
    seq: int
    ts_us: int  # microseconds since boot (the kernel's local clock, suspend not included)
    text: str  # the message, without continuation lines


def parse_record(raw: bytes) -> Record | None:
    """One /dev/kmsg record; None when it is not in the documented format."""
    head, sep, rest = raw.partition(b";")
    if not sep:
        return None
    fields = head.split(b",")
    if len(fields) < 3:
        return None
    try:
        prio, seq, ts = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    text = rest.split(b"\n", 1)[0].decode("utf-8", "replace")
    return Record(prio & 7, seq, ts, text)


@dataclass
class Candidate:
    """One line of the kernel's "Tasks state" table: a task the OOM killer considered."""

    pid: int
    uid: int
    tgid: int
    name: str
    # PAGES as the kernel prints them (memory values in pages), except
    # pgtables_bytes; swapents are pages too.
    pages: dict[str, int] = field(default_factory=dict)  # total_vm, rss, rss_anon, rss_file, rss_shmem, swapents
    pgtables_bytes: int | None = None
    oom_score_adj: int = 0


@dataclass
class OomReport:
    """What the kernel printed before killing: why, where, and who else was there."""

    seq: int  # of the "invoked oom-killer" record
    ts_us: int
    trigger_comm: str
    gfp_mask: str = ""
    order: int | None = None
    trigger_pid: int | None = None
    memory_usage_kb: int | None = None  # "memory: usage ..., limit ..." (memcg OOMs)
    memory_limit_kb: int | None = None
    swap_limit_kb: int | None = None  # v2 "swap:" limit
    memsw_limit_kb: int | None = None  # v1 "memory+swap:" limit
    stats_cgroup: str | None = None  # "Memory cgroup stats for /a/b"
    candidates: list[Candidate] = field(default_factory=list)
    constraint: str | None = None  # memcg | global | cpuset | mempolicy
    oom_memcg: str | None = None  # the memcg whose limit was hit (memcg OOMs)
    task_memcg: str | None = None  # the victim's memcg
    victim_pid: int | None = None
    group_kill_cgroup: str | None = None  # "Tasks in /a/b are going to be killed due to memory.oom.group set"


@dataclass
class Kill:
    """A "Killed process" line, with the report that explains it when the kernel printed one."""

    seq: int
    ts_us: int
    pid: int
    comm: str
    reason: str  # "Memory cgroup out of memory", "Out of memory", ...
    values_kb: dict[str, int]  # total-vm, anon-rss, file-rss, shmem-rss, pgtables (kB)
    uid: int | None
    oom_score_adj: int | None
    report: OomReport | None
    chosen: bool = True  # the OOM killer chose it; False: a member of the chosen victim's memory.oom.group
    group_cgroup: str | None = None  # members: the cgroup whose memory.oom.group killed them
    duplicate: bool = False  # the kernel's second line for the chosen victim of a group kill


@dataclass
class _Group:
    """A memory.oom.group kill under way: its cgroup and its chosen victim."""

    cgroup: str
    chosen_pid: int
    ts_us: int
    repeated: bool = False  # the chosen victim's second line was seen


_INVOKED = re.compile(
    r"^(?P<comm>.*) invoked oom-killer: gfp_mask=(?P<gfp>\S+?),? order=(?P<order>-?\d+), oom_score_adj=(?P<adj>-?\d+)")
_CPU = re.compile(r"^CPU: \d+ (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: ")
_USAGE = re.compile(r"^(?P<what>memory|memory\+swap|swap|kmem): usage (?P<usage>\d+)kB, limit (?P<limit>\d+)kB")
_STATS = re.compile(r"^Memory cgroup stats for (?P<path>.*):$")
_GROUP = re.compile(r"^Tasks in (?P<path>.*) are going to be killed due to memory\.oom\.group set")
_KILLED = re.compile(
    r"^(?P<reason>[^:]*): Killed process (?P<pid>\d+) \((?P<comm>.*)\) (?P<rest>total-vm:.*)$")
_KB = re.compile(r"(?P<key>total-vm|anon-rss|file-rss|shmem-rss|pgtables):(?P<kb>\d+)kB")
_CANDIDATE = re.compile(r"^\[\s*(?P<pid>\d+)\]\s+(?P<fields>.*)$")
# Values the kernel prints for "no limit": PAGE_COUNTER_MAX in kB.
_UNLIMITED_KB = 1 << 50


class OomLogParser:
    """Feed kmsg records in order; get back each kill with the report that explains it."""

    def __init__(self) -> None:
        self.report: OomReport | None = None
        self._columns: list[str] | None = None  # the candidate table's header, while inside it
        self._last_kill: Kill | None = None
        self._group: _Group | None = None

    def feed(self, rec: Record) -> Kill | None:
        text = rec.text
        m = _INVOKED.match(text)
        if m:
            self.report = OomReport(rec.seq, rec.ts_us, m["comm"], m["gfp"].rstrip(","), int(m["order"]))
            self._columns = None
            self._group = None  # a new OOM: whatever group kill came before is over
            return None
        r = self.report
        if r is not None and rec.ts_us - r.ts_us > REPORT_WINDOW_US:
            self.report = r = None
        if self._group is not None and rec.ts_us - self._group.ts_us > GROUP_WINDOW_US:
            self._group = None
        if text.startswith("Killed process", text.find(": ") + 2) and (m := _KILLED.match(text)):
            return self._kill(rec, m)
        if (m := _GROUP.match(text)) and self._last_kill is not None:
            # Printed whether or not the report was (it is not rate-limited).
            self._group = _Group(m["path"], self._last_kill.pid, rec.ts_us)
            if r is not None:
                r.group_kill_cgroup = m["path"]
            return None
        if r is None:
            return None
        if self._columns is not None:
            c = _CANDIDATE.match(text)
            if c:
                self._candidate(r, int(c["pid"]), c["fields"].split())
                return None
            self._columns = None
        if m := _CPU.match(text):
            if r.trigger_pid is None:
                r.trigger_pid = int(m["pid"])
        elif m := _USAGE.match(text):
            usage, limit = int(m["usage"]), int(m["limit"])
            limit_or_none = None if limit >= _UNLIMITED_KB else limit
            if m["what"] == "memory":
                r.memory_usage_kb, r.memory_limit_kb = usage, limit_or_none
            elif m["what"] == "swap":
                r.swap_limit_kb = limit_or_none
            elif m["what"] == "memory+swap":
                r.memsw_limit_kb = limit_or_none
        elif m := _STATS.match(text):
            r.stats_cgroup = m["path"]
        elif text.startswith("[  pid  ]"):
            self._columns = text.split("]", 1)[1].split()
        elif text.startswith("oom-kill:"):
            kv = dict(p.split("=", 1) for p in text[len("oom-kill:"):].split(",") if "=" in p)
            r.constraint = CONSTRAINTS.get(kv.get("constraint", ""), kv.get("constraint"))
            r.oom_memcg = kv.get("oom_memcg")
            r.task_memcg = kv.get("task_memcg")
            r.victim_pid = int(kv["pid"]) if kv.get("pid", "").isdigit() else None
        return None

    def _candidate(self, r: OomReport, pid: int, values: list[str]) -> None:
        cols = self._columns or []
        # the name is last and may hold spaces: everything past the numeric columns
        nums, name = values[: len(cols) - 1], " ".join(values[len(cols) - 1:])
        try:
            row = dict(zip(cols[:-1], (int(v) for v in nums), strict=True))
        except ValueError:
            return
        r.candidates.append(Candidate(
            pid=pid,
            uid=row.get("uid", 0),
            tgid=row.get("tgid", pid),
            name=name,
            pages={k: row[k] for k in ("total_vm", "rss", "rss_anon", "rss_file", "rss_shmem", "swapents")
                   if k in row},
            pgtables_bytes=row.get("pgtables_bytes"),
            oom_score_adj=row.get("oom_score_adj", 0),
        ))

    def _kill(self, rec: Record, m: re.Match[str]) -> Kill:
        pid = int(m["pid"])
        rest = m["rest"]
        values = {k["key"]: int(k["kb"]) for k in _KB.finditer(rest)}
        uid = re.search(r"UID:(\d+)", rest)
        adj = re.search(r"oom_score_adj:(-?\d+)", rest)
        r = self.report
        # The report explains this kill when it names this victim, or when it
        # announced a memory.oom.group kill (every member gets a line).
        if r is not None and not (r.victim_pid == pid or r.group_kill_cgroup is not None
                                  or r.victim_pid is None):
            r = None
        kill = Kill(rec.seq, rec.ts_us, pid, m["comm"], m["reason"], values,
                    int(uid.group(1)) if uid else None, int(adj.group(1)) if adj else None, r)
        g = self._group
        if g is None:
            self._last_kill = kill
        elif pid == g.chosen_pid and not g.repeated:
            g.repeated = True
            kill.duplicate = True
        else:
            kill.chosen, kill.group_cgroup = False, g.cgroup
        return kill


class KmsgInput:
    """/dev/kmsg as kills: ``open()`` reads what the kernel still holds (the backlog),
    ``poll()`` what arrived since; each kill goes to ``on_kill(kill, backlog)``."""

    def __init__(self, path: Path, *, on_kill: Callable[[Kill, bool], None]) -> None:
        self.path = path
        self._on_kill = on_kill
        self._parser = OomLogParser()
        self.fd: int | None = None
        self.overwritten = 0  # records the kernel's ring overwrote before we read them
        self.bad = 0  # records that could not be read (logged)

    def open(self) -> None:
        """Raises OSError when the log cannot be read (needs root or CAP_SYSLOG). Opened again
        (after a failure), it reads the whole backlog again, with a parser of its own."""
        self._parser = OomLogParser()
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.read(backlog=True)

    def read(self, *, backlog: bool = False) -> None:
        assert self.fd is not None
        while True:
            try:
                raw = os.read(self.fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return
                if exc.errno == errno.EPIPE:  # the ring overwrote records we had not read yet
                    self.overwritten += 1
                    continue
                raise EdgeError(f"reading {self.path} failed: {exc.strerror}") from exc
            try:
                rec = parse_record(raw)
                if rec is None:
                    continue
                kill = self._parser.feed(rec)
                if kill is not None:
                    self._on_kill(kill, backlog)
            except Exception:  # one record the parser did not expect must not stop the log behind it
                self.bad += 1
                if self.bad <= 3 or self.bad % 1000 == 0:
                    log.exception("%s: a record could not be read (%d so far): %r", self.path, self.bad, raw[:200])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
