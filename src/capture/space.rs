//! Free-space probe for the filesystem that holds the takes.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes available to an unprivileged writer on the filesystem holding `path`
/// (`statvfs`: `f_bavail × f_frsize`). **Not** real-time safe: it is a syscall.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `statvfs` is plain old data; all-zero bytes are a valid value of it.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` a valid, exclusively
    // borrowed `statvfs` for the duration of the call; the call keeps neither pointer.
    let result = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between libc targets
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_matches_df_and_fails_on_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_space(dir.path()).unwrap();
        // `df` reports the same statvfs fields in 1 KiB blocks; allow for concurrent writers.
        let out = std::process::Command::new("df")
            .args(["-k", "--output=avail"])
            .arg(dir.path())
            .output()
            .expect("df must be installed");
        let text = String::from_utf8(out.stdout).unwrap();
        let df_kib: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
        let diff = (free / 1024).abs_diff(df_kib);
        assert!(diff < 64 * 1024, "statvfs {free} B vs df {df_kib} KiB");
        assert!(free > 0);
        assert!(free_space(&dir.path().join("missing")).is_err());
    }
}
