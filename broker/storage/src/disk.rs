//! What the OS says about disks and directories: reserving a segment's blocks up front, free
//! space, and a directory for one process alone.
#![allow(unsafe_code)] // libc calls, each on a descriptor or path we own

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Reserves `len` octets of real blocks for `file`. A mapped file whose blocks were never
/// reserved faults (SIGBUS) on a full disk when a page is first written; with the blocks
/// reserved, a full disk is an error here, where it can be handled.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("segment size too large"))?;
    // SAFETY: the descriptor is open for the duration of the call; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Octets available to an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain data, so all-zero is a valid value; the call fills it and reads
    // only the NUL-terminated path, which outlives the call.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // u64 here, narrower on other targets
    let (avail, frsize) = (u64::from(s.f_bavail), u64::from(s.f_frsize));
    Ok(avail.saturating_mul(frsize))
}

/// Takes `dir` for this process alone: an exclusive `flock` on `DIR/lock`, which the kernel
/// releases when the process ends, however it ends; held while the returned file is open. A
/// second broker on the same data directory would append to the same segments, delete files
/// the first has mapped (SIGBUS) and rewrite its metadata log; it is refused at start instead.
pub fn lock_dir(dir: &Path) -> io::Result<File> {
    use std::io::Write;
    let path = dir.join("lock");
    let mut file = File::options().read(true).write(true).create(true).truncate(false).open(&path)?;
    // SAFETY: the descriptor is open for the duration of the call; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        }
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        let holder = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{} is in use by another process{holder}: two brokers cannot share a data directory",
                dir.display()
            ),
        ));
    }
    // Whose it is, for the message above; the lock itself is what counts.
    let pid = std::process::id().to_string();
    let _ = file.set_len(0).and_then(|()| file.write_all(pid.as_bytes()));
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_reserves_the_length_and_free_space_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("f"))
            .expect("file");
        allocate(&f, 1 << 20).expect("allocate");
        assert_eq!(f.metadata().expect("metadata").len(), 1 << 20);
        assert!(free_space(dir.path()).expect("statvfs") > 0);
    }

    #[test]
    fn a_locked_directory_is_refused_until_its_holder_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock_dir(dir.path()).expect("first");
        let e = lock_dir(dir.path()).expect_err("second");
        assert!(
            e.to_string().contains(&format!("in use by another process (pid {})", std::process::id())),
            "{e}"
        );
        drop(held);
        lock_dir(dir.path()).expect("free again");
    }
}
