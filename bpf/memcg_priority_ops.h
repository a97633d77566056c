/* SPDX-License-Identifier: GPL-2.0 */
/*
 * struct memcg_bpf_ops: the struct_ops interface of the out-of-tree RFC
 * series "mm: memcontrol: Add BPF hooks for memory controller". No released
 * kernel has it, so no vmlinux.h declares it: it is declared here with the
 * RFC's member signatures. libbpf matches it by name against the running
 * kernel's BTF at load time; the memcg crate checks that BTF first (type
 * and member names, memcg::bpf::OPS_MEMBERS) and does not load where the
 * type is absent. BPF side only (include after vmlinux.h).
 */
#ifndef __MEMCG_PRIORITY_OPS_H
#define __MEMCG_PRIORITY_OPS_H

struct mem_cgroup;

struct memcg_bpf_ops {
	void (*handle_cgroup_online)(struct mem_cgroup *memcg);
	void (*handle_cgroup_offline)(struct mem_cgroup *memcg);
	bool (*below_low)(struct mem_cgroup *memcg);
	bool (*below_min)(struct mem_cgroup *memcg);
	unsigned int (*get_high_delay_ms)(struct mem_cgroup *memcg);
};

#endif /* __MEMCG_PRIORITY_OPS_H */
