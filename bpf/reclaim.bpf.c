/* One event per reclaim episode a task stalled in: direct reclaim (the node
 * is short of free pages), memory cgroup reclaim (a cgroup is at its limit),
 * and, where the kernel has them, cgroup v1 soft-limit and NUMA node reclaim.
 *
 * Hooks: the vmscan tracepoints that bracket each episode, as raw
 * tracepoints (no tracefs needed):
 *   mm_vmscan_{direct,memcg,memcg_softlimit,node}_reclaim_begin (..., order, gfp_flags, ...)
 *   mm_vmscan_{direct,memcg,memcg_softlimit,node}_reclaim_end   (nr_reclaimed, ...)
 * Where each argument is differs between events and kernels (node reclaim
 * passes the node first; 7.2 appends a memcg id), so user space finds them
 * in the kernel's BTF (btf_trace_<event>: the int before the gfp_t is the
 * order, the first unsigned long of _end is nr_reclaimed) and passes the
 * positions as <KIND>_ORDER_ARG, <KIND>_GFP_ARG and <KIND>_NR_ARG. They fire
 * once per episode, not per page, so their cost does not matter.
 *
 * Reclaim is synchronous: an episode's _begin and _end run in the task that
 * needed memory, which cannot begin another episode of the same kind before
 * this one ends (it is inside reclaim, with PF_MEMALLOC set). So the start
 * is kept per task (tid) until its _end. The key also holds the kind
 * because episodes of different kinds nest: on cgroup v1, direct reclaim runs soft-limit
 * reclaim inside itself (shrink_zones -> mem_cgroup_soft_limit_reclaim).
 * The start map is an LRU hash so that a start whose _end never came (the
 * program was detached in between, or the kernel skipped the _end program
 * because another BPF program was running on the CPU) is eventually evicted
 * instead of filling it. An _end without a start (the episode began before
 * the program was loaded) is ignored.
 *
 * Attribution: the stalled task and its own memory cgroup, walked in the
 * kernel at _end (pxo_read_cgroup). The tracepoints do not name the cgroup
 * being reclaimed: for memcg reclaim it is the task's own or an ancestor
 * whose limit was hit, or, when a task writes memory.reclaim or lowers a
 * limit, the cgroup it wrote to. The path is walked in the kernel, like the
 * OOM program's, because a container that stalls in reclaim is often
 * OOM-killed a moment later and its cgroup removed within milliseconds,
 * after which its id could not be resolved in user space.
 * bpf_get_current_cgroup_id() would be the v2 cgroup, which on a cgroup v1
 * machine is not the memory cgroup.
 *
 * No kernel struct layout comes from headers (see cgroup.h): every member
 * offset is a -D flag computed from the running kernel's BTF.
 */
#include <uapi/linux/ptrace.h>
#include "reclaim.h"

/* User space passes the size of its mirror of struct reclaim_event: if the
 * two ever disagree, the program fails to compile instead of being misread. */
_Static_assert(sizeof(struct reclaim_event) == RECLAIM_EVENT_SIZE,
	       "bpf/reclaim.h and the mirror in edge/sources/reclaim.py disagree");

struct reclaim_start_key {
	u32 tid;  /* the reclaiming task */
	u32 kind; /* RECLAIM_*: nested episodes of different kinds are kept apart */
};

struct reclaim_start_val {
	u64 boot_ns;   /* bpf_ktime_get_boot_ns() at _begin */
	u64 gfp_flags; /* _begin's gfp_flags */
	s32 order;     /* _begin's order */
	u32 pad;
};

BPF_TABLE("lru_hash", struct reclaim_start_key, struct reclaim_start_val, reclaim_start, 10240);
/* pages: 2 MiB, ~980 events of ~2.1 KiB (most of it the cgroup path). A cgroup
 * streaming through a file past its limit can have thousands of episodes a
 * second; the edge reads the buffer continuously. */
BPF_RINGBUF_OUTPUT(reclaim_events, 512);
BPF_ARRAY(reclaim_lost, u64, 1); /* episodes dropped because the ring buffer was full */

static __always_inline int reclaim_begin(u32 kind, int order, u64 gfp_flags)
{
	struct reclaim_start_key key = {};
	struct reclaim_start_val val = {};

	key.tid = (u32)bpf_get_current_pid_tgid();
	key.kind = kind;
	val.boot_ns = bpf_ktime_get_boot_ns();
	val.gfp_flags = gfp_flags;
	val.order = order;
	reclaim_start.update(&key, &val);
	return 0;
}

static __always_inline int reclaim_end(u32 kind, u64 nr_reclaimed)
{
	u64 now = bpf_ktime_get_boot_ns();
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct reclaim_start_key key = {};
	struct reclaim_start_val *start;
	struct reclaim_event *e;
	int zero = 0;

	key.tid = (u32)pid_tgid;
	key.kind = kind;
	start = reclaim_start.lookup(&key);
	if (!start)
		return 0;

	e = reclaim_events.ringbuf_reserve(sizeof(struct reclaim_event));
	if (!e) {
		u64 *lost = reclaim_lost.lookup(&zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		reclaim_start.delete(&key);
		return 0;
	}
	e->start_boot_ns = start->boot_ns;
	e->duration_ns = now - start->boot_ns;
	e->gfp_flags = start->gfp_flags;
	e->order = start->order;
	reclaim_start.delete(&key);

	e->nr_reclaimed = nr_reclaimed;
	e->kind = kind;
	e->tgid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	pxo_read_cgroup(pxo_task_memcg((void *)bpf_get_current_task()), &e->memcg);
	reclaim_events.ringbuf_submit(e, 0);
	return 0;
}

/* One begin/end pair of raw tracepoints per kind; HAVE_<KIND> is 1 when the
 * kernel has both (the memcg ones need CONFIG_MEMCG, node reclaim NUMA). */
#define RECLAIM_PAIR(event, kind, ORDER_ARG, GFP_ARG, NR_ARG)                        \
	RAW_TRACEPOINT_PROBE(event##_begin)                                          \
	{                                                                            \
		return reclaim_begin(kind, (int)ctx->args[ORDER_ARG], ctx->args[GFP_ARG]); \
	}                                                                            \
	RAW_TRACEPOINT_PROBE(event##_end)                                            \
	{                                                                            \
		return reclaim_end(kind, ctx->args[NR_ARG]);                          \
	}

#if HAVE_DIRECT
RECLAIM_PAIR(mm_vmscan_direct_reclaim, RECLAIM_DIRECT, DIRECT_ORDER_ARG, DIRECT_GFP_ARG, DIRECT_NR_ARG)
#endif
#if HAVE_MEMCG
RECLAIM_PAIR(mm_vmscan_memcg_reclaim, RECLAIM_MEMCG, MEMCG_ORDER_ARG, MEMCG_GFP_ARG, MEMCG_NR_ARG)
#endif
#if HAVE_MEMCG_SOFTLIMIT
RECLAIM_PAIR(mm_vmscan_memcg_softlimit_reclaim, RECLAIM_MEMCG_SOFTLIMIT, MEMCG_SOFTLIMIT_ORDER_ARG,
	     MEMCG_SOFTLIMIT_GFP_ARG, MEMCG_SOFTLIMIT_NR_ARG)
#endif
#if HAVE_NODE
RECLAIM_PAIR(mm_vmscan_node_reclaim, RECLAIM_NODE, NODE_ORDER_ARG, NODE_GFP_ARG, NODE_NR_ARG)
#endif
