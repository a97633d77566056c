//! Statistics as the status shows them, cgroup id to path mapping, and the
//! flattened-weight math mirrored from the BPF side (for expectations in
//! tests and benchmarks).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One cgroup's counters as read from the BPF map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawCgroupStats {
    pub cgid: u64,
    pub cpu_time_ns: u64,
    pub dispatches: u64,
    pub picks: u64,
    pub weight: u32,
    pub level: u32,
    /// Its slot in the BPF context array, and its parent's (the root: its own).
    pub slot: u32,
    pub parent: u32,
    /// Has runnable tasks, itself or below.
    pub active: bool,
    /// Sum of its active children's weights.
    pub child_weight_sum: u64,
}

/// Declares [`GlobalCounters`]: one line per counter of the BPF `gstats`
/// array (`enum agcg_gstat` in bpf/flatcg_intf.h): doc, field, index, and
/// whether it is an anomaly (a counter that must stay 0).
macro_rules! global_counters {
    ($( #[doc = $doc:literal] $name:ident = $idx:ident $(, $anomaly:ident)?; )*) => {
        /// Global counters, summed over CPUs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
        pub struct GlobalCounters {
            $( #[doc = $doc] pub $name: u64, )*
        }

        impl GlobalCounters {
            /// From the per-counter sums, indexed by `enum agcg_gstat`.
            pub(crate) fn from_sums(sums: &[u64]) -> Self {
                use crate::bpf::intf;
                let get = |i: u32| sums.get(i as usize).copied().unwrap_or(0);
                Self { $( $name: get(intf::$idx), )* }
            }

            /// `(name, value)` of every counter, in declaration order.
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }

            /// `(name, value)` of the anomaly counters, which stay 0 unless
            /// the scheduler misbehaves.
            pub fn anomalies(&self) -> Vec<(&'static str, u64)> {
                let mut v = Vec::new();
                $( $( let _ = stringify!($anomaly); v.push((stringify!($name), self.$name)); )? )*
                v
            }
        }

        /// scx_stats metadata: what `scx_agentcg` serves on the scx stats
        /// socket (`stats_meta`), each counter with its doc line.
        impl scx_stats::Meta for GlobalCounters {
            fn meta() -> scx_stats::StatsMeta {
                use scx_stats::{StatsData, StatsField, StatsFieldAttrs, StatsKind};
                let mut fields = std::collections::BTreeMap::new();
                $(
                    #[allow(unused_mut)]
                    let mut user = std::collections::BTreeMap::new();
                    $( user.insert(stringify!($anomaly).to_string(), "must stay 0".to_string()); )?
                    fields.insert(stringify!($name).to_string(), StatsField {
                        data: StatsData::Datum(StatsKind::U64),
                        attrs: StatsFieldAttrs { desc: Some($doc.trim().to_string()), user },
                    });
                )*
                scx_stats::StatsMeta {
                    name: "GlobalCounters".into(),
                    attrs: scx_stats::StatsStructAttrs {
                        top: Some("true".into()),
                        desc: Some("scx_agentcg global counters, summed over CPUs since load".into()),
                        user: Default::default(),
                    },
                    fields,
                }
            }
        }
    };
}

global_counters! {
    /// Woke up with an idle CPU available: straight to its local queue.
    local = agcg_gstat_AGCG_GS_LOCAL;
    /// Queued on its cgroup's queue: the weighted path.
    cgroup = agcg_gstat_AGCG_GS_CGROUP;
    /// The same, for tasks allowed on a subset of the online CPUs.
    subset = agcg_gstat_AGCG_GS_SUBSET;
    /// Per-CPU kernel threads, run on their CPU's local queue.
    kthread = agcg_gstat_AGCG_GS_KTHREAD;
    /// Single-CPU tasks (taskset -c N, one-CPU cpusets): per-CPU queue.
    pcpu = agcg_gstat_AGCG_GS_PCPU;
    /// A cgroup became active.
    activations = agcg_gstat_AGCG_GS_ACT;
    /// A cgroup became idle.
    deactivations = agcg_gstat_AGCG_GS_DEACT;
    /// Hierarchical weights recomputed.
    hweight_updates = agcg_gstat_AGCG_GS_HWT_UPDATE;
    /// Dispatch served the cgroup with the lowest cgroup vtime.
    picks = agcg_gstat_AGCG_GS_PICK;
    /// Dispatch served the CPU's single-CPU queue instead.
    picks_pcpu = agcg_gstat_AGCG_GS_PICK_PCPU;
    /// Dispatch kept the previous task running instead.
    picks_prev = agcg_gstat_AGCG_GS_PICK_PREV;
    /// A cgroup's queue ran empty and it left the tree.
    retires = agcg_gstat_AGCG_GS_RETIRE;
    /// A CPU passed over a cgroup whose queued tasks it may not run.
    skips = agcg_gstat_AGCG_GS_SKIP;
    /// A cgroup's credit against the clock was capped (as it woke or was charged).
    credit_caps = agcg_gstat_AGCG_GS_CREDIT_CAP;
    /// Idle CPUs kicked after a queueing.
    idle_kicks = agcg_gstat_AGCG_GS_KICK;
    /// CPUs preempted for a waking task whose cgroup (or, in one cgroup, vtime) was behind.
    preempts = agcg_gstat_AGCG_GS_PREEMPT;
    /// Single-CPU tasks served first after waiting 25 slices.
    pcpu_aged = agcg_gstat_AGCG_GS_PCPU_AGED;
    /// Tasks allowed on a subset of the CPUs, moved to one of them after waiting 25 slices.
    subset_aged = agcg_gstat_AGCG_GS_SUBSET_AGED;
    /// Anomaly: a dispatch ran out of its pick budget (1024 cgroups).
    pick_budget = agcg_gstat_AGCG_GS_PICK_BUDGET, anomaly;
    /// Anomaly: a dispatch had no room to pass over a 17th cgroup it may not serve.
    skip_budget = agcg_gstat_AGCG_GS_SKIP_BUDGET, anomaly;
}

/// Per-cgroup statistics in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// Path relative to the cgroup2 mount, with a leading `/` (`/` is the
    /// root cgroup); `cgroup:<id>` when the id could not be mapped.
    pub path: String,
    /// Cgroup id (the inode number of its directory).
    pub cgid: u64,
    /// CPU time its tasks ran under this scheduler.
    pub cpu_time_ns: u64,
    /// Times one of its tasks was put on a CPU.
    pub dispatches: u64,
    /// Times a CPU picked it by cgroup vtime.
    pub picks: u64,
    /// cpu.weight as the scheduler sees it.
    pub weight: u32,
    /// Hierarchical weight: its share of the machine now (0..=1), 0 while
    /// neither it nor a cgroup below it has runnable tasks.
    pub hweight: f64,
    /// Depth below the root cgroup.
    pub level: u32,
}

