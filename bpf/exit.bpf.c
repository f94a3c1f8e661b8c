/* One event per user-space process that exits, with its wait status.
 *
 * Hook: raw tracepoint sched:sched_process_exit. Since Linux 6.16 ("exit:
 * move and extend sched_process_exit() tracepoint") its arguments are
 *     (struct task_struct *p, bool group_dead)
 * (BTF typedef btf_trace_sched_process_exit on this kernel, and the
 * group_dead field in tracefs), and do_exit() calls it after
 * `tsk->exit_code = code` and before exit_mm() and cgroup_task_exit(), so the
 * task's cgroups are still its own.
 *
 * One row per process, not per thread: the tracepoint fires for every
 * exiting thread, and group_dead is true for exactly one of them, the thread
 * whose atomic_dec_and_test(&signal->live) reached zero. It is the kernel's
 * own answer. The alternatives are worse: "pid == tgid" reports the
 * leader's exit, which can come long before the process ends (pthread_exit()
 * in main leaves the other threads running) and then carries the wrong code;
 * reading signal->live == 0 here reports twice when two threads exit at
 * once. Kernels before 6.16 lack the argument, and the edge refuses this
 * source there with one sentence.
 *
 * Which exit code: not the last thread's own task->exit_code but
 * signal->group_exit_code, the one wait() returns to the parent. Every thread
 * passes synchronize_group_exit() before decrementing signal->live, and the
 * last "quick thread" sets SIGNAL_GROUP_EXIT with its code if nothing had, so
 * at group_dead the group code is always set. It differs from the last
 * thread's own code after a core dump: threads that were waiting for the
 * dump took the bare signal number as their code before coredump_finish()
 * added 0x80 to the group's, and any of them may be the last to go.
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

/* pages: 2 MiB holds ~980 events of 2.1 KiB: a burst of short-lived
 * processes (a build, a shell loop) of several thousand exits a second can
 * wait a few hundred milliseconds for the edge to drain it. */
BPF_RINGBUF_OUTPUT(exit_events, 512);
BPF_ARRAY(exit_lost, u64, 1); /* events dropped because the ring buffer was full */

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
	void *task = (void *)ctx->args[0];
	bool group_dead = (bool)ctx->args[1];
	struct exit_event *e;
	void *signal = NULL, *parent = NULL, *leader = NULL, *memcg, *dfl, *kn = NULL;
	unsigned int flags = 0;
	int zero = 0;

	if (!group_dead)
		return 0; /* a thread; its process is reported by its last thread */
	KREAD(flags, task, TASK_FLAGS);
	if (flags & PXO_PF_KTHREAD)
		return 0;

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
	KREAD(signal, task, TASK_SIGNAL);
	if (signal)
		KREAD(e->exit_code, signal, SIGNAL_GROUP_EXIT_CODE);

	/* The leader stays allocated (a zombie at worst) until the whole group
	 * is reaped, which cannot happen before this, its last thread, exits. */
	KREAD(leader, task, TASK_GROUP_LEADER);
	if (!leader)
		leader = task;
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
