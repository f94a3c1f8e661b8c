/* The one struct bpf/exit.bpf.c shares with user space.
 * Keep in sync with the ctypes mirror in edge/sources/exit.py (ExitEventC);
 * tests/edge/test_bpf_layout.py checks that the sizes and offsets agree. */
#ifndef PXO_BPF_EXIT_H
#define PXO_BPF_EXIT_H

#include "cgroup.h"

/* One user-space process whose last thread exited. Kept to one cgroup record
 * (2 KiB of the ~2.1 KiB): exits are frequent, and the v2 path, when it is
 * not the memory cgroup, is resolved from cgroup_v2_id in user space. */
struct exit_event {
	__u64 boot_ns;       /* bpf_ktime_get_boot_ns() at sched_process_exit: since boot, suspend included */
	__u32 tgid;          /* the process id */
	__u32 tid;           /* the thread that exited last (the one that saw the group die) */
	__u32 ppid;          /* real_parent->tgid at exit: the process that will reap it */
	/* signal->group_exit_code: the wait status the parent will get, raw.
	 * Bits 0-6 the terminating signal, bit 7 "core dumped", bits 8-15 the
	 * exit status; user space decodes it. */
	__u32 exit_code;
	__u64 cgroup_v2_id;  /* kernfs id (inode number) of the process's v2 cgroup; 0 when unknown */
	/* 1 when the memory cgroup IS the v2 cgroup (memory controller on the
	 * unified hierarchy, as on most Kubernetes nodes): user space then takes
	 * the v2 path from memcg instead of resolving cgroup_v2_id. Compared as
	 * pointers in the kernel, since ids repeat across hierarchies. */
	__u32 v2_is_memcg;
	/* 1 when the v2 cgroup is the hierarchy's root ("/"): every process is
	 * there when nothing uses the unified hierarchy, which may then not even
	 * be mounted for user space to resolve ids in. */
	__u32 v2_is_root;
	char comm[PXO_COMM_LEN]; /* group_leader->comm: the process's name, not the last thread's */
	/* The process's memory cgroup (see pxo_task_memcg): walked now, because a
	 * container runtime removes a dead container's cgroup moments later. */
	struct pxo_cgroup memcg;
};

#endif /* PXO_BPF_EXIT_H */