/// Global statistics in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GlobalStats {
    /// Dispatches straight to an idle CPU's local queue.
    pub local_dispatches: u64,
    /// Dispatches through the per-cgroup queues (the weighted path).
    pub cgroup_dispatches: u64,
    /// Dispatches around the cgroup queues: per-CPU kernel threads and
    /// single-CPU tasks (their CPU time is charged to their cgroup all
    /// the same).
    pub fallbacks: u64,
    /// Of which per-CPU kernel threads.
    pub pinned_dispatches: u64,
    /// Of which single-CPU user tasks through their CPU's queue.
    pub fallback_dispatches: u64,
    /// Sum of the anomaly counters (0 unless the scheduler misbehaves).
    pub anomalies: u64,
    /// All counters.
    pub counters: GlobalCounters,
}

impl From<GlobalCounters> for GlobalStats {
    fn from(c: GlobalCounters) -> Self {
        Self {
            local_dispatches: c.local,
            cgroup_dispatches: c.cgroup + c.subset,
            fallbacks: c.kthread + c.pcpu,
            pinned_dispatches: c.kthread,
            fallback_dispatches: c.pcpu,
            anomalies: c.anomalies().iter().map(|(_, v)| v).sum(),
            counters: c,
        }
    }
}

/// Maps cgroup ids (directory inode numbers) to paths under a cgroup2 mount.
#[derive(Debug, Default)]
pub struct CgroupPaths {
    by_id: HashMap<u64, String>,
}

