/* The one struct bpf/oom.bpf.c shares with user space.
 * Keep in sync with the ctypes mirror in edge/sources/oom.py (OomEventC);
 * tests/edge/test_oom_bpf.py checks that the sizes and offsets agree. */
#ifndef PXO_BPF_OOM_H
#define PXO_BPF_OOM_H

#define OOM_COMM_LEN 16   /* TASK_COMM_LEN */
#define OOM_PATH_DEPTH 16 /* cgroup nesting levels recorded; deeper paths are flagged truncated */
#define OOM_NAME_LEN 128  /* bytes per cgroup directory name (NUL-terminated, cut if longer) */

/* A cgroup as the kernel names it, walked through kernfs at the moment of the
 * kill. Walking in the kernel (rather than resolving the id later from
 * cgroupfs) matters: container runtimes remove an OOM-killed container's
 * cgroup within milliseconds, after which the id resolves to nothing. */
struct oom_cgroup {
	__u64 id;        /* kernfs node id: the inode number of the cgroup's directory */
	__u32 depth;     /* how many entries of names[] are filled */
	__u32 truncated; /* 1 when the cgroup is nested deeper than OOM_PATH_DEPTH */
	/* Leaf first: names[0] is the cgroup's own directory, names[depth-1] a
	 * child of the hierarchy root. The root itself is "/" and has no entry. */
	char names[OOM_PATH_DEPTH][OOM_NAME_LEN];
};

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
	char victim_comm[OOM_COMM_LEN];
	char trigger_comm[OOM_COMM_LEN];
	/* The victim's memory cgroup: css_set->subsys[memory_cgrp_id]->cgroup.
	 * On a cgroup v1 machine that is in the memory hierarchy, on v2 in the
	 * unified one: either way, the cgroup whose limit is charged. */
	struct oom_cgroup memcg;
	/* The victim's cgroup in the unified (v2) hierarchy: css_set->dfl_cgrp. */
	struct oom_cgroup cgroup_v2;
};

#endif /* PXO_BPF_OOM_H */
