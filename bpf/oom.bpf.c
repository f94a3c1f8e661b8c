/* One event per task the kernel's OOM killer marks as its victim.
 *
 * Hook: raw tracepoint oom:mark_victim (kernel >= 6.9), whose arguments are
 * (struct task_struct *victim, uid_t uid). It fires once per killed task,
 * members of a memory.oom.group kill included. kprobes on oom_kill_process are
 * not used: they are unavailable on many kernels (CONFIG_KPROBES off here).
 *
 * No kernel struct layout comes from headers: the headers BCC compiles with
 * may belong to another kernel. Every member offset is a -D flag computed by
 * edge/sources/oom.py from the running kernel's BTF; every read is an explicit
 * bpf_probe_read_kernel at base + offset.
 *
 * Attribution trap: bpf_get_current_*() here describes the task that
 * triggered the OOM (the one allocating), not the victim. Both are recorded,
 * the victim's cgroups are walked from the victim's own task_struct.
 */
#include <uapi/linux/ptrace.h>
#include "oom.h"

/* User space passes the size of its mirror of struct oom_event: if the two
 * ever disagree, the program fails to compile instead of being misread. */
_Static_assert(sizeof(struct oom_event) == OOM_EVENT_SIZE,
	       "bpf/oom.h and the mirror in edge/sources/oom.py disagree");

BPF_RINGBUF_OUTPUT(oom_events, 64); /* pages: 256 KiB, ~60 events of 4 KiB */
BPF_ARRAY(oom_lost, u64, 1);        /* events dropped because the ring buffer was full */

#define KREAD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(base) + (off))

static __always_inline void read_cgroup(void *cgrp, struct oom_cgroup *out)
{
	void *kn = NULL;

	out->id = 0;
	out->depth = 0;
	out->truncated = 0;
	if (!cgrp)
		return;
	KREAD(kn, cgrp, CGROUP_KN);
	if (!kn)
		return;
	KREAD(out->id, kn, KERNFS_NODE_ID);
#pragma unroll
	for (int i = 0; i < OOM_PATH_DEPTH; i++) {
		void *parent = NULL;
		const char *name = NULL;

		KREAD(parent, kn, KERNFS_NODE_PARENT);
		if (!parent)
			return; /* kn is the hierarchy root, which has no name */
		KREAD(name, kn, KERNFS_NODE_NAME);
		bpf_probe_read_kernel_str(out->names[i], OOM_NAME_LEN, name);
		out->depth = i + 1;
		kn = parent;
	}
	{
		void *parent = NULL;

		KREAD(parent, kn, KERNFS_NODE_PARENT);
		out->truncated = parent != NULL;
	}
}

static __always_inline u64 rss_counter(void *mm, int member)
{
	/* mm->rss_stat[member].count: what get_mm_counter() returns */
	s64 count = 0;

	KREAD(count, mm, MM_RSS_STAT + member * RSS_COUNTER_SIZE + RSS_COUNTER_COUNT);
	return count > 0 ? count : 0;
}

RAW_TRACEPOINT_PROBE(mark_victim)
{
	void *task = (void *)ctx->args[0];
	struct oom_event *e;
	void *mm = NULL, *signal = NULL, *cset = NULL, *cgrp = NULL;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	short adj = 0;
	int zero = 0;

	e = oom_events.ringbuf_reserve(sizeof(struct oom_event));
	if (!e) {
		u64 *lost = oom_lost.lookup(&zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}

	e->boot_ns = bpf_ktime_get_boot_ns();
	e->trigger_tgid = pid_tgid >> 32;
	e->trigger_tid = (u32)pid_tgid;
	bpf_get_current_comm(&e->trigger_comm, sizeof(e->trigger_comm));
	e->uid = (u32)ctx->args[1];

	e->victim_tgid = 0;
	e->victim_tid = 0;
	KREAD(e->victim_tgid, task, TASK_TGID);
	KREAD(e->victim_tid, task, TASK_PID);
	bpf_probe_read_kernel(&e->victim_comm, sizeof(e->victim_comm), (char *)task + TASK_COMM);

	KREAD(signal, task, TASK_SIGNAL);
	if (signal)
		KREAD(adj, signal, SIGNAL_OOM_SCORE_ADJ);
	e->oom_score_adj = adj;

	e->total_vm_pages = 0;
	e->anon_rss_pages = 0;
	e->file_rss_pages = 0;
	e->shmem_rss_pages = 0;
	e->swap_pages = 0;
	e->pgtables_bytes = 0;
	KREAD(mm, task, TASK_MM);
	if (mm) {
		KREAD(e->total_vm_pages, mm, MM_TOTAL_VM);
		e->anon_rss_pages = rss_counter(mm, MM_ANONPAGES);
		e->file_rss_pages = rss_counter(mm, MM_FILEPAGES);
		e->shmem_rss_pages = rss_counter(mm, MM_SHMEMPAGES);
		e->swap_pages = rss_counter(mm, MM_SWAPENTS);
		KREAD(e->pgtables_bytes, mm, MM_PGTABLES_BYTES);
	}

	KREAD(cset, task, TASK_CGROUPS);
	if (cset) {
		KREAD(cgrp, cset, CSS_SET_DFL_CGRP);
		read_cgroup(cgrp, &e->cgroup_v2);
		cgrp = NULL;
#if MEMORY_CGRP_ID >= 0
		{
			void *css = NULL;

			KREAD(css, cset, CSS_SET_SUBSYS + MEMORY_CGRP_ID * sizeof(void *));
			if (css)
				KREAD(cgrp, css, CSS_CGROUP);
		}
#endif
		read_cgroup(cgrp, &e->memcg);
	} else {
		read_cgroup(NULL, &e->cgroup_v2);
		read_cgroup(NULL, &e->memcg);
	}

	oom_events.ringbuf_submit(e, 0);
	return 0;
}
