/* The one struct bpf/oom.bpf.c shares with user space.
 * Keep in sync with the ctypes mirror in edge/sources/oom.py (OomEventC);
 * tests/edge/test_bpf_layout.py checks that the sizes and offsets agree. */
#ifndef PXO_BPF_OOM_H
#define PXO_BPF_OOM_H

#include "cgroup.h"

#define PXO_OOM_STACK_DEPTH 32 /* kernel return addresses kept: the OOM path is about 12 deep */

/* One memory cgroup on the victim's way to the root, read at the kill. The
 * kernel log's report (rate-limited to about 10 per 5 s) is the only other
 * place that says which cgroup ran out; these let user space say it for
 * every kill (edge/sources/oom.py, oom_memcg_level). */
struct pxo_memcg_level {
	__u64 id;                /* kernfs id (directory inode) of this memory cgroup */
	__u64 usage_pages;       /* memcg->memory.usage: PAGES charged to it and its descendants */
	__u64 max_pages;         /* memcg->memory.max: its limit in PAGES (v2 memory.max, v1 limit_in_bytes);
	                          * PAGE_COUNTER_MAX (about 2^63 / page size) when unlimited */
	__u64 memsw_usage_pages; /* cgroup v1 memory+swap counter (memcg->memsw); 0 when the kernel has none */
	__u64 memsw_max_pages;   /* its limit; 0 when the kernel has none */
	__u64 oom_events;        /* memcg->memory_events_local[MEMCG_OOM]: times a charge against THIS
	                          * cgroup's own limit failed and invoked the OOM killer (not its children's) */
	__u32 oom_group;         /* memory.oom.group: an OOM kill inside kills the whole cgroup */
	__u32 pad;
};

struct oom_event {
	__u64 boot_ns;        /* bpf_ktime_get_boot_ns() at mark_victim: since boot, suspend included */
	__u32 victim_tgid;    /* victim process id (thread group id); 0 when the task was not found */
	__u32 victim_tid;     /* victim task id, as the tracepoint's own pid */
	__u32 trigger_tgid;   /* process whose allocation invoked the OOM killer (current) */
	__u32 trigger_tid;
	__u32 uid;            /* victim's uid in the initial user namespace */
	__s32 oom_score_adj;  /* victim's signal->oom_score_adj (a short in the kernel) */
	__u32 ns_tgid;        /* victim's process id in its own pid namespace (1: a container's main process) */
	__u32 ns_level;       /* depth of that pid namespace: 0 is the node's own (ns_tgid is then the tgid) */
	/* The next five are PAGES, exactly as the kernel counts them (mm->total_vm,
	 * the mm's rss_stat counters); user space converts to bytes. */
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
	/* levels[i] is the memory cgroup named memcg.names[i]: the victim's own
	 * first, then each ancestor, the root excluded (memcg.depth of them). */
	struct pxo_memcg_level levels[PXO_PATH_DEPTH];
	/* The trigger's memory cgroup and its ancestors, leaf first, root excluded:
	 * the cgroup that ran out is one the two paths share. */
	__u64 trigger_path_ids[PXO_PATH_DEPTH];
	__u32 trigger_depth;  /* entries of trigger_path_ids filled */
	__s32 stack_bytes;    /* bytes of kstack filled by bpf_get_stack(), or its negative error */
	/* The kernel stack at mark_victim, innermost first: user space finds in it
	 * whether a memory cgroup or the node ran out (mem_cgroup_out_of_memory
	 * called out_of_memory, or the page allocator did), and whether this task
	 * was the chosen victim or a member of its memory.oom.group
	 * (oom_kill_memcg_member). Return addresses: resolved with /proc/kallsyms. */
	__u64 kstack[PXO_OOM_STACK_DEPTH];
};

#endif /* PXO_BPF_OOM_H */
