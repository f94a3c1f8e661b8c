/* The one struct bpf/oom.bpf.c shares with user space.
 * Keep in sync with the ctypes mirror in edge/sources/oom.py (OomEventC);
 * tests/edge/test_bpf_layout.py checks that the sizes and offsets agree. */
#ifndef PXO_BPF_OOM_H
#define PXO_BPF_OOM_H

#include "cgroup.h"

struct oom_event {
	__u64 boot_ns;        /* bpf_ktime_get_boot_ns() at mark_victim: since boot, suspend included */
	__u32 victim_tgid;    /* victim process id (thread group id) */
	__u32 victim_tid;     /* victim task id, as the tracepoint's own pid field */
	__u32 trigger_tgid;   /* process whose allocation invoked the OOM killer (current) */
	__u32 trigger_tid;
	__u32 uid;            /* victim's uid in the initial user namespace (tracepoint argument) */
	__s32 oom_score_adj;  /* victim's signal->oom_score_adj (a short in the kernel) */
	/* The next five are PAGES, exactly as the kernel counts them (mm->total_vm,
	 * the mm's rss_stat percpu counters); user space converts to bytes. */
	__u64 total_vm_pages;
	__u64 anon_rss_pages;
	__u64 file_rss_pages;
	__u64 shmem_rss_pages;
	__u64 swap_pages;
	__u64 pgtables_bytes; /* BYTES already: mm->pgtables_bytes */
	char victim_comm[PXO_COMM_LEN];
	char trigger_comm[PXO_COMM_LEN];
	/* The victim's memory cgroup (see pxo_task_memcg): the one whose limit is charged. */
	struct pxo_cgroup memcg;
	/* The victim's cgroup in the unified (v2) hierarchy. */
	struct pxo_cgroup cgroup_v2;
	/* The memory cgroup of the task that triggered the OOM (id only): differs
	 * from the victim's when a parent's limit was hit. */
	__u64 trigger_memcg_id;
};

#endif /* PXO_BPF_OOM_H */
