//! Property tests (issue 13): the /proc and proc-connector parsers never
//! panic, whatever the bytes, and keep what they promise on valid input.

use proptest::prelude::*;

use crate::procfs::{parse_stat, parse_status_uid, split_argv, ProcFs};

/// A /proc/PID/stat line with an arbitrary comm (spaces, parens, newlines).
fn stat_line(pid: u32, comm: &str, ppid: u32, threads: u32, start: u64) -> String {
    let mut f: Vec<String> = vec!["S".into(), ppid.to_string()];
    // fields 5..=21 (17 of them), threads is field 20.
    for n in 5..=22 {
        f.push(match n {
            20 => threads.to_string(),
            22 => start.to_string(),
            _ => "0".into(),
        });
    }
    format!("{pid} ({comm}) {}\n", f.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn stat_parser_never_panics(text in any::<String>()) {
        let _ = parse_stat(&text);
    }

    #[test]
    fn stat_parser_never_panics_on_near_valid(
        prefix in "[0-9 ()]{0,8}", comm in any::<String>(), rest in "[0-9a-zA-Z ()-]{0,120}"
    ) {
        let _ = parse_stat(&format!("{prefix}({comm}){rest}"));
    }

    #[test]
    fn stat_parser_reads_any_comm(
        pid in 1u32.., comm in "\\PC{0,15}", ppid in any::<u32>(),
        threads in any::<u32>(), start in any::<u64>()
    ) {
        let s = parse_stat(&stat_line(pid, &comm, ppid, threads, start)).unwrap();
        prop_assert_eq!(s.pid, pid);
        prop_assert_eq!(s.comm, comm);
        prop_assert_eq!(s.ppid, ppid);
        prop_assert_eq!(s.threads, threads);
        prop_assert_eq!(s.start_ticks, start);
    }

    #[test]
    fn status_and_argv_parsers_never_panic(text in any::<String>(), raw in any::<Vec<u8>>()) {
        let _ = parse_status_uid(&text);
        let argv = split_argv(&raw);
        // Without NULs inside, one argument per NUL-terminated piece.
        prop_assert!(argv.len() <= raw.len());
    }

    #[test]
    fn argv_roundtrip(args in proptest::collection::vec("[^\\x00]{1,20}", 0..8)) {
        let mut raw = Vec::new();
        for a in &args {
            raw.extend_from_slice(a.as_bytes());
            raw.push(0);
        }
        prop_assert_eq!(split_argv(&raw), args);
    }

    #[test]
    fn netlink_parser_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = crate::netlink::parse(&buf);
    }

    /// A whole fake /proc entry with arbitrary file contents: read() errs
    /// or returns, never panics.
    #[test]
    fn procfs_read_never_panics(
        stat in any::<Vec<u8>>(), status in any::<Vec<u8>>(), cmdline in any::<Vec<u8>>(),
        valid_stat in any::<bool>()
    ) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("42");
        std::fs::create_dir(&p).unwrap();
        let stat = if valid_stat {
            stat_line(42, &String::from_utf8_lossy(&stat), 1, 1, 7).into_bytes()
        } else {
            stat
        };
        std::fs::write(p.join("stat"), stat).unwrap();
        std::fs::write(p.join("status"), status).unwrap();
        std::fs::write(p.join("cmdline"), cmdline).unwrap();
        let fs = ProcFs::new(d.path());
        let _ = fs.read(42);
        let _ = fs.cmdline(42);
        let _ = fs.children(42, 1);
    }
}