const MAX_DEPTH: usize = 16;
const MAX_ENTRIES: usize = 100_000;

impl CgroupPaths {
    /// Walk the cgroup2 mount at `root`.
    pub fn scan(root: &Path) -> Self {
        let mut by_id = HashMap::new();
        let top = cgroupfs::Cgroup::new(root);
        if let Ok(id) = top.id() {
            by_id.insert(id, "/".to_string());
        }
        let mut stack = vec![(top, String::new(), 0usize)];
        while let Some((cg, rel, depth)) = stack.pop() {
            if depth >= MAX_DEPTH || by_id.len() >= MAX_ENTRIES {
                continue;
            }
            let Ok(names) = cg.children() else {
                continue;
            };
            for name in names {
                let child = cg.child(&name);
                let Ok(id) = child.id() else { continue };
                let path = format!("{rel}/{name}");
                by_id.insert(id, path.clone());
                stack.push((child, path, depth + 1));
            }
        }
        Self { by_id }
    }

    pub fn get(&self, cgid: u64) -> Option<&str> {
        self.by_id.get(&cgid).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Turn raw counters into status rows, sorted by path. Unknown ids show as
/// `cgroup:<id>`.
pub fn cgroup_rows(raw: &[RawCgroupStats], paths: &CgroupPaths) -> Vec<CgroupStats> {
    let by_slot: HashMap<u32, &RawCgroupStats> = raw.iter().map(|r| (r.slot, r)).collect();
    let mut rows: Vec<CgroupStats> = raw
        .iter()
        .map(|r| CgroupStats {
            path: paths
                .get(r.cgid)
                .map(str::to_string)
                .unwrap_or_else(|| format!("cgroup:{}", r.cgid)),
            cgid: r.cgid,
            cpu_time_ns: r.cpu_time_ns,
            dispatches: r.dispatches,
            picks: r.picks,
            weight: r.weight,
            hweight: share_now(r, &by_slot),
            level: r.level,
        })
        .collect();
    rows.sort_by(|a, b| a.path.cmp(&b.path));
    rows
}

/// A cgroup's hweight now, from the tree the BPF side keeps: the product up
/// to the root of each level's weight over its active siblings' sum. The BPF
/// side computes it only for cgroups whose tasks run, and only when they do.
fn share_now(r: &RawCgroupStats, by_slot: &HashMap<u32, &RawCgroupStats>) -> f64 {
    let mut share = 1.0;
    let mut c = r;
    for _ in 0..=MAX_LEVELS {
        if !c.active {
            return 0.0;
        }
        if c.level == 0 {
            return share;
        }
        let Some(p) = by_slot.get(&c.parent) else {
            return 0.0;
        };
        share *= f64::from(c.weight) / p.child_weight_sum.max(u64::from(c.weight)) as f64;
        c = p;
    }
    0.0
}

/// Levels below the root the BPF side accepts (its `MAX_DEPTH`).
const MAX_LEVELS: usize = 64;

/// A node of a weight tree for [`flatten`]: `(weight, active, children)`.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightNode {
    pub name: String,
    pub weight: u32,
    /// Has runnable tasks of its own (leaves); inner nodes are active when
    /// any child is.
    pub runnable: bool,
    pub children: Vec<WeightNode>,
}

impl WeightNode {
    pub fn leaf(name: &str, weight: u32) -> Self {
        Self {
            name: name.to_string(),
            weight,
            runnable: true,
            children: Vec::new(),
        }
    }

