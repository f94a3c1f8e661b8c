/* One event per task the kernel's OOM killer marks as its victim.
 *
 * Hook: raw tracepoint oom:mark_victim. It fires once per killed task,
 * members of a memory.oom.group kill included, from mark_oom_victim(), right
 * after the kernel sent the victim its SIGKILL and before it logs "Killed
 * process". What it passes depends on the kernel, as its BTF says
 * (btf_trace_mark_victim, read by edge/kernel.py):
 *   (struct task_struct *victim, uid_t uid)  Linux 6.9+, and Debian's older
 *                                             kernels, which carry the change back
 *   (int pid)                                 other kernels before 6.9
 * With only a pid, the victim's task_struct is taken from the SIGKILL the
 * kernel sent it just before (signal:signal_generate with SEND_SIG_PRIV,
 * __oom_kill_process -> do_send_sig_info), remembered by tid for this moment.
 * kprobes on oom_kill_process are not used: many kernels lack them
 * (CONFIG_KPROBES is off on the project's machines).
 *
 * No kernel struct layout comes from headers (see cgroup.h): every member
 * offset is a -D flag computed by edge/kernel.py from the running kernel's BTF.
 *
 * Attribution trap: bpf_get_current_*() here describes the task that
 * triggered the OOM (the one allocating), not the victim. Both are recorded;
 * the victim's cgroups are walked from the victim's own task_struct.
 *
 * Why the kernel killed: its report in the kernel log says (constraint, the
 * memory cgroup that ran out) but is rate-limited to about 10 per 5 s, and a
 * burst of kills loses most of it. So the program also records what is
 * never rate-limited: the kernel stack (a memory cgroup's limit, or the node,
 * and a memory.oom.group member or the chosen victim) and, for the victim's
 * memory cgroup and each ancestor, its page counter, limit and local OOM
 * count at the kill.
 */
#include <uapi/linux/ptrace.h>
#include "oom.h"

/* User space passes the size of its mirror of struct oom_event: if the two
 * ever disagree, the program fails to compile instead of being misread. */
_Static_assert(sizeof(struct oom_event) == OOM_EVENT_SIZE,
	       "bpf/oom.h and the mirror in edge/sources/oom.py disagree");

/* pages: 2 MiB, ~370 events of 5.5 KiB: a burst of kills in many cgroups at once */
BPF_RINGBUF_OUTPUT(oom_events, 512);
BPF_ARRAY(oom_lost, u64, 1); /* events dropped because the ring buffer was full, or victims not found */

static __always_inline void count_lost(void)
{
	int zero = 0;
	u64 *lost = oom_lost.lookup(&zero);

	if (lost)
		__sync_fetch_and_add(lost, 1);
}

#if !MARK_VICTIM_TASK_ARG
/* tid -> task_struct * of the last SIGKILL the kernel sent on its own
 * behalf (SEND_SIG_PRIV); mark_victim takes its victim from here. An LRU so
 * that kills that never become OOM victims (the rest of a process sharing
 * the victim's mm, sysrq, ...) age out. */
BPF_TABLE("lru_hash", u32, u64, oom_kill_targets, 1024);

#define PXO_SIGKILL 9
#define PXO_SEND_SIG_PRIV 1UL /* (struct kernel_siginfo *)1: the kernel's own signal */

RAW_TRACEPOINT_PROBE(signal_generate)
{
	/* (int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result) */
	void *task = (void *)ctx->args[2];
	u64 ptr = (u64)task;
	u32 tid = 0;

	if ((int)ctx->args[0] != PXO_SIGKILL || (unsigned long)ctx->args[1] != PXO_SEND_SIG_PRIV)
		return 0;
	KREAD(tid, task, TASK_PID);
	oom_kill_targets.update(&tid, &ptr);
	return 0;
}
#endif

