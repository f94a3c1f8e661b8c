/* Page allocations per process and memory cgroup, counted in the kernel and
 * drained by user space once per interval: never one event per page.
 *
 * Hook: raw tracepoint kmem:mm_page_alloc. Its arguments are the tracepoint's
 * TP_PROTO, (struct page *page, unsigned int order, gfp_t gfp_flags,
 * int migratetype), unchanged since Linux 2.6.33 (edge/sources/alloc.py
 * checks them in the kernel's BTF). It fires once per
 * successful buddy allocation of 2^order contiguous pages: every anonymous
 * page fault, page-cache fill, slab refill, page-table page... A raw
 * tracepoint rather than the classic one because the classic form first
 * copies every field into a perf record for the program.
 *
 * Attribution: to the task current on the CPU, which for an allocation in
 * interrupt or softirq context (network receive buffers, ...) is whatever
 * task happened to be interrupted. Its memory cgroup is walked from the task
 * (task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id, as pxo_task_memcg
 * in cgroup.h): bpf_get_current_cgroup_id() would be the v2 cgroup, which on
 * a cgroup v1 machine is not the memory cgroup.
 *
 * Cost. This runs once per allocated page, inside the page fault, so its
 * common path makes one helper call and no hash lookup. Measured on the
 * project's machines (bench/overhead.py; retpolines and AMD's "Safe RET"
 * make every call and return expensive there), a plain first version (five
 * bpf_probe_read_kernel, bpf_get_current_pid_tgid, a per-CPU hash update
 * per page) ran ~250 ns a call and slowed a page-fault loop by ~10%; this
 * one runs ~40 ns a call and ~4%, of which ~2% is what any program on this
 * tracepoint costs. How:
 * - The memory cgroup is reached with plain loads from the BTF-typed current
 *   task (bpf_get_current_task_btf()), not with bpf_probe_read_kernel()
 *   (~30 ns each here): the JIT makes each one instruction, and the
 *   verifier types each load from the running kernel's BTF, so an offset
 *   that does not land on a pointer member is refused at load time.
 * - The process id is loaded from the same task (task->tgid) rather than
 *   asked of bpf_get_current_pid_tgid(): one helper call fewer.
 * - Pages are counted in a slot of a per-CPU array, slot tgid % ALLOC_SLOTS,
 *   whose lookup the verifier inlines into pointer arithmetic. Both
 *   generations (below) live in the one array, in halves: a lookup call
 *   that could reach either of two maps cannot be inlined. Only a pair
 *   whose slot another pair already holds in this interval (on this CPU)
 *   falls back to a per-CPU hash keyed by (memcg id, tgid): a helper call,
 *   a jhash and a bucket walk, ~80 ns.
 * Everything is per-CPU: no atomic instruction, no cache line shared
 * between CPUs. The kernel never runs this program twice at once on one CPU
 * (a nested hit, from an interrupt arriving while it runs, is skipped and
 * counted in the program's recursion misses), so a plain += on this CPU's
 * slot is safe.
 *
 * Intervals and draining without losing increments (double buffering). The
 * one-slot array "active" holds the current interval's generation, a number
 * only user space changes, by one at the end of every interval. Generation
 * g counts into half g & 1 of slots (entries (g & 1) * ALLOC_SLOTS and up)
 * and into counts_{g & 1}; the other half and hash are idle. At the end of
 * interval g user space
 *   1. writes g + 1 to active: new allocations go to the other half and hash,
 *   2. waits a grace period, so that any program that read g just before
 *      the write has finished adding to the now idle ones (programs on a
 *      tracepoint run with preemption disabled for well under a
 *      microsecond; the grace period is milliseconds),
 *   3. reads the slots of generation g (one batch syscall), and reads and
 *      deletes every entry of counts_{g & 1} (one batch syscall,
 *      BPF_MAP_LOOKUP_AND_DELETE_BATCH).
 * Nothing writes to the idle maps meanwhile, so nothing falls between a read
 * and a reset. Slots are never cleared by user space: a slot whose
 * generation is not the current one is free, and the program claims it on
 * first use. Hash entries are deleted, so processes that exited do not pile
 * up. User space starts at generation 2: a zeroed slot (generation 0) must
 * read as free, not as "tgid 0 holds it".
 *
 * The comm of each counted process goes into an LRU hash keyed by tgid,
 * written when a process claims a slot or creates a hash entry (its first
 * allocation of the interval on a CPU), not per page, and rewritten when the
 * process renames itself (task:task_rename fires on exec and on
 * PR_SET_NAME): a forked child's first pages are counted before it execs,
 * under its parent's name, and the map must not keep that name.
 */
