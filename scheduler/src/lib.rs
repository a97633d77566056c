//! The flattened-cgroup sched_ext scheduler. Not built yet: see issue 3.
//! agentcgd reports `cfs: scheduler not built` until it is.
