/* One event per task the kernel's OOM killer marks as its victim.
 *
 * Hook: raw tracepoint oom:mark_victim (kernel >= 6.9), whose arguments are
 * (struct task_struct *victim, uid_t uid). It fires once per killed task,
 * members of a memory.oom.group kill included. kprobes on oom_kill_process are
 * not used: they are unavailable on many kernels (CONFIG_KPROBES off here).
 *
 * No kernel struct layout comes from headers (see cgroup.h): every member
 * offset is a -D flag computed by edge/bpf.py from the running kernel's BTF.
 *
 * Attribution trap: bpf_get_current_*() here describes the task that
 * triggered the OOM (the one allocating), not the victim. Both are recorded;
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
	void *mm = NULL, *signal = NULL;
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
	e->trigger_memcg_id = pxo_cgroup_id(pxo_task_memcg((void *)bpf_get_current_task()));
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

	pxo_read_cgroup(pxo_task_memcg(task), &e->memcg);
	pxo_read_cgroup(pxo_task_dfl_cgroup(task), &e->cgroup_v2);

	oom_events.ringbuf_submit(e, 0);
	return 0;
}