#include <uapi/linux/ptrace.h>
#include "alloc.h"

/* User space passes the sizes of its mirrors: if they ever disagree, the
 * program fails to compile instead of being misread. */
_Static_assert(sizeof(struct alloc_slot) == ALLOC_SLOT_SIZE,
	       "bpf/alloc.h and the mirror in edge/sources/alloc.py disagree");
_Static_assert(sizeof(struct alloc_key) == ALLOC_KEY_SIZE,
	       "bpf/alloc.h and the mirror in edge/sources/alloc.py disagree");
_Static_assert((ALLOC_SLOTS & (ALLOC_SLOTS - 1)) == 0, "ALLOC_SLOTS must be a power of two");

/* Memory: 2 x ALLOC_SLOTS x 32 bytes x possible CPUs for the slots, and
 * for each hash (preallocated) ALLOC_MAX_KEYS x 8 bytes x possible CPUs. */
BPF_PERCPU_ARRAY(slots, struct alloc_slot, 2 * ALLOC_SLOTS); /* generation g uses half g & 1 */
BPF_PERCPU_HASH(counts_0, struct alloc_key, u64, ALLOC_MAX_KEYS); /* PAGES per CPU */
BPF_PERCPU_HASH(counts_1, struct alloc_key, u64, ALLOC_MAX_KEYS);
BPF_ARRAY(active, u64, 1);     /* the current generation; user space increments it */
BPF_ARRAY(alloc_lost, u64, 1); /* allocations not counted: the overflow hash was full, or an impossible order */
BPF_TABLE("lru_hash", u32, struct alloc_comm, comms, ALLOC_MAX_KEYS); /* tgid -> process comm */

/* An order above this is not a real allocation: the arguments were misread. */
#define PXO_MAX_SANE_ORDER 20

static __always_inline void count_lost(void)
{
	int zero = 0;
	u64 *lost = alloc_lost.lookup(&zero);

	if (lost)
		__sync_fetch_and_add(lost, 1);
}

#if HAVE_TASK_BTF
/* A member of a BTF-typed kernel object, loaded directly (see Cost). */
#define BTF_LOAD(base, off) (*(void **)((char *)(base) + (off)))
#define BTF_LOAD_U32(base, off) (*(u32 *)((char *)(base) + (off)))
#define BTF_LOAD_U64(base, off) (*(u64 *)((char *)(base) + (off)))
#define CURRENT_TASK() ((void *)bpf_get_current_task_btf())
#else
/* Kernels before 5.11 have no bpf_get_current_task_btf(): the same loads,
 * through bpf_probe_read_kernel() (slower, ~30 ns each on the project's machines). */
static __always_inline void *btf_load(void *base, int off)
{
	void *v = NULL;

	bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
	return v;
}
static __always_inline u32 btf_load_u32(void *base, int off)
{
	u32 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
	return v;
}
static __always_inline u64 btf_load_u64(void *base, int off)
{
	u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
	return v;
}
#define BTF_LOAD(base, off) btf_load((void *)(base), (off))
#define BTF_LOAD_U32(base, off) btf_load_u32((void *)(base), (off))
#define BTF_LOAD_U64(base, off) btf_load_u64((void *)(base), (off))
#define CURRENT_TASK() ((void *)bpf_get_current_task())
#endif

