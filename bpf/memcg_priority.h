/* SPDX-License-Identifier: GPL-2.0 */
/*
 * memcg_priority: declarations shared by memcg_priority.bpf.c and the memcg
 * crate.
 *
 * (struct memcg_bpf_ops itself is in memcg_priority_ops.h, BPF side only.)
 */
#ifndef __MEMCG_PRIORITY_H
#define __MEMCG_PRIORITY_H


/* Counters the program keeps in .bss, read by userspace for status. */
struct memcg_prio_stats {
	unsigned long long pressure_events;  /* pressure noted (any source) */
	unsigned long long reclaim_events;   /* session_high tasks entering reclaim */
	unsigned long long burst_events;     /* session_high grew burst_pages in a window */
	unsigned long long high_charges;     /* session_high charge-batch refills seen */
	unsigned long long protect_calls;    /* below_low/below_min answered true */
	unsigned long long throttle_calls;   /* session_low get_high_delay_ms > 0 */
	unsigned long long online;           /* handle_cgroup_online calls */
	unsigned long long offline;          /* handle_cgroup_offline calls */
};

#endif /* __MEMCG_PRIORITY_H */