    pub fn inner(name: &str, weight: u32, children: Vec<WeightNode>) -> Self {
        Self {
            name: name.to_string(),
            weight,
            runnable: false,
            children,
        }
    }

    fn active(&self) -> bool {
        self.runnable || self.children.iter().any(WeightNode::active)
    }
}

/// The flattened shares the BPF side computes: each active node's share is
/// the product over its ancestors of weight / (sum of active siblings'
/// weights). Returns `(path, share)` for the active nodes with runnable
/// tasks, path joined by `/` below `root` (whose own share is 1).
pub fn flatten(root: &WeightNode) -> Vec<(String, f64)> {
    fn walk(node: &WeightNode, path: &str, share: f64, out: &mut Vec<(String, f64)>) {
        if node.runnable {
            out.push((path.to_string(), share));
        }
        let sum: u64 = node
            .children
            .iter()
            .filter(|c| c.active())
            .map(|c| u64::from(c.weight))
            .sum();
        for c in node.children.iter().filter(|c| c.active()) {
            let p = if path.is_empty() {
                c.name.clone()
            } else {
                format!("{path}/{}", c.name)
            };
            walk(c, &p, share * f64::from(c.weight) / sum as f64, out);
        }
    }
    let mut out = Vec::new();
    walk(root, "", 1.0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(v: &[(String, f64)], name: &str) -> f64 {
        v.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn flat_150_50_is_3_to_1() {
        let t = WeightNode::inner(
            "",
            100,
            vec![WeightNode::leaf("high", 150), WeightNode::leaf("low", 50)],
        );
        let f = flatten(&t);
        assert!((share(&f, "high") - 0.75).abs() < 1e-12);
        assert!((share(&f, "low") - 0.25).abs() < 1e-12);
    }

    #[test]
    fn nested_three_levels() {
        // t(100) { a(200) { x(100), y(300) }, b(100) }
        let t = WeightNode::inner(
            "t",
            100,
            vec![
                WeightNode::inner(
                    "a",
                    200,
                    vec![WeightNode::leaf("x", 100), WeightNode::leaf("y", 300)],
                ),
                WeightNode::leaf("b", 100),
            ],
        );
        let root = WeightNode::inner("", 100, vec![t]);
        let f = flatten(&root);
        assert!((share(&f, "t/a/x") - 1.0 / 6.0).abs() < 1e-12);
        assert!((share(&f, "t/a/y") - 0.5).abs() < 1e-12);
        assert!((share(&f, "t/b") - 1.0 / 3.0).abs() < 1e-12);
        let total: f64 = f.iter().map(|(_, s)| s).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn inactive_siblings_do_not_count() {
        let mut idle = WeightNode::leaf("idle", 1000);
        idle.runnable = false;
        let t = WeightNode::inner("", 100, vec![WeightNode::leaf("busy", 10), idle]);
        let f = flatten(&t);
        assert_eq!(f.len(), 1);
        assert!((share(&f, "busy") - 1.0).abs() < 1e-12);
    }

    /// A context row as the BPF side keeps it.
    fn ctx(cgid: u64, slot: u32, parent: u32, level: u32, weight: u32) -> RawCgroupStats {
        RawCgroupStats {
            cgid,
            slot,
            parent,
            level,
            weight,
            ..Default::default()
        }
    }

    #[test]
    fn hweight_now_from_the_tree() {
        // root { t(100) { a(200) { x(100), y(300) }, b(100) }, idle(500) }
        let mut raw = vec![
            ctx(1, 0, 0, 0, 100),
            ctx(2, 1, 0, 1, 100),
            ctx(3, 2, 1, 2, 200),
            ctx(4, 3, 2, 3, 100),
            ctx(5, 4, 2, 3, 300),
            ctx(6, 5, 1, 2, 100),
            ctx(7, 6, 0, 1, 500),
        ];
        for (slot, sum) in [(0, 100), (1, 300), (2, 400), (3, 0), (4, 0), (5, 0)] {
            raw[slot].active = true;
            raw[slot].child_weight_sum = sum;
        }
        let names = ["/", "/t", "/t/a", "/t/a/x", "/t/a/y", "/t/b", "/idle"];
        let paths = CgroupPaths {
            by_id: (1..).zip(names.map(String::from)).collect(),
        };
        let rows = cgroup_rows(&raw, &paths);
        let hw = |p: &str| rows.iter().find(|r| r.path == p).unwrap().hweight;
        assert_eq!(hw("/"), 1.0);
        assert_eq!(hw("/t"), 1.0);
        assert!((hw("/t/a") - 2.0 / 3.0).abs() < 1e-12);
        assert!((hw("/t/a/x") - 1.0 / 6.0).abs() < 1e-12);
        assert!((hw("/t/a/y") - 0.5).abs() < 1e-12);
        assert!((hw("/t/b") - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(hw("/idle"), 0.0);
    }

    #[test]
    fn paths_from_inodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("agentcg/session_high")).unwrap();
        std::fs::create_dir_all(dir.path().join("agentcg/session_low")).unwrap();
        std::fs::write(dir.path().join("agentcg/cpu.weight"), "100").unwrap();
        let paths = CgroupPaths::scan(dir.path());
        let ino = |p: &str| cgroupfs::Cgroup::new(dir.path().join(p)).id().unwrap();
        assert_eq!(
            paths.get(ino("agentcg/session_high")),
            Some("/agentcg/session_high")
        );
        assert_eq!(paths.get(ino("agentcg")), Some("/agentcg"));
        assert_eq!(
            paths.get(cgroupfs::Cgroup::new(dir.path()).id().unwrap()),
            Some("/")
        );
        assert_eq!(paths.len(), 4);

        let raw = [
            RawCgroupStats {
                cgid: ino("agentcg/session_low"),
                weight: 50,
                ..Default::default()
            },
            RawCgroupStats {
                cgid: 999_999_999,
                ..Default::default()
            },
        ];
        let rows = cgroup_rows(&raw, &paths);
        assert_eq!(rows[0].path, "/agentcg/session_low");
        assert_eq!(rows[0].hweight, 0.0);
        assert_eq!(rows[1].path, "cgroup:999999999");
    }

    #[test]
    fn global_fallbacks_sum() {
        let g = GlobalStats::from(GlobalCounters {
            kthread: 3,
            pcpu: 4,
            local: 1,
            pick_budget: 2,
            skip_budget: 1,
            ..Default::default()
        });
        assert_eq!(g.fallbacks, 7);
        assert_eq!(g.local_dispatches, 1);
        assert_eq!(g.anomalies, 3);
        assert_eq!(
            g.counters.anomalies(),
            vec![("pick_budget", 2), ("skip_budget", 1)]
        );
        assert_eq!(g.counters.named().len(), crate::bpf::NR_GSTATS as usize);
    }

    #[test]
    fn scx_stats_meta_names_every_counter() {
        use scx_stats::Meta;
        let meta = GlobalCounters::meta();
        let c = GlobalCounters::default();
        assert_eq!(meta.fields.len(), c.named().len());
        for (name, _) in c.named() {
            let f = &meta.fields[name];
            assert!(
                f.attrs.desc.as_deref().is_some_and(|d| !d.is_empty()),
                "{name}"
            );
            let anomaly = c.anomalies().iter().any(|(n, _)| *n == name);
            assert_eq!(f.attrs.user.contains_key("anomaly"), anomaly, "{name}");
        }
        // what the stats server answers for "stats": the counters as JSON
        use scx_stats::ToJson;
        let json = GlobalCounters { preempts: 5, ..c }.to_json().unwrap();
        assert_eq!(json["preempts"], 5);
    }
}
