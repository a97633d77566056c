//! /etc/passwd and /etc/group lookups for the users actions run as.
//!
//! Read directly rather than through NSS: the daemon is a static binary,
//! where glibc's getpwnam needs the shared NSS modules of the build's glibc
//! at run time. Users that only exist in a network directory (LDAP, sssd)
//! are named by numeric uid in the config; their primary gid is then the
//! uid's passwd entry if one exists, else the uid itself.

use std::path::Path;

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";

/// The credentials an action runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Supplementary groups (from /etc/group), the primary one included.
    pub groups: Vec<u32>,
}

fn entries(passwd: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(passwd)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect()
}

fn account(f: &[String]) -> Option<Account> {
    Some(Account {
        name: f[0].clone(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f[5].clone(),
        groups: Vec::new(),
    })
}

pub fn by_name(passwd: &Path, name: &str) -> Option<Account> {
    entries(passwd)
        .iter()
        .find(|f| f[0] == name)
        .and_then(|f| account(f))
}

pub fn by_uid(passwd: &Path, uid: u32) -> Option<Account> {
    entries(passwd)
        .iter()
        .filter_map(|f| account(f))
        .find(|a| a.uid == uid)
}

/// The groups listing `name` as a member in `group`, plus `primary`.
pub fn groups_of(group: &Path, name: &str, primary: u32) -> Vec<u32> {
    let mut g = vec![primary];
    for l in std::fs::read_to_string(group).unwrap_or_default().lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        if f[3].split(',').any(|m| m == name) {
            if let Ok(gid) = f[2].parse() {
                if !g.contains(&gid) {
                    g.push(gid);
                }
            }
        }
    }
    g
}

/// Resolve a user for a run: by name, or by uid (an unknown uid runs with
/// gid = uid, no supplementary groups, HOME=/).
pub fn resolve(
    passwd: &Path,
    group: &Path,
    name: Option<&str>,
    uid: Option<u32>,
) -> Result<Account, String> {
    let found = match (name, uid) {
        (Some(n), _) => {
            by_name(passwd, n).ok_or_else(|| format!("no user {n:?} in {}", passwd.display()))?
        }
        (None, Some(u)) => match by_uid(passwd, u) {
            Some(a) => a,
            None => {
                return Ok(Account {
                    name: u.to_string(),
                    uid: u,
                    gid: u,
                    home: "/".into(),
                    groups: vec![u],
                })
            }
        },
        (None, None) => return Err("no user to run as".into()),
    };
    let groups = groups_of(group, &found.name, found.gid);
    Ok(Account { groups, ..found })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("passwd");
        let g = d.path().join("group");
        std::fs::write(
            &p,
            "root:x:0:0:root:/root:/bin/sh\n# c\nbob:x:1000:1001::/home/bob:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(&g, "bob:x:1001:\nwheel:x:10:alice,bob\nother:x:20:alice\n").unwrap();
        let a = resolve(&p, &g, Some("bob"), None).unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 1001, "/home/bob"));
        assert_eq!(a.groups, vec![1001, 10]);
        let a = resolve(&p, &g, None, Some(1000)).unwrap();
        assert_eq!(a.name, "bob");
        let a = resolve(&p, &g, None, Some(4242)).unwrap();
        assert_eq!((a.uid, a.gid, a.groups.clone()), (4242, 4242, vec![4242]));
        assert!(resolve(&p, &g, Some("carol"), None).is_err());
    }
}
