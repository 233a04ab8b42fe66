//! Small files written whole: a new file, synced, renamed over the old one, and the
//! directory synced, so a crash leaves the old contents or the new.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` durably: on `Ok` they are on disk; on an error the old file is
/// as it was, or (past the rename) the new one is in place but maybe not durably, as said.
pub fn replace(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("new");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if sync {
        sync_dir(path)?;
    }
    Ok(())
}

/// Syncs the directory `path` is in, so a rename or a new file in it lasts.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(parent)?.sync_all().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{e}: {} was replaced but its directory not synced", path.display()),
        )
    })
}

/// The contents of `path`, `None` when there is no such file; over `max` octets is an error.
pub fn read(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len > max {
        return Err(std::io::Error::other(format!(
            "{}: {len} octets, over the {max} it may have",
            path.display()
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, max), &mut out)?;
    Ok(Some(out))
}