static __always_inline u64 rss_counter(void *mm, int member)
{
	/* mm->rss_stat[member].count (6.2+: a percpu_counter's total) or
	 * mm->rss_stat.count[member] (before: an atomic_long_t): get_mm_counter() */
	s64 count = 0;

	KREAD(count, mm, MM_RSS_STAT + member * RSS_COUNTER_SIZE + RSS_COUNTER_COUNT);
	return count > 0 ? count : 0;
}

/* The memory cgroup's css of a task, or NULL (see pxo_task_memcg in cgroup.h). */
static __always_inline void *task_memcg_css(void *task)
{
	void *css = NULL;
#if MEMORY_CGRP_ID >= 0
	void *cset = NULL;

	KREAD(cset, task, TASK_CGROUPS);
	if (cset)
		KREAD(css, cset, CSS_SET_SUBSYS + MEMORY_CGRP_ID * sizeof(void *));
#endif
	return css;
}

static __always_inline u64 css_id(void *css)
{
	void *cgrp = NULL;

	KREAD(cgrp, css, CSS_CGROUP);
	return pxo_cgroup_id(cgrp);
}

/* levels[] from the victim's memory cgroup up to, not including, the root. */
static __always_inline void read_levels(void *css, struct oom_event *e)
{
#pragma unroll
	for (int i = 0; i < PXO_PATH_DEPTH; i++) {
		struct pxo_memcg_level *l = &e->levels[i];
		void *parent = NULL, *memcg;
		u8 group = 0;

		l->id = 0;
		l->usage_pages = 0;
		l->max_pages = 0;
		l->memsw_usage_pages = 0;
		l->memsw_max_pages = 0;
		l->oom_events = 0;
		l->oom_group = 0;
		l->pad = 0;
		if (!css)
			continue;
		KREAD(parent, css, CSS_PARENT);
		if (!parent) { /* the root: no limit, and no name in memcg.names either */
			css = NULL;
			continue;
		}
		memcg = (char *)css - MEMCG_CSS;
		l->id = css_id(css);
		KREAD(l->usage_pages, memcg, MEMCG_MEMORY + PAGE_COUNTER_USAGE);
		KREAD(l->max_pages, memcg, MEMCG_MEMORY + PAGE_COUNTER_MAX);
#if MEMCG_MEMSW >= 0
		KREAD(l->memsw_usage_pages, memcg, MEMCG_MEMSW + PAGE_COUNTER_USAGE);
		KREAD(l->memsw_max_pages, memcg, MEMCG_MEMSW + PAGE_COUNTER_MAX);
#endif
		KREAD(l->oom_events, memcg, MEMCG_EVENTS_LOCAL + MEMCG_EVENT_OOM * 8);
		KREAD(group, memcg, MEMCG_OOM_GROUP);
		l->oom_group = group;
		css = parent;
	}
}

/* trigger_path_ids[] from the trigger's memory cgroup up to, not including, the root. */
static __always_inline void read_trigger_path(void *css, struct oom_event *e)
{
	e->trigger_depth = 0;
#pragma unroll
	for (int i = 0; i < PXO_PATH_DEPTH; i++) {
		void *parent = NULL;

		e->trigger_path_ids[i] = 0;
		if (!css)
			continue;
		KREAD(parent, css, CSS_PARENT);
		if (!parent) {
			css = NULL;
			continue;
		}
		e->trigger_path_ids[i] = css_id(css);
		e->trigger_depth = i + 1;
		css = parent;
	}
}

/* The victim's process id as its own pid namespace numbers it: the thread group
 * leader's struct pid, numbers[level].nr (what getpid() returns inside a container). */
static __always_inline void read_ns_tgid(void *task, struct oom_event *e)
{
	void *leader = NULL, *pid = NULL;
	u32 level = 0;
	int nr = 0;

	KREAD(leader, task, TASK_GROUP_LEADER);
	if (!leader)
		leader = task;
	KREAD(pid, leader, TASK_THREAD_PID);
	if (!pid)
		return;
	KREAD(level, pid, PID_LEVEL);
	if (level > 32) /* MAX_PID_NS_LEVEL */
		return;
	bpf_probe_read_kernel(&nr, sizeof(nr), (char *)pid + PID_NUMBERS + level * UPID_SIZE + UPID_NR);
	e->ns_tgid = nr;
	e->ns_level = level;
}

