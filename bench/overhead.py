"""What pxo's eBPF probes cost a page-fault-bound workload (issues 3 and 15).

    cd /work/main && .venv/bin/python bench/overhead.py
    .venv/bin/python bench/overhead.py --rounds 10 --passes 8

The workload is a small C program (compiled here with cc), kept running across
runs: on each request it maps 256 MiB of anonymous memory, writes one byte to
every page (so the kernel takes a page fault and allocates a page for each:
kmem:mm_page_alloc fires once per page), unmaps it, --passes times, and reports
the CPU time of exactly that loop (CLOCK_THREAD_CPUTIME_ID), so neither start-up
nor waiting for a CPU that other work holds is measured (the machines are
shared).

Configurations: no probe loaded; the edge's default sources (DEFAULT_SOURCES:
alloc_rate from alloc_faults, which runs no program per page); the opt-in exact
alloc_rate probe alloc_bpf alone; and an empty program on kmem:mm_page_alloc:
what merely hooking that tracepoint costs, the floor under any per-page probe.

Two measures, each taken side by side for every configuration:

1. The kernel's BPF run-time statistics (BPF_ENABLE_STATS, as
   `sysctl kernel.bpf_stats_enabled=1`): the run_time_ns of every program the
   configuration's sources hold (found through the prog_id of this process's
   /proc/self/fdinfo), summed over the workload's runs, as a fraction of the
   workload's CPU time. It counts the programs alone, not the cost of entering
   them (an empty program's share shows how much of that there is).
2. The workload's slowdown against no probe: configurations rotate within each
   round (A B C, B C A, ...), each block summarised by its fastest run; reported
   are the median over rounds of the ratio to the block without probes of the same
   round ("paired", which slow drift cannot move). Statistics are off here (their
   clock reads would add to every program run).

Sources run with their programs pinned under a private root in bpffs, unpinned
after each block, so that a configuration's programs never outlive it.

Needs root (it loads eBPF programs) and a C compiler. About three minutes with the defaults.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from pxo.edge.btf import Btf
from pxo.edge.sources import DEFAULT_SOURCES, SOURCES
from pxo.edge.sources.base import Source, SourceContext

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
EXACT = "alloc_bpf"
FLOOR = "empty prog on mm_page_alloc"
PIN_ROOT = Path(f"/sys/fs/bpf/pxo-bench-{os.getpid()}")

# The workload: on each stdin line "MIB PASSES", fault in MIB MiB page by page PASSES
# times; print the CPU seconds that took.
_WORKER_C = r"""
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	long mib, passes, page = sysconf(_SC_PAGESIZE);

	while (scanf("%ld %ld", &mib, &passes) == 2) {
		size_t size = (size_t)mib << 20;
		struct timespec a, b;

		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
		for (long p = 0; p < passes; p++) {
			char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (m == MAP_FAILED)
				return 1;
			madvise(m, size, MADV_NOHUGEPAGE); /* one fault, one order-0 allocation, per page */
			for (size_t off = 0; off < size; off += page)
				((volatile char *)m)[off] = 1;
			munmap(m, size);
		}
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
		printf("%.9f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
		fflush(stdout);
	}
	return 0;
}
"""


class Worker:
    """The workload process, kept across runs."""

    def __init__(self, workdir: Path) -> None:
        src, exe = workdir / "faults.c", workdir / "faults"
        src.write_text(_WORKER_C)
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("overhead: needs a C compiler (cc) for the workload")
        subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, mib: int, passes: int) -> float:
        """CPU seconds of one run."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{mib} {passes}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"overhead: the workload died (exit {self.proc.wait()})")
        return float(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


class NullSink:
    def append(self, table: str, row: Mapping[str, Any]) -> None:
        pass


def unpin_programs() -> None:
    """Unpin every program under the bench's root (the kernel facts stay: they take a while)."""
    if PIN_ROOT.is_dir():
        for p in PIN_ROOT.iterdir():
            if p.is_dir():
                shutil.rmtree(p)


@contextmanager
def running(names: list[str]) -> Iterator[list[Source]]:
    started: list[Source] = []
    ctx = SourceContext(sink=NullSink(), pin_root=PIN_ROOT)
    try:
        for name in names:
            src = SOURCES[name](ctx)
            src.start()
            started.append(src)
        yield started
    finally:
        for src in reversed(started):
            src.stop()
        unpin_programs()


@contextmanager
def empty_program() -> Iterator[Any]:
    """An empty BPF program on the raw tracepoint alloc_bpf uses: the floor of any per-page probe."""
    from bcc import BPF  # heavy, and only this needs it

    bpf = BPF(text="RAW_TRACEPOINT_PROBE(mm_page_alloc) { return 0; }")
    try:
        yield bpf
    finally:
        bpf.cleanup()


def loadable(names: list[str]) -> list[str]:
    """The sources that start on this machine; the others are named and left out."""
    ok = []
    for name in names:
        try:
            with running([name]) as [src]:
                if src.status.state not in ("running", "degraded"):
                    raise RuntimeError(src.status.detail or src.status.state)
            ok.append(name)
        except Exception as exc:
            print(f"  {name}: cannot start here, left out ({exc})")
    return ok


# -- the kernel's BPF run-time statistics ------------------------------------------

_SYS_BPF = 321  # x86_64
_BPF_PROG_GET_FD_BY_ID, _BPF_OBJ_GET_INFO_BY_FD, _BPF_ENABLE_STATS, _BPF_STATS_RUN_TIME = 13, 15, 32, 0


class ProgStats:
    """run_time_ns and run_cnt of BPF programs, counted while enabled() holds the stats on."""

    def __init__(self) -> None:
        btf = Btf.load()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._size = btf.sizeof("bpf_prog_info")  # struct layouts from BTF, as everywhere in pxo
        self._run_time = btf.offset("bpf_prog_info", "run_time_ns")
        self._run_cnt = btf.offset("bpf_prog_info", "run_cnt")

    @contextmanager
    def enabled(self) -> Iterator[None]:
        """Run-time statistics on for every program (the kernel counts while this fd is open)."""
        attr = (ctypes.c_uint32 * 4)(_BPF_STATS_RUN_TIME)
        fd = self._libc.syscall(_SYS_BPF, _BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
        try:
            yield
        finally:
            os.close(fd)

    def read(self, prog_id: int) -> tuple[int, int]:
        """(run_time_ns, run_cnt) so far of the program with this id."""
        attr = (ctypes.c_uint32 * 4)(prog_id)
        fd = self._libc.syscall(_SYS_BPF, _BPF_PROG_GET_FD_BY_ID, attr, ctypes.sizeof(attr))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_PROG_GET_FD_BY_ID")
        try:
            info = (ctypes.c_uint8 * self._size)()
            req = (ctypes.c_uint64 * 2)()  # {u32 bpf_fd; u32 info_len; u64 info}
            req[0] = fd | self._size << 32
            req[1] = ctypes.addressof(info)
            if self._libc.syscall(_SYS_BPF, _BPF_OBJ_GET_INFO_BY_FD, req, ctypes.sizeof(req)) < 0:
                raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
        finally:
            os.close(fd)
        return (ctypes.c_uint64.from_buffer(info, self._run_time).value,
                ctypes.c_uint64.from_buffer(info, self._run_cnt).value)


def held_programs() -> set[int]:
    """Ids of the BPF programs this process holds: a program's fd or an attachment's (link) fd."""
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.2f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The CPU share of pxo's eBPF programs in a page-fault-bound workload, and its slowdown.",
        epilog="example: bench/overhead.py --rounds 10 --passes 8")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of one block per configuration (default 6)")
    parser.add_argument("--runs", type=int, default=3, help="runs per block (default 3)")
    parser.add_argument("--mib", type=int, default=256, help="MiB faulted in per pass (default 256)")
    parser.add_argument("--passes", type=int, default=8, help="map/touch/unmap passes per run (default 8)")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between starting the sources and the first run (default 0.3)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("overhead: needs root to load eBPF programs", file=sys.stderr)
        return 2

    faults = args.mib * MIB // PAGE * args.passes
    print(f"pxo probe overhead: {args.passes} x {args.mib} MiB faulted in per run ({faults} page faults), "
          f"{args.rounds} rounds x {args.runs} runs, {os.cpu_count()} CPUs, kernel {os.uname().release}")
    wanted = [*DEFAULT_SOURCES, EXACT]
    print("checking the sources:", ", ".join(wanted))
    ok = loadable(wanted)
    default = [n for n in DEFAULT_SOURCES if n in ok]
    configs: dict[str, list[str]] = {"none": [], "default sources": default}
    if EXACT in ok:
        configs[f"{EXACT} (opt-in)"] = [EXACT]
    configs[FLOOR] = []
    names = list(configs)
    print("default sources:", ", ".join(default))

    def loaded(name: str) -> AbstractContextManager[Any]:
        if name == FLOOR:
            return empty_program()
        return running(configs[name]) if configs[name] else nullcontext()

    stats = ProgStats()
    workdir = Path(tempfile.mkdtemp(prefix="pxo-overhead-"))
    worker = Worker(workdir)
    try:
        worker.run(args.mib, args.passes)  # warm-up: allocator, page tables, CPU frequency
        block: dict[str, list[float]] = defaultdict(list)  # fastest CPU time of each round's block
        share: dict[str, list[tuple[int, int, float]]] = defaultdict(list)  # (prog ns, prog runs, workload s)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                before = held_programs()
                with loaded(name):
                    time.sleep(args.settle)
                    block[name].append(min(worker.run(args.mib, args.passes) for _ in range(args.runs)))
                    progs = held_programs() - before
                    with stats.enabled():
                        s0 = {p: stats.read(p) for p in progs}
                        cpu = worker.run(args.mib, args.passes)
                        s1 = {p: stats.read(p) for p in progs}
                    share[name].append((sum(s1[p][0] - s0[p][0] for p in progs),
                                        sum(s1[p][1] - s0[p][1] for p in progs), cpu))
            print(f"  round {r + 1:>2}/{args.rounds}, CPU s: "
                  + "  ".join(f"{n[:12]} {block[n][-1]:.3f}" for n in names))

        print()
        print(f"{'configuration':<28} {'BPF CPU share':>13} {'ns/call':>8} {'calls/fault':>11} "
              f"{'CPU s':>7} {'paired':>8}")
        for name in names:
            ns = sum(x[0] for x in share[name])
            calls = sum(x[1] for x in share[name])
            cpu = sum(x[2] for x in share[name])
            paired = statistics.median(x / b for x, b in zip(block[name], block["none"], strict=True))
            print(f"{name:<28} {ns / (cpu * 1e9) * 100:>12.2f}% {f'{ns / calls:.0f}' if calls else '-':>8} "
                  f"{calls / (faults * len(share[name])):>11.4f} {statistics.median(block[name]):>7.3f} "
                  f"{pct(paired) if name != 'none' else '':>8}")
        print("BPF CPU share: the programs' run_time_ns (kernel BPF statistics) over the workload's CPU time,")
        print("in runs with statistics on; paired: median over rounds of the slowdown against the block")
        print("without probes of the same round, statistics off. ns/call includes the statistics' own clock")
        print("reads: compare with the empty program.")
    finally:
        worker.close()
        shutil.rmtree(workdir)
        unpin_programs()
        if PIN_ROOT.is_dir():
            shutil.rmtree(PIN_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
