//! A minimal stderr logger: `2026-11-21T01:34:18Z INFO  message`.
//!
//! Under systemd, when stderr is the journal (JOURNAL_STREAM names the
//! device and inode of our stderr), lines are `<PRIORITY>message` instead
//! (sd-daemon(3) prefixes): the journal stores the level and adds its own
//! timestamp, so none is printed twice.
//!
//! RUST_LOG (error|warn|info|debug|trace, default info) sets the level.
//! We write each record with one `write_all` on an unbuffered stderr so
//! lines from several threads never interleave.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    level: LevelFilter,
    journal: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = if self.journal {
            format!("<{}>{}\n", syslog_priority(r.level()), r.args())
        } else {
            format!("{} {:<5} {}\n", timestamp(), r.level(), r.args())
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger; the level comes from RUST_LOG.
pub fn init() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    let journal = stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref());
    if log::set_boxed_logger(Box::new(StderrLogger { level, journal })).is_ok() {
        log::set_max_level(level);
    }
}

/// syslog(3) priority of a level: err 3, warning 4, info 6, debug 7.
fn syslog_priority(l: log::Level) -> u8 {
    match l {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// JOURNAL_STREAM is `DEVICE:INODE` of the journal stream systemd connected;
/// it only counts when our stderr is still that stream (not redirected).
fn stderr_is_journal(var: Option<&str>) -> bool {
    use std::os::fd::AsRawFd;
    let Some((dev, ino)) = var.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// UTC wall-clock time, RFC 3339, second resolution.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::{civil_from_days, stderr_is_journal};

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
    }

    #[test]
    fn journal_detection_needs_our_stderr() {
        use std::os::unix::fs::MetadataExt;
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:2")));
        // The real device and inode of stderr count.
        if let Ok(m) = std::fs::metadata("/proc/self/fd/2") {
            assert!(stderr_is_journal(Some(&format!("{}:{}", m.dev(), m.ino()))));
        }
    }
}