RAW_TRACEPOINT_PROBE(mark_victim)
{
	struct oom_event *e;
	void *task = NULL, *mm = NULL, *signal = NULL, *cur = (void *)bpf_get_current_task();
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 uid = 0;
	short adj = 0;

#if MARK_VICTIM_TASK_ARG
	task = (void *)ctx->args[0];
	uid = (u32)ctx->args[1];
#else
	u32 tid = 0;
	u64 *found;

#if PXO_EMULATE_PID_FORM
	/* Tests only: this kernel passes the task; keep nothing but its pid,
	 * as a kernel of the (int pid) form would pass. */
	KREAD(tid, (void *)ctx->args[0], TASK_PID);
#else
	tid = (u32)ctx->args[0];
#endif
	found = oom_kill_targets.lookup(&tid);
	if (found) {
		void *cred = NULL;

		task = (void *)*found;
		oom_kill_targets.delete(&tid);
		KREAD(cred, task, TASK_REAL_CRED);
		if (cred)
			KREAD(uid, cred, CRED_UID);
	}
#endif

	e = oom_events.ringbuf_reserve(sizeof(struct oom_event));
	if (!e) {
		count_lost();
		return 0;
	}

	e->boot_ns = bpf_ktime_get_boot_ns();
	e->trigger_tgid = pid_tgid >> 32;
	e->trigger_tid = (u32)pid_tgid;
	bpf_get_current_comm(&e->trigger_comm, sizeof(e->trigger_comm));
	e->trigger_memcg_id = pxo_cgroup_id(pxo_task_memcg(cur));
	read_trigger_path(task_memcg_css(cur), e);
	e->uid = uid;

	e->victim_tgid = 0;
	e->victim_tid = 0;
	e->total_vm_pages = 0;
	e->anon_rss_pages = 0;
	e->file_rss_pages = 0;
	e->shmem_rss_pages = 0;
	e->swap_pages = 0;
	e->pgtables_bytes = 0;
	__builtin_memset(e->victim_comm, 0, sizeof(e->victim_comm));
	e->ns_tgid = 0;
	e->ns_level = 0;
#if !MARK_VICTIM_TASK_ARG
	e->victim_tid = tid; /* known even when the task is not */
#endif
	if (task) {
		KREAD(e->victim_tgid, task, TASK_TGID);
		KREAD(e->victim_tid, task, TASK_PID);
		bpf_probe_read_kernel(&e->victim_comm, sizeof(e->victim_comm), (char *)task + TASK_COMM);
		KREAD(signal, task, TASK_SIGNAL);
		if (signal)
			KREAD(adj, signal, SIGNAL_OOM_SCORE_ADJ);
		KREAD(mm, task, TASK_MM);
		read_ns_tgid(task, e);
	} else {
		count_lost(); /* the victim's task was not found: user space has the kernel log's account */
	}
	e->oom_score_adj = adj;
	if (mm) {
		KREAD(e->total_vm_pages, mm, MM_TOTAL_VM);
		e->anon_rss_pages = rss_counter(mm, MM_ANONPAGES);
		e->file_rss_pages = rss_counter(mm, MM_FILEPAGES);
		e->shmem_rss_pages = rss_counter(mm, MM_SHMEMPAGES);
		e->swap_pages = rss_counter(mm, MM_SWAPENTS);
		KREAD(e->pgtables_bytes, mm, MM_PGTABLES_BYTES);
	}

	pxo_read_cgroup(task ? pxo_task_memcg(task) : NULL, &e->memcg);
	pxo_read_cgroup(task ? pxo_task_dfl_cgroup(task) : NULL, &e->cgroup_v2);
	read_levels(task ? task_memcg_css(task) : NULL, e);

	e->stack_bytes = bpf_get_stack(ctx, e->kstack, sizeof(e->kstack), 0);

	oom_events.ringbuf_submit(e, 0);
	return 0;
}
