/* The one struct bpf/reclaim.bpf.c shares with user space.
 * Keep in sync with the ctypes mirror in edge/sources/reclaim.py (ReclaimEventC);
 * tests/edge/test_bpf_layout.py checks that the sizes and offsets agree. */
#ifndef PXO_BPF_RECLAIM_H
#define PXO_BPF_RECLAIM_H

#include "cgroup.h"

/* Which pair of vmscan tracepoints bracketed the episode (reclaim_event.kind).
 * Keep in sync with KINDS in edge/sources/reclaim.py. */
#define RECLAIM_DIRECT 0          /* mm_vmscan_direct_reclaim_*: the node is short of free pages */
#define RECLAIM_MEMCG 1           /* mm_vmscan_memcg_reclaim_*: a memory cgroup is at its limit (or memory.high) */
#define RECLAIM_MEMCG_SOFTLIMIT 2 /* mm_vmscan_memcg_softlimit_reclaim_*: cgroup v1 soft limit, inside direct reclaim */
#define RECLAIM_NODE 3            /* mm_vmscan_node_reclaim_*: zone_reclaim_mode on NUMA machines */
#define RECLAIM_KINDS 4

struct reclaim_event {
	__u64 start_boot_ns; /* bpf_ktime_get_boot_ns() at the _begin tracepoint: since boot, suspend included */
	__u64 duration_ns;   /* NANOSECONDS from _begin to _end, the time the task was stalled reclaiming */
	__u64 nr_reclaimed;  /* PAGES freed by the episode (the _end tracepoint's nr_reclaimed);
	                      * user space converts to bytes */
	__u64 gfp_flags;     /* gfp mask of the allocation or charge that entered reclaim (_begin) */
	__u32 tgid;          /* process id (thread group id) of the stalled task */
	__u32 tid;           /* task id of the stalled task: reclaim runs in the allocating task itself */
	__s32 order;         /* order of that allocation (_begin): it wanted 2^order contiguous pages */
	__u32 kind;          /* RECLAIM_* above */
	char comm[PXO_COMM_LEN]; /* the stalled task's comm */
	/* The stalled task's own memory cgroup (see pxo_task_memcg), walked in the
	 * kernel at the end of the episode. For memcg reclaim the cgroup whose
	 * limit was hit may be this one or one of its ancestors: the tracepoints
	 * do not say which. */
	struct pxo_cgroup memcg;
};

#endif /* PXO_BPF_RECLAIM_H */
