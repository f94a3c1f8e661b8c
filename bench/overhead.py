"""What pxo's eBPF probes cost a page-fault-heavy workload (issue 3).

    cd /work/main && .venv/bin/python bench/overhead.py
    .venv/bin/python bench/overhead.py --sources alloc_bpf,reclaim_bpf --rounds 20

The workload is one long-lived child process that, on each request, maps
anonymous memory, writes one byte to every page (so the kernel takes a page
fault and allocates a page for each: kmem:mm_page_alloc fires once per page),
unmaps it, and repeats; it reports the CPU time of exactly that loop, so
neither interpreter start-up nor waiting for a CPU that other work holds is
measured (the machines are shared).

Configurations: no probe loaded; every BPF source of pxo loaded (the Source
subclasses of every pxo.edge.sources module whose name ends in "_bpf", or
those named by --sources); the alloc_rate source alone, the hot one; and,
for reference, an empty program on kmem:mm_page_alloc: what merely hooking
that tracepoint costs, the floor under any per-page probe (on machines
where calls and returns are expensive, e.g. with retpolines and AMD's
"Safe RET", it is most of alloc_bpf's cost). They are interleaved, one block of --runs runs of each per round in a
rotating order (A B C, B C A, ...), so that drift on the machine hits every
configuration alike. Sources are started before each block and stopped after
it, their threads polling and draining as in the edge.

On a shared machine even CPU time is noisy (a busy sibling hyperthread slows
the workload's instructions), and the noise only ever adds time. So each
block is summarised by its fastest run, and reported are: the median over
rounds of those, its slowdown against no probes, and the median of the
per-round ratios to the block without probes of the same round ("paired",
the figure that slow drift cannot move); then the plain median of all runs.

Finally, with every selected source loaded once more, the kernel's own BPF
run-time statistics (BPF_ENABLE_STATS, on only for that last run) give each
program's own cost per call and calls per page fault, next to the empty
program's.

Needs root (it loads eBPF programs). About two minutes with the defaults.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import mmap
import os
import pkgutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import pxo.edge.sources
from pxo.edge.btf import Btf
from pxo.edge.sources.base import Source

MIB = 1 << 20
ALLOC = "alloc_bpf"
FLOOR = "empty prog, mm_page_alloc"

# The child: on each line "MIB PASSES" from stdin, fault in MIB MiB page by
# page PASSES times and print the CPU seconds that took. The strided
# memoryview write touches one byte per page from C, so the loop is page
# faults (and the unmap that frees the pages), not interpreter.
_WORKER = r"""
import mmap, sys, time
for line in sys.stdin:
    mib, passes = map(int, line.split())
    size = mib << 20
    ones = b"\x01" * (size // mmap.PAGESIZE)
    start = time.thread_time()
    for _ in range(passes):
        m = mmap.mmap(-1, size)
        m.madvise(mmap.MADV_NOHUGEPAGE)  # one fault, one order-0 allocation, per 4 KiB page
        view = memoryview(m)
        view[::mmap.PAGESIZE] = ones
        view.release()
        m.close()
    print(time.thread_time() - start, flush=True)
"""


class Worker:
    """The workload process, kept across runs."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

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


class CountingSink:
    """Keeps no rows: counts them, and the alloc_rate bytes per pid (to check the probe saw the workload)."""

    def __init__(self) -> None:
        self.rows = 0
        self.alloc_bytes: dict[int, int] = defaultdict(int)

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        self.rows += 1
        if table == "alloc_rate":
            self.alloc_bytes[row["pid"]] += row["alloc_bytes"]


def discover() -> dict[str, type[Source]]:
    """Every Source subclass defined in a module of pxo.edge.sources, by name."""
    for mod in pkgutil.iter_modules(pxo.edge.sources.__path__):
        importlib.import_module(f"pxo.edge.sources.{mod.name}")
    found: dict[str, type[Source]] = {}
    todo = list(Source.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.name and cls.__module__.startswith("pxo.edge.sources."):
            found.setdefault(cls.name, cls)
    return found


@contextmanager
def running(classes: list[type[Source]], sink: CountingSink) -> Iterator[list[Source]]:
    started: list[Source] = []
    try:
        for cls in classes:
            src = cls(sink=sink)
            src.start()
            started.append(src)
        yield started
    finally:
        for src in reversed(started):
            src.stop()  # alloc_bpf drains its last interval on stop


def loadable(names: list[str], known: dict[str, type[Source]]) -> list[str]:
    """The sources that start on this machine; the others are named and left out."""
    ok = []
    for name in names:
        try:
            with running([known[name]], CountingSink()):
                pass
            ok.append(name)
        except Exception as exc:
            print(f"  {name}: cannot start here, left out ({exc})")
    return ok


@contextmanager
def empty_program() -> Iterator[Any]:
    """An empty BPF program on the raw tracepoint alloc_bpf uses: the floor of any per-page probe."""
    from bcc import BPF  # heavy, and only this needs it

    bpf = BPF(text="RAW_TRACEPOINT_PROBE(mm_page_alloc) { return 0; }")
    try:
        yield bpf
    finally:
        bpf.cleanup()


# -- the kernel's BPF run-time statistics ------------------------------------------

_SYS_BPF = 321  # x86_64
_BPF_OBJ_GET_INFO_BY_FD, _BPF_ENABLE_STATS, _BPF_STATS_RUN_TIME = 15, 32, 0


class ProgStats:
    """run_time_ns and run_cnt of BPF programs, counted while enable() holds the stats on."""

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

    def read(self, prog_fd: int) -> tuple[int, int]:
        """(run_time_ns, run_cnt) so far."""
        info = (ctypes.c_uint8 * self._size)()
        attr = (ctypes.c_uint64 * 2)()  # {u32 bpf_fd; u32 info_len; u64 info}
        attr[0] = prog_fd | self._size << 32
        attr[1] = ctypes.addressof(info)
        if self._libc.syscall(_SYS_BPF, _BPF_OBJ_GET_INFO_BY_FD, attr, ctypes.sizeof(attr)) < 0:
            raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
        return (ctypes.c_uint64.from_buffer(info, self._run_time).value,
                ctypes.c_uint64.from_buffer(info, self._run_cnt).value)


def programs(src: Source) -> dict[str, int]:
    """A source's loaded BPF programs, name -> fd (bench-only look inside its bcc object)."""
    bpf = getattr(src, "_bpf", None)
    funcs = getattr(bpf, "funcs", {}) if bpf is not None else {}
    return {name.decode(): fn.fd for name, fn in funcs.items()}


def per_call_costs(classes: list[type[Source]], worker: Worker, mib: int, passes: int) -> None:
    stats = ProgStats()
    with empty_program() as empty, running(classes, CountingSink()) as sources:
        progs = {f"({FLOOR})": empty.funcs[b"raw_tracepoint__mm_page_alloc"].fd}
        for src in sources:
            progs.update({f"{src.name} {name}": fd for name, fd in programs(src).items()})
        with stats.enabled():
            before = {k: stats.read(fd) for k, fd in progs.items()}
            worker.run(mib, passes)
            after = {k: stats.read(fd) for k, fd in progs.items()}
    faults = mib * MIB // mmap.PAGESIZE * passes
    print(f"{'program (kernel BPF statistics, one run)':<58} {'ns/call':>8} {'calls/fault':>11}")
    for k in progs:
        ns, calls = after[k][0] - before[k][0], after[k][1] - before[k][1]
        label = k if len(k) <= 58 else k[:55] + "..."
        print(f"{label:<58} {f'{ns / calls:.0f}' if calls else '-':>8} {calls / faults:>11.2f}")
    print("ns/call includes the statistics' own clock reads: compare with the empty program")


def pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.2f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Slowdown of a page-fault-heavy workload with pxo's eBPF probes loaded.",
        epilog="example: bench/overhead.py --sources alloc_bpf --rounds 20")
    parser.add_argument("--sources", default="",
                        help="comma-separated source names (default: every source named *_bpf)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds of one block per configuration (default 12)")
    parser.add_argument("--runs", type=int, default=5, help="runs per block (default 5)")
    parser.add_argument("--mib", type=int, default=256, help="MiB faulted in per pass (default 256)")
    parser.add_argument("--passes", type=int, default=1, help="map/touch/unmap passes per run (default 1)")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between starting the sources and the first run (default 0.3)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("overhead: needs root to load eBPF programs", file=sys.stderr)
        return 2

    known = discover()
    wanted = [s for s in args.sources.split(",") if s] or sorted(n for n in known if n.endswith("_bpf") or n == "oom")
    unknown = [s for s in wanted if s not in known]
    if unknown:
        print(f"overhead: unknown source(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
              file=sys.stderr)
        return 2
    faults = args.mib * MIB // mmap.PAGESIZE * args.passes
    print(f"pxo probe overhead: {args.passes} x {args.mib} MiB faulted in per run ({faults} page faults), "
          f"{args.rounds} rounds x {args.runs} runs, {os.cpu_count()} CPUs, kernel {os.uname().release}")
    print("checking the sources:", ", ".join(wanted))
    selected = loadable(wanted, known)
    if not selected:
        print("overhead: no source could start", file=sys.stderr)
        return 1
    configs: dict[str, list[str]] = {"none": [], "+".join(selected): selected}
    if ALLOC in selected and selected != [ALLOC]:
        configs[ALLOC] = [ALLOC]
    if ALLOC in selected:
        configs[FLOOR] = []
    names = list(configs)

    def loaded(name: str, sink: CountingSink) -> AbstractContextManager[Any]:
        if name == FLOOR:
            return empty_program()
        return running([known[s] for s in configs[name]], sink) if configs[name] else nullcontext()

    worker = Worker()
    try:
        worker.run(args.mib, args.passes)  # warm-up: allocator, page tables, CPU frequency
        cpu: dict[str, list[float]] = defaultdict(list)
        block: dict[str, list[float]] = defaultdict(list)  # fastest CPU time of each round's block
        seen: dict[str, list[float]] = defaultdict(list)  # share of the workload's bytes alloc_bpf counted
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                sink = CountingSink()
                with loaded(name, sink):
                    time.sleep(args.settle)
                    runs = [worker.run(args.mib, args.passes) for _ in range(args.runs)]
                cpu[name] += runs
                block[name].append(min(runs))
                if ALLOC in configs[name]:
                    seen[name].append(sink.alloc_bytes.get(worker.pid, 0) / (args.mib * MIB * args.passes * args.runs))
            print(f"  round {r + 1:>2}/{args.rounds}, CPU s: "
                  + "  ".join(f"{n[:10]} {block[n][-1]:.3f}" for n in names))

        print()
        print("CPU seconds of the workload's fault loops: fastest run of each block (median over")
        print("rounds), and the median of all runs")
        print(f"{'configuration':<28} {'CPU s':>7} {'slowdown':>9} {'paired':>8} {'all runs':>9} {'slowdown':>9}")
        base_best, base_all = statistics.median(block["none"]), statistics.median(cpu["none"])
        for name in names:
            best, every = statistics.median(block[name]), statistics.median(cpu[name])
            paired = statistics.median(x / b for x, b in zip(block[name], block["none"], strict=True))
            label = name if len(name) <= 28 else name[:25] + "..."
            print(f"{label:<28} {best:>7.3f} {pct(best / base_best):>9} {pct(paired):>8} "
                  f"{every:>9.3f} {pct(every / base_all):>9}")
            if name != "none":
                line = f"  {(best - base_best) / faults * 1e9:+.0f} ns of CPU per page fault"
                if seen[name]:
                    line += f"; alloc_bpf counted {statistics.median(seen[name]) * 100:.1f}% of the workload's bytes"
                print(line)
        print("slowdown: against no probes; paired: median over rounds of the ratio to the block")
        print("without probes of the same round")
        print()
        per_call_costs([known[s] for s in selected], worker, args.mib, args.passes)
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
