"""Parsing the kernel log's OOM reports: a report captured from this kernel,
and the layouts other kernels and other OOM kinds print."""

from __future__ import annotations

from pathlib import Path

from pxo.edge.kmsg import Kill, OomLogParser, Record, parse_record

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kmsg"


def records(raw: bytes) -> list[Record]:
    out = []
    for line in raw.split(b"\n"):
        if line and not line.startswith(b" "):
            rec = parse_record(line)
            assert rec is not None, line
            out.append(rec)
    return out


def feed(recs: list[Record]) -> list[Kill]:
    p = OomLogParser()
    return [k for r in recs if (k := p.feed(r)) is not None]


def synthetic(lines: list[str], start_seq: int = 100, ts: int = 5_000_000) -> list[Record]:
    return [Record(6, start_seq + i, ts + i, text) for i, text in enumerate(lines)]


def test_record_format() -> None:
    r = parse_record(b"6,1922,1837408342,-;oom-kill:constraint=CONSTRAINT_MEMCG\n SUBSYSTEM=x\n")
    assert r == Record(6, 1922, 1837408342, "oom-kill:constraint=CONSTRAINT_MEMCG")
    assert parse_record(b"garbage") is None and parse_record(b"a,b,c;x") is None


def test_memcg_oom_captured_from_this_kernel() -> None:
    kills = feed(records((FIXTURES / "memcg_v1_oom.bin").read_bytes()))
    assert len(kills) == 1
    k = kills[0]
    assert (k.pid, k.comm, k.reason, k.uid, k.oom_score_adj) == (
        18442, "pxo-oom-drill", "Memory cgroup out of memory", 0, 0)
    assert k.values_kb == {"total-vm": 81464, "anon-rss": 70144, "file-rss": 5936, "shmem-rss": 0, "pgtables": 192}
    r = k.report
    assert r is not None
    cg = "/process_api/addea563d4ef84580c90b9c474500802/pxo-oom-drill-95ec327a"
    assert (r.constraint, r.oom_memcg, r.task_memcg, r.victim_pid) == ("memcg", cg, cg, 18442)
    assert (r.trigger_comm, r.trigger_pid, r.gfp_mask, r.order) == ("pxo-oom-drill", 18442, "0xcc0(GFP_KERNEL)", 0)
    assert (r.memory_usage_kb, r.memory_limit_kb, r.memsw_limit_kb) == (65536, 65536, 65536)
    assert r.stats_cgroup == cg
    assert len(r.candidates) == 1
    c = r.candidates[0]
    assert (c.pid, c.uid, c.tgid, c.name, c.pgtables_bytes, c.oom_score_adj) == (
        18442, 0, 18442, "pxo-oom-drill", 196608, 0)
    assert c.pages == {"total_vm": 20366, "rss": 19020, "rss_anon": 17536, "rss_file": 1484, "rss_shmem": 0,
                       "swapents": 0}


def test_global_oom_with_older_candidate_columns() -> None:
    kills = feed(synthetic([
        "java invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0",
        "CPU: 3 PID: 999 Comm: java Not tainted 5.15.0 #1",
        "Tasks state (memory values in pages):",
        "[  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents oom_score_adj name",
        "[    999]  1000   999  4000000  3900000 31000000        0             0 java",
        "[   1234]     0  1234    10000      500    90112        0          -999 kube proxy",
        "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
        "task_memcg=/kubepods/burstable/podx/abc,task=java,pid=999,uid=1000",
        "Out of memory: Killed process 999 (java) total-vm:16000000kB, anon-rss:15600000kB, file-rss:0kB, "
        "shmem-rss:0kB, UID:1000 pgtables:30273kB oom_score_adj:0",
    ]))
    assert len(kills) == 1 and kills[0].reason == "Out of memory"
    r = kills[0].report
    assert r is not None and r.constraint == "global" and r.oom_memcg is None
    assert r.task_memcg == "/kubepods/burstable/podx/abc" and r.memory_limit_kb is None
    assert [(c.pid, c.name, c.pages["rss"], c.oom_score_adj) for c in r.candidates] == [
        (999, "java", 3900000, 0), (1234, "kube proxy", 500, -999)]


def test_group_kill_explains_every_member() -> None:
    kills = feed(synthetic([
        "a invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "memory: usage 102400kB, limit 102400kB, failcnt 12",
        "swap: usage 0kB, limit 9007199254740988kB, failcnt 0",
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/g,"
        "task_memcg=/g,task=a,pid=10,uid=0",
        "Memory cgroup out of memory: Killed process 10 (a) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
        "shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
        "Tasks in /g are going to be killed due to memory.oom.group set",
        "Memory cgroup out of memory: Killed process 11 (b) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
        "shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
    ]))
    assert [k.pid for k in kills] == [10, 11]
    assert all(k.report is not None and k.report.oom_memcg == "/g" for k in kills)
    assert kills[0].report is not None and kills[0].report.swap_limit_kb is None  # unlimited


def test_rate_limited_kill_has_no_report() -> None:
    """The kernel rate-limits the report but never the kill line."""
    kills = feed(synthetic([
        "a invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/x,task_memcg=/x,task=a,pid=10,uid=0",
        "Memory cgroup out of memory: Killed process 10 (a) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
        "shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
        "Memory cgroup out of memory: Killed process 20 (c) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
        "shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
    ]))
    assert [(k.pid, k.report is not None) for k in kills] == [(10, True), (20, False)]


def test_group_kill_second_line_for_the_chosen_victim_is_a_duplicate() -> None:
    """The kernel kills (and logs) the chosen victim again among its group's members."""
    line = ("Memory cgroup out of memory: Killed process {} (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
            "shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0")
    for with_report in (True, False):  # the group lines are printed even when the report is rate-limited
        head = ["x invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
                "oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/g,task_memcg=/g/a,task=x,pid=10,uid=0"]
        kills = feed(synthetic([*(head if with_report else []), line.format(10),
                                "Tasks in /g are going to be killed due to memory.oom.group set",
                                line.format(10), line.format(11), line.format(12)]))
        assert [(k.pid, k.chosen, k.duplicate, k.group_cgroup) for k in kills] == [
            (10, True, False, None), (10, True, True, None), (11, False, False, "/g"), (12, False, False, "/g")]
        assert all((k.report is not None) == with_report for k in kills)


def test_a_new_oom_ends_the_group() -> None:
    line = ("Memory cgroup out of memory: Killed process {} (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
            "shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0")
    kills = feed(synthetic([line.format(10), "Tasks in /g are going to be killed due to memory.oom.group set",
                            line.format(10), line.format(11),
                            "y invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
                            line.format(20)]))
    assert [(k.pid, k.chosen) for k in kills if not k.duplicate] == [(10, True), (11, False), (20, True)]
