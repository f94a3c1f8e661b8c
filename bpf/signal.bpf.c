/* One event per SIGKILL sent from user space: kill(), tgkill(), sigqueue(),
 * pidfd_send_signal(), and writes to cgroup.kill (the kernel sends those with
 * SEND_SIG_NOINFO on behalf of the writer, so they count as SI_USER).
 *
 * Hook: raw tracepoint signal:signal_generate. Its arguments on this kernel
 * (BTF typedef btf_trace_signal_generate, and TP_PROTO in
 * include/trace/events/signal.h) are
 *     (int sig, struct kernel_siginfo *info, struct task_struct *task,
 *      int group, int result)
 * It fires at the end of __send_signal_locked(), whatever the outcome
 * (result), in the sender's context: current is the sender. It also fires in
 * send_sigqueue() when a POSIX timer expires (si_code SI_TIMER): there
 * current is whichever task the timer interrupted, not a sender.
 *
 * Why si_code decides "user space": the kernel's own SIGKILLs (the OOM
 * killer, RLIMIT_CPU, force_sig()) carry SEND_SIG_PRIV or an info with
 * si_code SI_KERNEL (0x80); signals a process asked for carry si_code <= 0
 * (SI_FROMUSER in uapi siginfo.h). OOM kills are recorded by bpf/oom.bpf.c;
 * keeping them out here is what lets kill_events answer "who killed it"
 * without double counting.
 *
 * Filtering happens here, not in user space: signal_generate fires for
 * every signal on the node (SIGCHLD on every exit, SIGALRM, SIGPROF...),
 * and a SIGKILL from user space is rare.
 *
 * No kernel struct layout comes from headers (see cgroup.h): every member
 * offset is a -D flag computed by edge/bpf.py from the running kernel's BTF.
 */
#include <uapi/linux/ptrace.h>
#include "signal.h"

/* User space passes the size of its mirror of struct kill_event: if the two
 * ever disagree, the program fails to compile instead of being misread. */
_Static_assert(sizeof(struct kill_event) == SIGNAL_EVENT_SIZE,
	       "bpf/signal.h and the mirror in edge/sources/signal.py disagree");

/* uapi values, the same on every architecture Linux supports */
#define PXO_SIGKILL 9
#define PXO_SI_USER 0
#define PXO_SI_KERNEL 0x80
/* The two special "info" pointers of include/linux/sched/signal.h: not
 * siginfo addresses, just markers (they must never be dereferenced). */
#define PXO_SEND_SIG_NOINFO 0UL
#define PXO_SEND_SIG_PRIV 1UL

/* pages: 1 MiB holds ~160 events of 6.2 KiB. A container runtime stopping a
 * pod sends one SIGKILL per process in a burst; this absorbs a large pod. */
BPF_RINGBUF_OUTPUT(kill_events, 256);
BPF_ARRAY(kill_lost, u64, 1); /* events dropped because the ring buffer was full */

RAW_TRACEPOINT_PROBE(signal_generate)
{
	int sig = (int)ctx->args[0];
	unsigned long info = (unsigned long)ctx->args[1];
	void *task = (void *)ctx->args[2];
	struct kill_event *e;
	u64 pid_tgid;
	int code = PXO_SI_KERNEL; /* unreadable siginfo: not known to be user space, dropped */
	int zero = 0;

	if (sig != PXO_SIGKILL)
		return 0;
	/* The same mapping the tracepoint's own TP_STORE_SIGINFO uses. */
	if (info == PXO_SEND_SIG_NOINFO)
		code = PXO_SI_USER;
	else if (info == PXO_SEND_SIG_PRIV)
		code = PXO_SI_KERNEL;
	else
		KREAD(code, (void *)info, KERNEL_SIGINFO_CODE);
	if (code > 0)
		return 0; /* SI_KERNEL: the kernel's own kill (OOM killer, rlimits, faults) */

	e = kill_events.ringbuf_reserve(sizeof(struct kill_event));
	if (!e) {
		u64 *lost = kill_lost.lookup(&zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}

	pid_tgid = bpf_get_current_pid_tgid();
	e->boot_ns = bpf_ktime_get_boot_ns();
	e->sender_tgid = pid_tgid >> 32;
	e->sender_tid = (u32)pid_tgid;
	bpf_get_current_comm(&e->sender_comm, sizeof(e->sender_comm));
	e->sig = sig;
	e->si_code = code;
	e->group = (int)ctx->args[3];
	e->result = (int)ctx->args[4];

	e->target_tgid = 0;
	e->target_tid = 0;
	KREAD(e->target_tgid, task, TASK_TGID);
	KREAD(e->target_tid, task, TASK_PID);
	bpf_probe_read_kernel(&e->target_comm, sizeof(e->target_comm), (char *)task + TASK_COMM);

	pxo_read_cgroup(pxo_task_memcg((void *)bpf_get_current_task()), &e->sender_memcg);
	pxo_read_cgroup(pxo_task_memcg(task), &e->target_memcg);
	pxo_read_cgroup(pxo_task_dfl_cgroup(task), &e->target_cgroup_v2);

	kill_events.ringbuf_submit(e, 0);
	return 0;
}
