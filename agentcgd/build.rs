//! Records the build's git revision for `agentcgd --version` and `status`.
//! AGENTCGD_GIT_REV overrides it (builds from a tarball, packaging).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=AGENTCGD_GIT_REV");
    let rev = std::env::var("AGENTCGD_GIT_REV")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=AGENTCGD_GIT_REV={rev}");
    // Rebuild when HEAD moves (a commit, a checkout) in this worktree.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    for p in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", p]) {
            let path = Path::new(&dir).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
