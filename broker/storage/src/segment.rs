//! One segment file of the log: preallocated, mapped into memory, written append-only.
//!
//! Records are copied into the mapping, so an append is a memory copy with no system call;
//! the kernel writes the pages back, and the syncer's fsync makes them durable. Bodies are
//! handed out as [`Bytes`] views of the mapping, so a queued message's body lives in the page
//! cache (which the kernel may evict and read back) rather than on the broker's heap.
#![allow(unsafe_code)] // the mapping: see the SAFETY notes

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::MmapRaw;

/// A segment file and its mapping.
#[derive(Debug)]
pub struct Segment {
    /// Its number; segments are replayed in this order.
    pub id: u64,
    /// Its path.
    pub path: PathBuf,
    /// The open file, shared with the syncer.
    pub file: Arc<File>,
    map: Arc<MmapRaw>,
    capacity: usize,
    end: usize,
}

/// A view of part of a mapping that keeps the mapping alive.
struct View {
    map: Arc<MmapRaw>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `offset..offset+len` lies within the mapping (checked by `Segment::read`)
        // and was fully written before the view was made; segments are append-only, so those
        // octets are never written again while mapped. The mapping lives as long as `map`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.offset), self.len) }
    }
}

/// The file name of segment `id`.
pub fn file_name(id: u64) -> String {
    format!("{id:016}.seg")
}

/// The id of a segment file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// What a segment made ahead is called until it is used: recovery does not take it for
/// part of the log (it would make the segment being written look older than it is).
pub const SPARE_SUFFIX: &str = ".spare";

impl Segment {
    /// Creates segment `id` in `dir`, reserving `capacity` octets.
    pub fn create(dir: &Path, id: u64, capacity: usize) -> io::Result<Segment> {
        Segment::create_at(dir.join(file_name(id)), id, capacity)
    }

    /// Creates segment `id` ahead of its use, under its spare name.
    pub fn create_spare(dir: &Path, id: u64, capacity: usize) -> io::Result<Segment> {
        Segment::create_at(dir.join(format!("{}{SPARE_SUFFIX}", file_name(id))), id, capacity)
    }

    /// Gives a spare its segment name: from now on it is part of the log. The mapping and
    /// the open file are unchanged; the rename is made durable by the next sync of the
    /// directory, which comes before any record in it is confirmed.
    pub fn make_live(&mut self) -> io::Result<()> {
        let live = self.path.with_file_name(file_name(self.id));
        std::fs::rename(&self.path, &live)?;
        self.path = live;
        Ok(())
    }

    fn create_at(path: PathBuf, id: u64, capacity: usize) -> io::Result<Segment> {
        let file = File::options().read(true).write(true).create_new(true).open(&path)?;
        if let Err(e) = crate::disk::allocate(&file, capacity as u64) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Segment::map(id, path, file, 0)
    }

    /// Opens an existing segment; appends (after recovery) go after `end`.
    pub fn open(path: &Path, id: u64) -> io::Result<Segment> {
        let file = File::options().read(true).write(true).open(path)?;
        Segment::map(id, path.to_path_buf(), file, 0)
    }

    fn map(id: u64, path: PathBuf, file: File, end: usize) -> io::Result<Segment> {
        let capacity = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
        let map = Arc::new(MmapRaw::map_raw(&file)?);
        Ok(Segment { id, path, file: Arc::new(file), map, capacity, end })
    }

    /// Octets still free.
    pub fn remaining(&self) -> usize {
        self.capacity - self.end
    }

    /// Its size on disk.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Where the next append goes.
    pub fn end(&self) -> usize {
        self.end
    }

    /// Sets where appends continue (after recovery found the written part's end).
    pub fn set_end(&mut self, end: usize) {
        self.end = end.min(self.capacity);
    }

    /// Appends `bytes`; returns the offset they start at, or `None` when they do not fit.
    pub fn append(&mut self, bytes: &[u8]) -> Option<usize> {
        if bytes.len() > self.remaining() {
            return None;
        }
        let at = self.end;
        // SAFETY: `at..at+len` is inside the mapping (checked above) and past every octet
        // handed out as a view, so nothing else reads or writes it now.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(at), bytes.len()) };
        self.end += bytes.len();
        Some(at)
    }

    /// Reads the whole file with `pread`, so that a part the disk cannot return is an error
    /// here rather than SIGBUS when the mapping touches it; on failure, the offset of the first
    /// chunk that could not be read, and why. What was read is in the page cache afterwards,
    /// so a scan through the mapping that follows costs no second trip to the disk.
    pub fn verify_readable(&self) -> Result<(), (usize, io::Error)> {
        use std::os::unix::fs::FileExt;
        const CHUNK: usize = 1 << 20;
        let mut buf = vec![0u8; CHUNK.min(self.capacity)];
        let mut at = 0;
        while at < self.capacity {
            let want = CHUNK.min(self.capacity - at);
            let Some(chunk) = buf.get_mut(..want) else {
                return Err((at, io::Error::other("chunk outside its buffer")));
            };
            match self.file.read_exact_at(chunk, at as u64) {
                Ok(()) => at += want,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((at, e)),
            }
        }
        Ok(())
    }

    /// Makes everything from `len` on unreadable through [`Segment::read`] (a part that could
    /// not be read from disk, skipped by a salvaging start).
    pub fn limit(&mut self, len: usize) {
        self.capacity = self.capacity.min(len);
        self.end = self.end.min(self.capacity);
    }

    /// A view of `len` octets at `offset`, or `None` past the end of the file.
    pub fn read(&self, offset: usize, len: usize) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        (end <= self.capacity).then(|| Bytes::from_owner(View { map: self.map.clone(), offset, len }))
    }
}
