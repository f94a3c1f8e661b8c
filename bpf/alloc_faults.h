/* The one struct bpf/alloc_faults.bpf.c shares with user space: an exited
 * process's page-fault counts, the value of its exits map (keyed by tgid).
 * Keep in sync with AllocExitC in edge/sources/alloc_faults.py;
 * tests/edge/test_bpf_layout.py checks that the sizes and offsets agree. */
#ifndef PXO_BPF_ALLOC_FAULTS_H
#define PXO_BPF_ALLOC_FAULTS_H

#include "cgroup.h"

/* The last page-fault counts of a process that exited. */
struct alloc_exit {
	__u64 start_boottime_ns; /* the thread group leader's start_boottime: ns since
	                          * boot, suspend included (/proc/PID/stat's starttime
	                          * is this in clock ticks): tells a reused pid apart */
	__u64 memcg_id;          /* kernfs id (= directory inode) of the memory cgroup of the
	                          * thread that exited last; 0 without a memory controller */
	__u64 faults;            /* minor + major page faults of the whole process, over
	                          * its life (as /proc/PID/stat minflt + majflt) */
	char comm[PXO_COMM_LEN]; /* the thread group leader's comm, NUL-terminated */
};

#endif /* PXO_BPF_ALLOC_FAULTS_H */