static __always_inline u64 task_memcg_id(void *task)
{
#if MEMORY_CGRP_ID >= 0
	void *cset, *css, *cgrp, *kn;

	cset = BTF_LOAD(task, TASK_CGROUPS);
	if (!cset)
		return 0;
	css = BTF_LOAD(cset, CSS_SET_SUBSYS + MEMORY_CGRP_ID * sizeof(void *));
	if (!css)
		return 0;
	cgrp = BTF_LOAD(css, CSS_CGROUP);
	if (!cgrp)
		return 0;
	kn = BTF_LOAD(cgrp, CGROUP_KN);
	if (!kn)
		return 0;
	return BTF_LOAD_U64(kn, KERNFS_NODE_ID);
#else
	return 0;
#endif
}

static __always_inline void remember_comm(void *task, u32 tgid)
{
	struct alloc_comm c = {};
	void *leader = BTF_LOAD(task, TASK_GROUP_LEADER);

	/* The process's name is its thread group leader's comm, not the
	 * allocating thread's (a JVM's "C2 CompilerThre"). */
	if (leader)
		bpf_probe_read_kernel(&c.comm, sizeof(c.comm), (char *)leader + TASK_COMM);
	comms.update(&tgid, &c);
}

/* The slow path: count in the overflow hash of this generation. */
static __always_inline void count_in_hash(u64 gen, u32 tgid, u64 memcg_id, u64 pages, void *task)
{
	struct alloc_key key = {};
	u64 *count;

	key.tgid = tgid;
	key.memcg_id = memcg_id;
	count = (gen & 1) ? counts_1.lookup(&key) : counts_0.lookup(&key);
	if (count) {
		*count += pages;
		return;
	}
	/* BPF_NOEXIST: another CPU may have created the entry meanwhile (its
	 * per-CPU values start at zero), and then we add to ours after all. */
	if (((gen & 1) ? counts_1.insert(&key, &pages) : counts_0.insert(&key, &pages)) == 0) {
		remember_comm(task, tgid);
		return;
	}
	count = (gen & 1) ? counts_1.lookup(&key) : counts_0.lookup(&key);
	if (count)
		*count += pages;
	else
		count_lost(); /* the hash is full */
}

RAW_TRACEPOINT_PROBE(mm_page_alloc)
{
	u32 order = (u32)ctx->args[1];
	struct alloc_slot *slot;
	u64 *genp, gen, pages, memcg_id;
	u32 tgid, index;
	void *task;
	int zero = 0;

	if (order > PXO_MAX_SANE_ORDER) {
		count_lost();
		return 0;
	}
	pages = 1ULL << order;
	genp = active.lookup(&zero);
	if (!genp)
		return 0;
	gen = *(volatile u64 *)genp; /* read once: user space may change it while we run */
	task = CURRENT_TASK();
	tgid = BTF_LOAD_U32(task, TASK_TGID);
	memcg_id = task_memcg_id(task);

	index = (gen & 1) * ALLOC_SLOTS + (tgid & (ALLOC_SLOTS - 1));
	slot = slots.lookup(&index);
	if (!slot)
		return 0;
	if (slot->gen != gen) { /* free in this interval: claim it */
		slot->gen = gen;
		slot->tgid = tgid;
		slot->memcg_id = memcg_id;
		slot->pages = pages;
		remember_comm(task, tgid);
		return 0;
	}
	if (slot->tgid == tgid && slot->memcg_id == memcg_id) {
		slot->pages += pages;
		return 0;
	}
	count_in_hash(gen, tgid, memcg_id, pages, task);
	return 0;
}

#if HAVE_TASK_RENAME
/* A process renamed itself: keep its name in comms current, if it is there.
 * Only a thread group leader names its process, and a leader's pid is the
 * tgid: another thread's pid is never a key of comms.
 * Raw tracepoint task:task_rename: (struct task_struct *task, const char *comm). */
RAW_TRACEPOINT_PROBE(task_rename)
{
	u32 pid = 0;
	struct alloc_comm *c;

	bpf_probe_read_kernel(&pid, sizeof(pid), (char *)ctx->args[0] + TASK_PID);
	c = comms.lookup(&pid);
	if (c)
		bpf_probe_read_kernel_str(&c->comm, sizeof(c->comm), (void *)ctx->args[1]);
	return 0;
}
#endif
