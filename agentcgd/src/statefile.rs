//! The state file's directory and file, written the way a root daemon must
//! write in a directory others might reach: the directory created 0755 and
//! refused if someone else can write it, the temporary file opened with
//! O_CREAT|O_EXCL|O_NOFOLLOW (a planted symlink or file is never followed
//! or reused), mode 0644 whatever the umask, then renamed over the file.
//! A state file to be trusted on restart must be the daemon's own: owned by
//! root and writable by no one else.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

fn euid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() }
}

/// Create `dir` (0755) if missing and check it: a real directory (not a
/// symlink), ours, writable by no one else.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("state directory {}: {why}: refused", dir.display()),
        ))
    };
    if !md.is_dir() {
        return refuse("not a directory (a symlink?)".into());
    }
    if md.uid() != euid() {
        return refuse(format!("owned by uid {}, not by this daemon", md.uid()));
    }
    if md.permissions().mode() & 0o022 != 0 {
        return refuse(format!(
            "writable by others (mode {:04o})",
            md.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

/// Numbers the temporary files of this process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` atomically (see the module comment).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let c = CString::new(tmp.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let open = || {
        // SAFETY: a valid C string; the fd is checked below.
        unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644,
            )
        }
    };
    let mut fd = open();
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        // Left over (or planted): unlink never follows a symlink.
        std::fs::remove_file(&tmp)?;
        fd = open();
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let res = (|| {
        // 0644 whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.flush()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Read the state file for adoption on restart: only if it is a regular
/// file owned by root (this daemon's user) and writable by no one else.
pub fn read_trusted(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; the fd is checked below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "{}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor we own.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let md = f.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if md.uid() != euid() {
        return Err(format!(
            "{} is owned by uid {}, not by this daemon",
            path.display(),
            md.uid()
        ));
    }
    if md.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by others (mode {:04o})",
            path.display(),
            md.permissions().mode() & 0o7777
        ));
    }
    if let Some(dir) = path.parent() {
        let dmd = std::fs::metadata(dir).map_err(|e| e.to_string())?;
        if dmd.uid() != euid() || dmd.permissions().mode() & 0o022 != 0 {
            return Err(format!(
                "its directory {} is not this daemon's alone",
                dir.display()
            ));
        }
    }
    let mut text = String::new();
    f.take(64 << 20)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_0644_under_any_umask_never_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run");
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0) };
        let r = write_atomic(&dir.join("state.json"), b"{}\n");
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        r.unwrap();
        let md = std::fs::metadata(&dir).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755);
        let md = std::fs::metadata(dir.join("state.json")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o644);
        assert!(read_trusted(&dir.join("state.json")).is_ok());

        // A victim file and a planted symlink where the temporary file
        // will be: the victim is untouched.
        let victim = d.path().join("victim");
        std::fs::write(&victim, "secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let first = SEQ.load(Ordering::Relaxed);
        for seq in first..first + 8 {
            let tmp = dir.join(format!(".state.json.tmp.{}.{seq}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        }
        write_atomic(&dir.join("state.json"), b"{\"x\":1}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
        assert_eq!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("state.json")).unwrap(),
            "{\"x\":1}\n"
        );

        // A state file writable by others is not trusted; a symlink neither.
        std::fs::set_permissions(
            dir.join("state.json"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let e = read_trusted(&dir.join("state.json")).unwrap_err();
        assert!(e.contains("writable by others"), "{e}");
        std::os::unix::fs::symlink(dir.join("state.json"), dir.join("link.json")).unwrap();
        assert!(read_trusted(&dir.join("link.json")).is_err());

        // A state directory others can write is refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write_atomic(&dir.join("state.json"), b"{}").unwrap_err();
        assert!(e.to_string().contains("writable by others"), "{e}");
    }
}
