//! cgroup v2 memory file access and parsers (pure parsers are unit-tested
//! against fixture text and temp-dir cgroup trees).

use std::collections::BTreeMap;
use std::path::Path;

/// A memory limit file value: a byte count or "max".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Limit {
    Bytes(u64),
    #[serde(serialize_with = "ser_max")]
    Max,
}

fn ser_max<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("max")
}

impl Limit {
    pub fn parse(s: &str) -> Option<Limit> {
        let s = s.trim();
        if s == "max" {
            Some(Limit::Max)
        } else {
            s.parse().ok().map(Limit::Bytes)
        }
    }
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Bytes(b) => Some(b),
            Limit::Max => None,
        }
    }
    pub fn render(self) -> String {
        match self {
            Limit::Bytes(b) => b.to_string(),
            Limit::Max => "max".into(),
        }
    }
}

/// "key value" lines (memory.events, memory.stat) into a map.
pub fn parse_kv(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// memory.events counters we use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Events {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

impl Events {
    pub fn parse(text: &str) -> Events {
        let m = parse_kv(text);
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        Events {
            low: g("low"),
            high: g("high"),
            max: g("max"),
            oom: g("oom"),
            oom_kill: g("oom_kill"),
            oom_group_kill: g("oom_group_kill"),
        }
    }
}

/// One line of memory.pressure ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0").
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// memory.pressure: (some, full).
pub fn parse_pressure(text: &str) -> (Option<PressureLine>, Option<PressureLine>) {
    let mut some = None;
    let mut full = None;
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let kind = it.next();
        let mut p = PressureLine::default();
        let mut ok = false;
        for f in it {
            let Some((k, v)) = f.split_once('=') else {
                continue;
            };
            match k {
                "avg10" => p.avg10 = v.parse().unwrap_or(0.0),
                "avg60" => p.avg60 = v.parse().unwrap_or(0.0),
                "avg300" => p.avg300 = v.parse().unwrap_or(0.0),
                "total" => {
                    p.total_us = v.parse().unwrap_or(0);
                    ok = true;
                }
                _ => {}
            }
        }
        match (kind, ok) {
            (Some("some"), true) => some = Some(p),
            (Some("full"), true) => full = Some(p),
            _ => {}
        }
    }
    (some, full)
}

/// Working set from memory.stat: anon + file - inactive_file (bytes).
pub fn working_set(stat: &str) -> Option<u64> {
    let m = parse_kv(stat);
    let anon = *m.get("anon")?;
    let file = m.get("file").copied().unwrap_or(0);
    let inactive = m.get("inactive_file").copied().unwrap_or(0);
    Some(anon + file.saturating_sub(inactive))
}

pub fn read(dir: &Path, file: &str) -> std::io::Result<String> {
    std::fs::read_to_string(dir.join(file))
}

pub fn read_u64(dir: &Path, file: &str) -> std::io::Result<u64> {
    let s = read(dir, file)?;
    s.trim().parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{file}: '{}'", s.trim()),
        )
    })
}

pub fn read_limit(dir: &Path, file: &str) -> std::io::Result<Limit> {
    let s = read(dir, file)?;
    Limit::parse(&s).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{file}: '{}'", s.trim()),
        )
    })
}

pub fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing '{value}' to {}: {e}", dir.join(file).display()),
        )
    })
}

/// Is the memory controller enabled for the children of `root`'s parent,
/// i.e. do the session dirs have memory.* files? Err is the reason.
pub fn check_memory_controller(high: &Path, low: &Path) -> Result<(), String> {
    for d in [high, low] {
        if !d.is_dir() {
            return Err(format!("{} does not exist", d.display()));
        }
        if !d.join("memory.current").exists() {
            return Err(format!(
                "no memory controller in {} (not in the parent's cgroup.subtree_control)",
                d.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(Limit::parse("max\n"), Some(Limit::Max));
        assert_eq!(Limit::parse("1048576\n"), Some(Limit::Bytes(1 << 20)));
        assert_eq!(Limit::parse("x"), None);
        assert_eq!(Limit::Max.render(), "max");
        assert_eq!(serde_json::to_string(&Limit::Max).unwrap(), "\"max\"");
        assert_eq!(serde_json::to_string(&Limit::Bytes(5)).unwrap(), "5");
    }

    #[test]
    fn events_and_stat() {
        let e = Events::parse("low 0\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(
            e,
            Events {
                low: 0,
                high: 12,
                max: 3,
                oom: 2,
                oom_kill: 1,
                oom_group_kill: 0
            }
        );
        assert_eq!(Events::parse(""), Events::default());
        let stat = "anon 1000\nfile 500\nkernel 7\nactive_file 100\ninactive_file 400\n";
        assert_eq!(working_set(stat), Some(1100));
        assert_eq!(working_set("file 5\n"), None);
    }

    #[test]
    fn pressure() {
        let (s, f) = parse_pressure(
            "some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=99\n",
        );
        let s = s.unwrap();
        assert_eq!(s.avg10, 1.5);
        assert_eq!(s.total_us, 12345);
        assert_eq!(f.unwrap().total_us, 99);
        assert_eq!(parse_pressure("garbage"), (None, None));
    }

    #[test]
    fn memory_controller_check() {
        let t = tempfile::tempdir().unwrap();
        let (h, l) = (t.path().join("session_high"), t.path().join("session_low"));
        assert!(check_memory_controller(&h, &l)
            .unwrap_err()
            .contains("does not exist"));
        std::fs::create_dir_all(&h).unwrap();
        std::fs::create_dir_all(&l).unwrap();
        assert!(check_memory_controller(&h, &l)
            .unwrap_err()
            .contains("no memory controller"));
        std::fs::write(h.join("memory.current"), "0").unwrap();
        std::fs::write(l.join("memory.current"), "0").unwrap();
        check_memory_controller(&h, &l).unwrap();
        write(&h, "memory.low", "5").unwrap();
        assert_eq!(read_u64(&h, "memory.low").unwrap(), 5);
        write(&h, "memory.high", "max").unwrap();
        assert_eq!(read_limit(&h, "memory.high").unwrap(), Limit::Max);
    }
}
