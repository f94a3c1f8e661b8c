/* One event per user-space process that exits, with its wait status.
 *
 * Hook: raw tracepoint sched:sched_process_exit. What it passes depends on
 * the kernel, as its BTF says (btf_trace_sched_process_exit, read by
 * edge/kernel.py; HAVE_GROUP_DEAD is set from it):
 *     (struct task_struct *p, bool group_dead)   Linux 6.16 on
 *     (struct task_struct *p)                    before
 * do_exit() decrements signal->live, sets `tsk->exit_code = code`, and only
 * then calls the tracepoint, before cgroup_task_exit(), so the task's cgroups
 * are still its own.
 *
 * One row per process, not per thread: the tracepoint fires for every
 * exiting thread.
 * - With group_dead, it is true for exactly one of them, the thread whose
 *   atomic_dec_and_test(&signal->live) reached zero: the kernel's own answer.
 * - Without it, the last live thread is told from the signal struct the
 *   threads share: signal->live is already 0 when the thread that ended the
 *   process gets here. Threads that decremented it earlier but are slower to
 *   get here see 0 too, so a process is claimed once in an LRU set keyed by
 *   (tgid, the leader's start time), which no later process can share; the
 *   first claimant reports it. "pid == tgid" would be wrong: the leader may
 *   exit (pthread_exit() in main) long before the process ends.
 *
 * Which exit code: the one wait() returns to the parent. The kernel's
 * wait_task_zombie() takes signal->group_exit_code when SIGNAL_GROUP_EXIT is
 * set (exit_group() of a threaded process, a fatal signal, a core dump, which
 * adds 0x80), else the leader's own exit_code. From 6.16 every thread passes
 * synchronize_group_exit() before decrementing signal->live, and the last
 * "quick thread" sets SIGNAL_GROUP_EXIT with its code if nothing had, so at
 * group_dead the group code is always set; the same rule gives the same
 * answer there. It differs from the last thread's own code after a core dump:
 * threads that were waiting for the dump took the bare signal number as their
 * code before coredump_finish() added 0x80 to the group's, and any of them may
 * be the last to go.
 *
 * Kernel threads (PF_KTHREAD) are left out in the kernel: they have no exit
 * status anyone waits for, and kworkers come and go all the time.
 *
 * No kernel struct layout comes from headers (see cgroup.h): every member
 * offset is a -D flag computed from the running kernel's BTF (edge/bpf.py,
 * plus SIGNAL_GROUP_EXIT_CODE and TASK_GROUP_LEADER from edge/sources/exit.py).
 */
#include <uapi/linux/ptrace.h>
#include "exit.h"

/* User space passes the size of its mirror of struct exit_event: if the two
 * ever disagree, the program fails to compile instead of being misread. */
_Static_assert(sizeof(struct exit_event) == EXIT_EVENT_SIZE,
	       "bpf/exit.h and the mirror in edge/sources/exit.py disagree");

/* task_struct.flags bit (include/linux/sched.h). A #define, so not in BTF;
 * its value has not changed in many years (/proc/2/stat, kthreadd, shows
 * it in its flags field on this kernel). */
#define PXO_PF_KTHREAD 0x00200000
/* signal_struct.flags bit (include/linux/sched/signal.h), unchanged since 2.6 */
#define PXO_SIGNAL_GROUP_EXIT 0x00000004

#if !HAVE_GROUP_DEAD
struct exit_claim {
	u32 tgid;
	u32 pad;
	u64 leader_start_ns; /* group_leader->start_time: with the tgid, names one process for good */
};
/* processes already reported (see the top): an LRU, so it never fills */
BPF_TABLE("lru_hash", struct exit_claim, u8, exit_claimed, 4096);
#endif

/* pages: 2 MiB holds ~980 events of 2.1 KiB: a burst of short-lived
 * processes (a build, a shell loop) of several thousand exits a second can
 * wait a few hundred milliseconds for the edge to drain it. */
BPF_RINGBUF_OUTPUT(exit_events, 512);
BPF_ARRAY(exit_lost, u64, 1); /* events dropped because the ring buffer was full */

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
	void *task = (void *)ctx->args[0];
	struct exit_event *e;
	void *signal = NULL, *parent = NULL, *leader = NULL, *memcg, *dfl, *kn = NULL;
	unsigned int flags = 0, signal_flags = 0;
	int zero = 0, code = 0;

#if HAVE_GROUP_DEAD
	if (!(bool)ctx->args[1])
		return 0; /* a thread; its process is reported by its last thread */
#endif
	KREAD(flags, task, TASK_FLAGS);
	if (flags & PXO_PF_KTHREAD)
		return 0;
	KREAD(signal, task, TASK_SIGNAL);
	/* The leader stays allocated (a zombie at worst) until the whole group
	 * is reaped, which cannot happen before this, its last thread, exits. */
	KREAD(leader, task, TASK_GROUP_LEADER);
	if (!leader)
		leader = task;
#if !HAVE_GROUP_DEAD
	{
		struct exit_claim claim = {};
		u8 one = 1;
		int live = 1;

		if (signal)
			KREAD(live, signal, SIGNAL_LIVE);
		if (live != 0)
			return 0; /* other threads live on */
		KREAD(claim.tgid, task, TASK_TGID);
		KREAD(claim.leader_start_ns, leader, TASK_START_TIME);
		if (exit_claimed.insert(&claim, &one) != 0)
			return 0; /* another thread of this process reported it */
	}
#endif

	e = exit_events.ringbuf_reserve(sizeof(struct exit_event));
	if (!e) {
		u64 *lost = exit_lost.lookup(&zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}

	e->boot_ns = bpf_ktime_get_boot_ns();
	e->tgid = 0;
	e->tid = 0;
	e->ppid = 0;
	e->exit_code = 0;
	KREAD(e->tgid, task, TASK_TGID);
	KREAD(e->tid, task, TASK_PID);
	KREAD(parent, task, TASK_REAL_PARENT);
	if (parent)
		KREAD(e->ppid, parent, TASK_TGID);
	if (signal)
		KREAD(signal_flags, signal, SIGNAL_FLAGS);
	if (signal && (signal_flags & PXO_SIGNAL_GROUP_EXIT))
		KREAD(code, signal, SIGNAL_GROUP_EXIT_CODE);
	else
		KREAD(code, leader, TASK_EXIT_CODE);
	e->exit_code = code;
	bpf_probe_read_kernel(&e->comm, sizeof(e->comm), (char *)leader + TASK_COMM);

	memcg = pxo_task_memcg(task);
	dfl = pxo_task_dfl_cgroup(task);
	pxo_read_cgroup(memcg, &e->memcg);
	e->cgroup_v2_id = pxo_cgroup_id(dfl);
	e->v2_is_memcg = memcg != NULL && memcg == dfl;
	e->v2_is_root = 0;
	if (dfl)
		KREAD(kn, dfl, CGROUP_KN);
	if (kn) {
		void *kn_parent = NULL;

		KREAD(kn_parent, kn, KERNFS_NODE_PARENT);
		e->v2_is_root = kn_parent == NULL;
	}

	exit_events.ringbuf_submit(e, 0);
	return 0;
}
