"""The joiner on both inputs' accounts as the kernel produces them, in every order
they arrive in: one row per killed task, a group kill under one oom_id."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pxo.edge.kmsg import Kill, OomLogParser, Record
from pxo.edge.oomjoin import BpfKill, OomJoiner
from pxo.edge.sources.oom import kmsg_row

T0 = dt.datetime(2026, 12, 6, 12, 0, 0)
KILLED = ("Memory cgroup out of memory: Killed process {pid} ({comm}) total-vm:1000kB, anon-rss:900kB, "
          "file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:40kB oom_score_adj:0")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, *, has_bpf: bool = True, has_kmsg: bool = True,
                 state: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.rows: list[dict[str, Any]] = []
        self.candidates: list[str] = []
        self.state_reads: list[str] = []
        self._state = state if state is not None else {"usage_bytes": 1, "limit_bytes": 64 << 20,
                                                       "peak_bytes": 64 << 20, "swap_bytes": 0,
                                                       "events_oom_kill": 4}
        self.parser = OomLogParser()
        self.seq = 500
        self.joiner = OomJoiner(
            boot_id="boot", emit_row=self.rows.append,
            emit_candidates=lambda r, oom_id, when: self.candidates.append(oom_id),
            memcg_state=self._read, kmsg_row=lambda k: kmsg_row(k, to_utc=lambda _: T0),
            pool=lambda c, limit, swap: limit, recorded=lambda *_: False, to_utc=lambda _: T0,
            has_bpf=has_bpf, has_kmsg=has_kmsg, clock=self.clock)

    def _read(self, path: str) -> dict[str, Any]:
        self.state_reads.append(path)
        return dict(self._state)

    def log(self, *lines: str, backlog: bool = False) -> list[Kill]:
        kills = []
        for text in lines:
            self.seq += 1
            k = self.parser.feed(Record(6, self.seq, 0, text))  # ts 0: T0 (to_utc below)
            if k is not None:
                kills.append(k)
                self.joiner.on_kmsg(k, backlog=backlog)
        return kills

    def bpf(self, tid: int, *, trigger: int = 7, member: bool | None = False, cgroup: str = "/g",
            constraint: str | None = "memcg", oom_memcg: str | None = "/g", group: str | None = None) -> None:
        row = {"time": T0, "pid": tid, "tid": tid, "comm": f"t{tid}", "cgroup_path": cgroup,
               "anon_rss_bytes": 1 << 20}
        self.joiner.on_bpf(BpfKill(tid=tid, row=row, trigger_tid=trigger, killed=True, member=member,
                                   constraint=constraint, oom_memcg_path=oom_memcg, group_path=group,
                                   oom_memcg_usage_bytes=64 << 20, oom_memcg_limit_bytes=64 << 20))

    def settle(self, seconds: float = 2.0) -> list[dict[str, Any]]:
        self.clock.now += seconds
        self.joiner.expire()
        return self.rows


def report(victim: int, memcg: str = "/g") -> list[str]:
    return [f"t{victim} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
            "memory: usage 65536kB, limit 65536kB, failcnt 9",
            f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={memcg},"
            f"task_memcg={memcg},task=t{victim},pid={victim},uid=0"]


def test_a_kill_seen_by_both_is_one_row_whichever_comes_first() -> None:
    for bpf_first in (True, False):
        h = Harness()
        if bpf_first:
            h.bpf(10)
            h.log(*report(10), KILLED.format(pid=10, comm="t10"))
        else:
            h.log(*report(10), KILLED.format(pid=10, comm="t10"))
            h.bpf(10)
        [row] = h.settle()
        assert row["origin"] == "bpf+kmsg" and row["anon_rss_bytes"] == 1 << 20  # eBPF's figures
        assert row["constraint"] == "memcg" and row["oom_memcg_path"] == "/g" and row["report_logged"] is True
        assert row["chosen"] is True and row["oom_group_path"] is None and row["oom_id"] == "boot:501"
        assert row["memcg_usage_bytes"] == 65536 * 1024  # the report's, printed at the kill
        assert h.candidates == ["boot:501"]


def test_a_group_kill_of_three_is_three_rows_under_one_oom_id() -> None:
    """The kernel logs the chosen victim twice (and counts it twice); eBPF sees it once."""
    h = Harness()
    h.bpf(10, member=False, group="/g")
    h.log(*report(10), KILLED.format(pid=10, comm="t10"),
          "Tasks in /g are going to be killed due to memory.oom.group set",
          KILLED.format(pid=10, comm="t10"))
    h.bpf(11, member=True, group="/g")
    h.bpf(12, member=True, group="/g")
    h.log(KILLED.format(pid=11, comm="t11"), KILLED.format(pid=12, comm="t12"))
    rows = h.settle()
    assert sorted(r["tid"] for r in rows) == [10, 11, 12]
    assert {r["oom_id"] for r in rows} == {"boot:501"}
    assert [r["chosen"] for r in rows] == [True, False, False]
    assert all(r["oom_group_path"] == "/g" and r["origin"] == "bpf+kmsg" for r in rows)
    figures = {(r["memcg_usage_bytes"], r["memcg_limit_bytes"], r["memcg_oom_kills"]) for r in rows}
    assert len(figures) == 1  # one reading for the whole invocation
    assert h.candidates == ["boot:501"]


def test_a_rate_limited_kill_takes_why_from_ebpf() -> None:
    h = Harness()
    h.bpf(20, constraint="memcg", oom_memcg="/p")
    h.log(KILLED.format(pid=20, comm="t20"))  # the kernel printed no report
    [row] = h.settle()
    assert row["report_logged"] is False and row["origin"] == "bpf+kmsg"
    assert row["constraint"] == "memcg" and row["oom_memcg_path"] == "/p"
    assert row["oom_id"] == "boot:501" and row["kmsg_seq"] == 501 and h.candidates == []
    assert row["memcg_limit_bytes"] == 64 << 20  # the page counter's, at the kill


def test_a_rate_limited_group_kill_is_still_grouped() -> None:
    h = Harness()
    h.bpf(30, member=False, group="/g")
    h.bpf(31, member=True, group="/g")
    h.log(KILLED.format(pid=30, comm="t30"),
          "Tasks in /g are going to be killed due to memory.oom.group set",
          KILLED.format(pid=30, comm="t30"), KILLED.format(pid=31, comm="t31"))
    rows = h.settle()
    assert [(r["tid"], r["chosen"]) for r in rows] == [(30, True), (31, False)]
    assert {r["oom_id"] for r in rows} == {"boot:501"} and all(r["report_logged"] is False for r in rows)


def test_the_kernel_log_alone_groups_and_dedupes() -> None:
    h = Harness(has_bpf=False)
    h.log(*report(40), KILLED.format(pid=40, comm="t40"),
          "Tasks in /g are going to be killed due to memory.oom.group set",
          KILLED.format(pid=40, comm="t40"), KILLED.format(pid=41, comm="t41"), KILLED.format(pid=42, comm="t42"))
    rows = h.settle()
    assert [(r["tid"], r["chosen"], r["origin"]) for r in rows] == [
        (40, True, "kmsg"), (41, False, "kmsg"), (42, False, "kmsg")]
    assert {r["oom_id"] for r in rows} == {"boot:501"} and all(r["oom_group_path"] == "/g" for r in rows)


def test_ebpf_alone_has_no_report_to_speak_of() -> None:
    h = Harness(has_kmsg=False)
    h.bpf(50)
    [row] = h.settle(0.2)  # nothing to wait for but the settle time
    assert row["origin"] == "bpf" and "report_logged" not in row and row["constraint"] == "memcg"
    assert row["oom_id"].startswith("boot:bpf-")


def test_a_missing_half_is_waited_for_then_given_up() -> None:
    h = Harness()
    h.bpf(60)
    assert h.settle(0.5) == []  # within the join window: still waiting for the log line
    [row] = h.settle(h.joiner.join_window)
    assert row["origin"] == "bpf" and row["report_logged"] is False
    h.log(KILLED.format(pid=61, comm="t61"))  # eBPF never saw this one (its buffer overflowed)
    h.settle(5.0)
    assert len(h.rows) == 1  # eBPF may only be late: a held-back ring buffer is in order
    h.settle(5.0)
    assert [r["origin"] for r in h.rows] == ["bpf", "kmsg"] and h.rows[1]["tid"] == 61


def test_a_later_kill_from_ebpf_means_the_earlier_one_was_lost() -> None:
    h = Harness()
    h.log(KILLED.format(pid=62, comm="t62"))
    h.settle(0.2)
    later = T0 + dt.timedelta(seconds=2)
    h.joiner.on_bpf(BpfKill(tid=63, row={"time": later, "tid": 63, "pid": 63, "cgroup_path": "/g"},
                            trigger_tid=63, killed=True, member=False))
    h.settle(0.2)
    assert [(r["tid"], r["origin"]) for r in h.rows] == [(62, "kmsg")]  # eBPF's events are in order


def test_separate_invocations_get_separate_ids_and_readings() -> None:
    h = Harness()
    for tid in (70, 71):
        h.bpf(tid, trigger=tid)
        h.log(*report(tid), KILLED.format(pid=tid, comm=f"t{tid}"))
    rows = h.settle()
    assert len({r["oom_id"] for r in rows}) == 2
    assert len(h.state_reads) >= 2


def test_backlog_kills_are_recovered_once_grouped() -> None:
    h = Harness()
    h.log(*report(80), KILLED.format(pid=80, comm="t80"),
          "Tasks in /g are going to be killed due to memory.oom.group set",
          KILLED.format(pid=80, comm="t80"), KILLED.format(pid=81, comm="t81"), backlog=True)
    h.joiner.expire(force=True)
    assert [(r["tid"], r["origin"], r["chosen"]) for r in h.rows] == [
        (80, "kmsg-backlog", True), (81, "kmsg-backlog", False)]
    assert h.state_reads == []  # today's state of a past kill's cgroup would mislead


def test_a_task_that_was_already_exiting_is_not_a_kill() -> None:
    h = Harness()
    h.joiner.on_bpf(BpfKill(tid=90, row={"time": T0, "tid": 90}, trigger_tid=90, killed=False))
    assert h.settle() == [] and h.joiner.not_killed == 1


def test_an_account_too_late_to_join_is_not_a_second_kill() -> None:
    h = Harness()
    h.log(KILLED.format(pid=95, comm="t95"))
    h.settle(10.5)  # eBPF's account did not come within bpf_wait: the log's row is written
    h.bpf(95)
    h.settle()
    assert [r["origin"] for r in h.rows] == ["kmsg"] and h.joiner.late == 1
