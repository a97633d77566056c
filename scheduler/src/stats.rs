//! Statistics as the status shows them, cgroup id to path mapping, and the
//! flattened-weight math mirrored from the BPF side (for expectations in
//! tests and benchmarks).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

/// One cgroup's counters as read from the BPF map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawCgroupStats {
    pub cgid: u64,
    pub cpu_time_ns: u64,
    pub dispatches: u64,
    pub picks: u64,
    pub weight: u32,
    /// Fixed point, [`crate::HWEIGHT_ONE`] = 1.0.
    pub hweight: u32,
    pub level: u32,
}

/// Global counters, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GlobalCounters {
    /// Woke up on an idle CPU and went straight to its local queue.
    pub local: u64,
    /// Queued on its cgroup's queue: the weighted path.
    pub cgroup: u64,
    /// Single-CPU tasks (per-CPU kernel threads, `taskset -c N`).
    pub pinned: u64,
    /// Restricted cpumask (or no cgroup context): the shared fallback queue.
    pub fallback: u64,
    pub activations: u64,
    pub deactivations: u64,
    pub hweight_updates: u64,
    /// A CPU picked the cgroup with the lowest cgroup vtime.
    pub picks: u64,
    pub pick_empty: u64,
    pub pick_gone: u64,
    /// A CPU stayed with its cgroup inside the slice.
    pub keeps: u64,
    /// A CPU's cgroup slice expired.
    pub expires: u64,
    /// A waking cgroup's idle credit was capped.
    pub budget_caps: u64,
    pub idle_kicks: u64,
    /// Idle CPUs kicked by the guard timer because work was queued.
    pub guard_kicks: u64,
    /// Fallback tasks served ahead of turn after waiting over two slices.
    pub aged_fallbacks: u64,
    /// Cgroups with queued tasks found off the rbtree and requeued (should
    /// stay 0: each one would have been a stranded task).
    pub requeues: u64,
    /// Cgroup tasks served out of turn after waiting over 2 s (0 unless a
    /// cgroup's affinity-restricted tasks used up its share).
    pub rescues: u64,
    /// A cgroup's lead over the cgroup clock was capped (its fallback or
    /// idle-CPU runtime went beyond its share).
    pub lead_caps: u64,
}

/// Per-cgroup statistics in `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Hierarchical weight as a fraction of the machine (0..=1), as last
    /// computed while it was active.
    pub hweight: f64,
    /// Depth below the root cgroup.
    pub level: u32,
}

/// Global statistics in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GlobalStats {
    /// Dispatches straight to an idle CPU's local queue.
    pub local_dispatches: u64,
    /// Dispatches through the per-cgroup queues (the weighted path).
    pub cgroup_dispatches: u64,
    /// Dispatches around the cgroup queues for tasks that cannot use them:
    /// pinned + fallback (their CPU time is charged to the cgroup after).
    pub fallbacks: u64,
    /// Of which single-CPU tasks.
    pub pinned_dispatches: u64,
    /// Of which restricted-cpumask tasks through the shared fallback queue.
    pub fallback_dispatches: u64,
    /// All counters.
    pub counters: GlobalCounters,
}

impl From<GlobalCounters> for GlobalStats {
    fn from(c: GlobalCounters) -> Self {
        Self {
            local_dispatches: c.local,
            cgroup_dispatches: c.cgroup,
            fallbacks: c.pinned + c.fallback,
            pinned_dispatches: c.pinned,
            fallback_dispatches: c.fallback,
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
        if let Ok(md) = std::fs::metadata(root) {
            by_id.insert(md.ino(), "/".to_string());
        }
        let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            if depth >= MAX_DEPTH || by_id.len() >= MAX_ENTRIES {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for ent in rd.flatten() {
                let Ok(ft) = ent.file_type() else { continue };
                if !ft.is_dir() {
                    continue;
                }
                let Ok(md) = ent.metadata() else { continue };
                let name = ent.file_name().to_string_lossy().into_owned();
                let path = format!("{rel}/{name}");
                by_id.insert(md.ino(), path.clone());
                stack.push((ent.path(), path, depth + 1));
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
            hweight: hweight_fraction(r.hweight),
            level: r.level,
        })
        .collect();
    rows.sort_by(|a, b| a.path.cmp(&b.path));
    rows
}

/// Fixed-point hweight to a fraction.
pub fn hweight_fraction(hw: u32) -> f64 {
    f64::from(hw) / f64::from(crate::HWEIGHT_ONE)
}

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

    #[test]
    fn hweight_fixed_point() {
        assert_eq!(hweight_fraction(crate::HWEIGHT_ONE), 1.0);
        assert_eq!(hweight_fraction(crate::HWEIGHT_ONE / 4), 0.25);
    }

    #[test]
    fn paths_from_inodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("agentcg/session_high")).unwrap();
        std::fs::create_dir_all(dir.path().join("agentcg/session_low")).unwrap();
        std::fs::write(dir.path().join("agentcg/cpu.weight"), "100").unwrap();
        let paths = CgroupPaths::scan(dir.path());
        let ino = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().ino();
        assert_eq!(
            paths.get(ino("agentcg/session_high")),
            Some("/agentcg/session_high")
        );
        assert_eq!(paths.get(ino("agentcg")), Some("/agentcg"));
        assert_eq!(
            paths.get(std::fs::metadata(dir.path()).unwrap().ino()),
            Some("/")
        );
        assert_eq!(paths.len(), 4);

        let raw = [
            RawCgroupStats {
                cgid: ino("agentcg/session_low"),
                hweight: crate::HWEIGHT_ONE / 4,
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
        assert_eq!(rows[0].hweight, 0.25);
        assert_eq!(rows[1].path, "cgroup:999999999");
    }

    #[test]
    fn global_fallbacks_sum() {
        let g = GlobalStats::from(GlobalCounters {
            pinned: 3,
            fallback: 4,
            local: 1,
            ..Default::default()
        });
        assert_eq!(g.fallbacks, 7);
        assert_eq!(g.local_dispatches, 1);
    }
}
