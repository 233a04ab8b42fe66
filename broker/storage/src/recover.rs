//! Reading the log back at start-up: a segment's records in order, checked one by one;
//! damage told apart from a torn tail; the metadata log read and rewritten as a snapshot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use warren_core::storage::{MetaOp, Recovered, StorageError, apply_meta};

use crate::record::{self, HEADER, Meta, Record};
use crate::segment::Segment;
use crate::store::{META_LOG, RecoveryReport, at};
use crate::sync::sync_dir;

/// Reads a segment's records in order, handing each good one to `f`; returns where the
/// written part ends.
///
/// A bad record with nothing intact after it is a torn write (the crash cut it short; it was
/// never confirmed): the scan ends there. The file is not touched: segments are only ever
/// appended to by the run that created them, so the bytes stay for whoever wants to look.
/// A bad record with intact records after it is damage, not a crash: it stops the start with
/// the file and offset, unless `salvage` says to skip it (and log it).
/// How [`scan`] treats a bad record.
#[derive(Clone, Copy)]
pub(crate) struct Scan {
    /// Look for intact records after a bad one, and call it damage if there are. Off for the
    /// newest segment, where a crash leaves torn writes (and possibly later sectors that did
    /// reach the disk, or bytes inside a torn body that look like records): there a bad record
    /// ends the log.
    pub(crate) strict: bool,
    /// Skip damage instead of stopping.
    pub(crate) salvage: bool,
}

pub(crate) fn scan(
    seg: &mut Segment,
    report: &mut RecoveryReport,
    how: Scan,
    mut f: impl FnMut(usize, Record),
) -> Result<usize, StorageError> {
    let salvage = how.salvage;
    let name = seg.path.display().to_string();
    let mut pos = 0;
    loop {
        let Some((len, crc)) = seg.read(pos, HEADER).and_then(|h| record::header(&h)) else {
            return Ok(pos);
        };
        if len == 0 {
            return Ok(pos);
        }
        // Past the end of an older segment (files are preallocated, so no crash leaves one
        // short): the file was cut, and what it held is gone.
        if how.strict && pos.saturating_add(HEADER).saturating_add(len) > seg.capacity() {
            let what = format!(
                "{name} at offset {pos}: a record runs past the end of the file ({} octets): truncated",
                seg.capacity()
            );
            damaged(report, salvage, what)?;
            return Ok(pos);
        }
        let payload = seg.read(pos + HEADER, len).filter(|p| crc32c::crc32c(p) == crc);
        let next = pos + HEADER + len;
        match payload {
            Some(p) => {
                report.records += 1;
                match record::decode(p) {
                    Ok(r) => f(pos, r),
                    Err(e) => damaged(report, salvage, format!("{name} at offset {pos}: {e}"))?,
                }
                pos = next;
            }
            None => match resync(seg, pos, next).filter(|_| how.strict || how.salvage) {
                Some(good) => {
                    let what = format!("{name} at offset {pos}: checksum mismatch ({} octets)", good - pos);
                    damaged(report, salvage, what)?;
                    pos = good;
                }
                None => {
                    report.truncated.push(format!("{name} at offset {pos}"));
                    return Ok(pos);
                }
            },
        }
    }
}

/// Damage in the middle of a log: skipped and reported when salvaging, else the start stops.
pub(crate) fn damaged(report: &mut RecoveryReport, salvage: bool, what: String) -> Result<(), StorageError> {
    if !salvage {
        return Err(StorageError::Corrupt(format!(
            "{what}, with intact records after it; nothing was changed on disk. Restore the \
             file, or start with --salvage-storage to skip the damaged records"
        )));
    }
    report.damaged.push(what);
    Ok(())
}

/// The next intact record after a damaged one at `pos`: where its length says (`next`), or,
/// when the length itself is damaged, the first intact record further on. `None` means
/// nothing intact follows: a torn tail.
fn resync(seg: &Segment, pos: usize, next: usize) -> Option<usize> {
    if good_record_at(seg, next) {
        return Some(next);
    }
    (pos + 1..seg.capacity().saturating_sub(HEADER)).find(|&p| good_record_at(seg, p))
}

fn good_record_at(seg: &Segment, pos: usize) -> bool {
    let Some((len, crc)) = seg.read(pos, HEADER).and_then(|h| record::header(&h)) else {
        return false;
    };
    len > 0 && seg.read(pos + HEADER, len).is_some_and(|p| crc32c::crc32c(&p) == crc)
}

