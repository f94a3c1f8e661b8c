#include <uapi/linux/ptrace.h>
#include "alloc_faults.h"

/* The last page faults of exited processes, for the edge's default source of
 * alloc_rate (alloc_faults, edge/sources/alloc_faults.py), which runs no
 * program per page: it reads the page faults the kernel already counts per
 * process (/proc/PID/stat minflt + majflt) once per interval. A process that
 * exits between two reads takes its last faults with it; this program, on
 * the raw tracepoint sched:sched_process_exit (once per exiting thread, rare
 * next to page faults), keeps them when the whole process is gone:
 * signal->live has just dropped to 0 (do_exit decrements it before the
 * tracepoint). By then every other thread has been released and its counts
 * added to signal->min_flt/maj_flt (__exit_signal); this thread's own are
 * still in its task_struct. The sum is what /proc/PID/stat showed last.
 * Raw tracepoint sched_process_exit: (struct task_struct *p[, bool group_dead]). */
_Static_assert(sizeof(struct alloc_exit) == ALLOC_EXIT_SIZE,
	       "bpf/alloc_faults.h and the mirror in edge/sources/alloc_faults.py disagree");

BPF_HASH(exits, u32, struct alloc_exit, ALLOC_MAX_KEYS); /* tgid -> its last counts; user space drains it */
BPF_ARRAY(alloc_lost, u64, 1); /* exits not kept: the map was full */

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
	void *task = (void *)ctx->args[0], *signal = NULL, *leader = NULL, *cset = NULL;
	struct alloc_exit e = {};
	unsigned long min_flt = 0, maj_flt = 0, smin = 0, smaj = 0;
	int live = 1, zero = 0;
	u32 tgid = 0;

	bpf_probe_read_kernel(&signal, sizeof(signal), (char *)task + TASK_SIGNAL);
	if (!signal)
		return 0;
	bpf_probe_read_kernel(&live, sizeof(live), (char *)signal + SIGNAL_LIVE);
	if (live != 0) /* other threads live on: the process has not exited */
		return 0;
	bpf_probe_read_kernel(&tgid, sizeof(tgid), (char *)task + TASK_TGID);
	bpf_probe_read_kernel(&min_flt, sizeof(min_flt), (char *)task + TASK_MIN_FLT);
	bpf_probe_read_kernel(&maj_flt, sizeof(maj_flt), (char *)task + TASK_MAJ_FLT);
	bpf_probe_read_kernel(&smin, sizeof(smin), (char *)signal + SIGNAL_MIN_FLT);
	bpf_probe_read_kernel(&smaj, sizeof(smaj), (char *)signal + SIGNAL_MAJ_FLT);
	e.faults = min_flt + maj_flt + smin + smaj;
	/* The leader names the process and holds its start time, as /proc/PID/stat shows them. */
	bpf_probe_read_kernel(&leader, sizeof(leader), (char *)task + TASK_GROUP_LEADER);
	if (leader) {
		bpf_probe_read_kernel(&e.start_boottime_ns, sizeof(e.start_boottime_ns),
				      (char *)leader + TASK_START_BOOTTIME);
		bpf_probe_read_kernel(&e.comm, sizeof(e.comm), (char *)leader + TASK_COMM);
	}
#if MEMORY_CGRP_ID >= 0
	{
		void *css = NULL, *cgrp = NULL, *kn = NULL;

		bpf_probe_read_kernel(&cset, sizeof(cset), (char *)task + TASK_CGROUPS);
		if (cset)
			bpf_probe_read_kernel(&css, sizeof(css), (char *)cset + CSS_SET_SUBSYS +
					      MEMORY_CGRP_ID * sizeof(void *));
		if (css)
			bpf_probe_read_kernel(&cgrp, sizeof(cgrp), (char *)css + CSS_CGROUP);
		if (cgrp)
			bpf_probe_read_kernel(&kn, sizeof(kn), (char *)cgrp + CGROUP_KN);
		if (kn)
			bpf_probe_read_kernel(&e.memcg_id, sizeof(e.memcg_id), (char *)kn + KERNFS_NODE_ID);
	}
#endif
	if (exits.update(&tgid, &e) != 0) {
		u64 *lost = alloc_lost.lookup(&zero);

		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
	return 0;
}
