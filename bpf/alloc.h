/* The structs bpf/alloc.bpf.c shares with user space: a counting slot of its
 * per-CPU slot arrays, the key of its per-CPU overflow hashes (whose value
 * is a bare __u64 count of PAGES per CPU), and a process name.
 * Keep in sync with the ctypes mirrors in edge/sources/alloc.py (AllocSlotC,
 * AllocKeyC, AllocCommC); tests/edge/test_bpf_layout.py checks that the
 * sizes and offsets agree. */
#ifndef PXO_BPF_ALLOC_H
#define PXO_BPF_ALLOC_H

#include "cgroup.h"

/* One counter per (process, memory cgroup) pair, CPU and interval. The
 * memory cgroup is part of the key because a process can move between
 * cgroups in the middle of an interval: its pages are then split, each part
 * charged to the cgroup it was in when it allocated. */

/* Slot tgid % ALLOC_SLOTS of a per-CPU array: where a process's pages are
 * counted on a CPU, unless another pair holds the slot in this interval. */
struct alloc_slot {
	__u64 gen;      /* interval generation (the "active" array's value) the slot
	                 * counts for; a slot of an older generation is free */
	__u64 memcg_id; /* kernfs id (= directory inode) of the memory cgroup of the
	                 * task current at the allocation; 0 without a memory controller */
	__u32 tgid;     /* process id (thread group id) of that task; 0 is the idle task */
	__u32 pad;      /* always 0 */
	__u64 pages;    /* PAGES allocated (1 << order per allocation), not bytes */
};

/* Key of the overflow hashes, for pairs that found their slot taken. */
struct alloc_key {
	__u64 memcg_id; /* as in alloc_slot */
	__u32 tgid;     /* as in alloc_slot */
	__u32 pad;      /* always 0: hash keys are compared bytewise, so the
	                 * padding must be explicit and zeroed */
};

/* A process's name, the value of the comm map (keyed by tgid): a struct,
 * because BCC map values cannot be bare arrays. */
struct alloc_comm {
	char comm[PXO_COMM_LEN]; /* the thread group leader's comm, NUL-terminated */
};

#endif /* PXO_BPF_ALLOC_H */
