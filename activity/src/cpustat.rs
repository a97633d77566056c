//! cgroup v2 `cpu.stat`: `usage_usec` is there on every cgroup (the base
//! statistics of cgroup v2 core, with or without the cpu controller).

use std::io;
use std::path::Path;

/// `usage_usec` of the cgroup at `dir`: CPU time of its tasks, in us.
pub fn usage_usec(dir: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(dir.join("cpu.stat"))?;
    parse_usage(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no usage_usec line", dir.join("cpu.stat").display()),
        )
    })
}

fn parse_usage(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_line() {
        let t = "usage_usec 17503377958\nuser_usec 16038913133\nsystem_usec 1464464824\n";
        assert_eq!(parse_usage(t), Some(17503377958));
        assert_eq!(parse_usage("user_usec 1\n"), None);
        assert_eq!(parse_usage("usage_usec x\n"), None);
    }

    #[test]
    fn missing_file_is_an_error() {
        let d = std::env::temp_dir().join("activity-no-such-cgroup");
        assert!(usage_usec(&d).is_err());
    }
}
