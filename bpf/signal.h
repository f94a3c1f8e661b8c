/* The one struct bpf/signal.bpf.c shares with user space.
 * Keep in sync with the ctypes mirror in edge/sources/signal.py (KillEventC);
 * tests/edge/test_bpf_layout.py checks that the sizes and offsets agree. */
#ifndef PXO_BPF_SIGNAL_H
#define PXO_BPF_SIGNAL_H

#include "cgroup.h"

/* One SIGKILL sent from user space (si_code <= 0), as signal:signal_generate saw it. */
struct kill_event {
	__u64 boot_ns;        /* bpf_ktime_get_boot_ns() at signal_generate: since boot, suspend included */
	__u32 sender_tgid;    /* process that sent the signal (current at the tracepoint) */
	__u32 sender_tid;     /* task that sent it */
	__u32 target_tgid;    /* process the signal was sent to (task->tgid) */
	__u32 target_tid;     /* task the kernel queued it on (task->pid); the leader for a group signal */
	__s32 sig;            /* signal number: always 9 (SIGKILL), the program drops the rest */
	/* siginfo si_code as the tracepoint reports it: SEND_SIG_NOINFO counts as
	 * SI_USER (0), SEND_SIG_PRIV as SI_KERNEL (0x80). Always <= 0 here:
	 * SI_USER 0 kill(), SI_QUEUE -1 sigqueue(), SI_TIMER -2, SI_MESGQ -3,
	 * SI_ASYNCIO -4, SI_SIGIO -5, SI_TKILL -6 tgkill()/tkill(). */
	__s32 si_code;
	__s32 group;          /* tracepoint argument: 1 when sent to the whole process (type != PIDTYPE_PID) */
	/* tracepoint argument, enum trace_signal_result: 0 delivered, 1 ignored
	 * (e.g. the target is already exiting), 2 already pending, 3 overflow
	 * fail, 4 lose info. */
	__s32 result;
	char sender_comm[PXO_COMM_LEN]; /* current->comm: the sending thread's name */
	char target_comm[PXO_COMM_LEN]; /* task->comm of the target task */
	/* The sender's memory cgroup (see pxo_task_memcg in cgroup.h). */
	struct pxo_cgroup sender_memcg;
	/* The target's memory cgroup: walked now, because a SIGKILLed container's
	 * cgroup is usually removed by its runtime moments later. */
	struct pxo_cgroup target_memcg;
	/* The target's cgroup in the unified (v2) hierarchy. */
	struct pxo_cgroup target_cgroup_v2;
};

#endif /* PXO_BPF_SIGNAL_H */