/// Reads the metadata log, then rewrites it as a snapshot (so it does not grow without end)
/// and opens it for appends.
pub(crate) fn recover_metadata(
    dir: &Path,
    report: &mut RecoveryReport,
    salvage: bool,
) -> Result<(Recovered, Arc<File>), StorageError> {
    let path = dir.join(META_LOG);
    let (mut queues, mut exchanges, mut bindings) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    let mut next_queue_id = 1;
    let mut cut = false;
    match std::fs::read(&path) {
        Ok(data) => {
            let data = bytes::Bytes::from(data);
            let name = path.display();
            let intact_at = |p: usize| {
                data.get(p..).and_then(record::header).is_some_and(|(len, crc)| {
                    len > 0
                        && data.get(p + HEADER..p + HEADER + len).is_some_and(|x| crc32c::crc32c(x) == crc)
                })
            };
            let mut pos = 0;
            while pos < data.len() {
                let whole = data.get(pos..).and_then(record::header).and_then(|(len, crc)| {
                    let payload = data.get(pos + HEADER..pos + HEADER + len).filter(|_| len > 0)?;
                    (crc32c::crc32c(payload) == crc).then_some(len)
                });
                let Some(len) = whole else {
                    // Intact records further on mean damage; none means a torn last write.
                    match (pos + 1..data.len()).find(|p| intact_at(*p)) {
                        Some(good) => {
                            damaged(report, salvage, format!("{name} at offset {pos}: checksum mismatch"))?;
                            cut = true;
                            pos = good;
                            continue;
                        }
                        None => {
                            report.truncated.push(format!("{name} at offset {pos}"));
                            cut = true;
                            break;
                        }
                    }
                };
                match record::decode_meta(data.slice(pos + HEADER..pos + HEADER + len)) {
                    Ok(Meta::Op(op)) => {
                        apply_meta(&mut queues, &mut exchanges, &mut bindings, &op, &mut next_queue_id)
                    }
                    Ok(Meta::NextQueueId(n)) => next_queue_id = next_queue_id.max(n),
                    Err(e) => {
                        damaged(report, salvage, format!("{name} at offset {pos}: {e}"))?;
                        cut = true;
                    }
                }
                pos += HEADER + len;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(&path, e)),
    }
    if cut {
        // The snapshot below leaves out what could not be read; the original bytes are kept,
        // durably, under a name no later recovery reuses.
        let kept = (0..).map(|n| dir.join(format!("{META_LOG}.before-recovery.{n}"))).find(|p| !p.exists());
        let kept = kept.ok_or_else(|| StorageError::Io("no name left for the metadata log's copy".into()))?;
        std::fs::copy(&path, &kept).and_then(|_| File::open(&kept)?.sync_all()).map_err(|e| at(&kept, e))?;
    }
    let recovered = Recovered {
        queues: queues.into_values().collect(),
        exchanges: exchanges.into_values().collect(),
        bindings,
        next_queue_id,
        ..Default::default()
    };
    let mut snapshot = BytesMut::new();
    let mut add = |m: Meta| record::frame(&mut snapshot, |w| record::meta(w, &m));
    add(Meta::NextQueueId(recovered.next_queue_id));
    for x in &recovered.exchanges {
        add(Meta::Op(MetaOp::PutExchange(x.clone())));
    }
    for q in &recovered.queues {
        add(Meta::Op(MetaOp::PutQueue(q.clone())));
    }
    for b in &recovered.bindings {
        add(Meta::Op(MetaOp::Bind(b.clone())));
    }
    let tmp = dir.join("metadata.log.tmp");
    let write = || -> io::Result<File> {
        let mut f = File::create(&tmp)?;
        f.write_all(&snapshot)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        File::options().append(true).open(&path)
    };
    let file = write().map_err(|e| at(&path, e))?;
    Ok((recovered, Arc::new(file)))
}

/// The file beside segment `path` that records where its torn tail was cut.
fn cut_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(CUT_SUFFIX);
    name.into()
}

/// What the cut record beside a segment is called (`N.seg.cut`).
pub(crate) const CUT_SUFFIX: &str = ".cut";

/// Where an earlier start cut segment `path`'s torn tail, if one did.
pub(crate) fn read_cut(path: &Path) -> Result<Option<usize>, StorageError> {
    let cut = cut_path(path);
    // An offset is at most 20 digits: read no more than that, whatever the file holds.
    let read = || -> io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        File::open(&cut)?.take(32).read_to_string(&mut text)?;
        Ok(text)
    };
    match read() {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            StorageError::Corrupt(format!(
                "{}: not an offset ({text:?}); remove it to read the whole segment",
                cut.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(&cut, e)),
    }
}

/// Records, durably, that segment `path` ends at `end` (its torn tail cut there): written
/// aside and renamed over, so a crash leaves the old record or the new one, never half.
pub(crate) fn write_cut(path: &Path, end: usize) -> Result<(), StorageError> {
    let cut = cut_path(path);
    let mut tmp = cut.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(end.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &cut)?;
        match cut.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    };
    write().map_err(|e| at(&cut, e))
}
