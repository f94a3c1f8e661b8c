/* Reading a task's cgroups from any pxo program, and the one cgroup record
 * every program shares with user space.
 * Keep struct pxo_cgroup in sync with CgroupC in edge/bpf.py;
 * tests/edge/test_bpf_layout.py checks the layouts agree.
 *
 * No kernel struct layout comes from headers here: the headers BCC compiles
 * with may belong to another kernel. Every member offset is a -D flag that
 * edge/bpf.py computes from the running kernel's BTF (TASK_CGROUPS,
 * CGROUP_KN, ...); every read is an explicit bpf_probe_read_kernel at
 * base + offset. */
#ifndef PXO_BPF_CGROUP_H
#define PXO_BPF_CGROUP_H

#define PXO_COMM_LEN 16    /* TASK_COMM_LEN */
#define PXO_PATH_DEPTH 16  /* cgroup nesting levels recorded; deeper paths are flagged truncated */
#define PXO_NAME_LEN 128   /* bytes per cgroup directory name (NUL-terminated, cut if longer) */

/* A cgroup as the kernel names it, walked through kernfs at the moment of the
 * event. Walking in the kernel (rather than resolving the id later from
 * cgroupfs) matters: container runtimes remove an OOM-killed container's
 * cgroup within milliseconds, after which the id resolves to nothing. */
struct pxo_cgroup {
	__u64 id;        /* kernfs node id: the inode number of the cgroup's directory */
	__u32 depth;     /* how many entries of names[] are filled */
	__u32 truncated; /* 1 when the cgroup is nested deeper than PXO_PATH_DEPTH */
	/* Leaf first: names[0] is the cgroup's own directory, names[depth-1] a
	 * child of the hierarchy root. The root itself is "/" and has no entry. */
	char names[PXO_PATH_DEPTH][PXO_NAME_LEN];
};

/* dst = *(typeof(dst) *)((char *)base + off), through the verifier-safe helper */
#define KREAD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(base) + (off))

/* The task's cgroup in the unified (v2) hierarchy: task->cgroups->dfl_cgrp */
static __always_inline void *pxo_task_dfl_cgroup(void *task)
{
	void *cset = NULL, *cgrp = NULL;

	KREAD(cset, task, TASK_CGROUPS);
	if (cset)
		KREAD(cgrp, cset, CSS_SET_DFL_CGRP);
	return cgrp;
}

/* The task's memory cgroup, on whichever hierarchy memory is bound to (v1
 * memory hierarchy or v2): task->cgroups->subsys[memory_cgrp_id]->cgroup.
 * This is the cgroup whose limit is charged. */
static __always_inline void *pxo_task_memcg(void *task)
{
	void *cgrp = NULL;
#if MEMORY_CGRP_ID >= 0
	void *cset = NULL, *css = NULL;

	KREAD(cset, task, TASK_CGROUPS);
	if (cset)
		KREAD(css, cset, CSS_SET_SUBSYS + MEMORY_CGRP_ID * sizeof(void *));
	if (css)
		KREAD(cgrp, css, CSS_CGROUP);
#endif
	return cgrp;
}

/* The kernfs id of a cgroup (0 for NULL): equals the inode number of its directory. */
static __always_inline u64 pxo_cgroup_id(void *cgrp)
{
	void *kn = NULL;
	u64 id = 0;

	if (!cgrp)
		return 0;
	KREAD(kn, cgrp, CGROUP_KN);
	if (kn)
		KREAD(id, kn, KERNFS_NODE_ID);
	return id;
}

/* Fill *out with the cgroup's id and its path names, walked through kernfs. */
static __always_inline void pxo_read_cgroup(void *cgrp, struct pxo_cgroup *out)
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
	for (int i = 0; i < PXO_PATH_DEPTH; i++) {
		void *parent = NULL;
		const char *name = NULL;

		KREAD(parent, kn, KERNFS_NODE_PARENT);
		if (!parent)
			return; /* kn is the hierarchy root, which has no name */
		KREAD(name, kn, KERNFS_NODE_NAME);
		bpf_probe_read_kernel_str(out->names[i], PXO_NAME_LEN, name);
		out->depth = i + 1;
		kn = parent;
	}
	{
		void *parent = NULL;

		KREAD(parent, kn, KERNFS_NODE_PARENT);
		out->truncated = parent != NULL;
	}
}

#endif /* PXO_BPF_CGROUP_H */
