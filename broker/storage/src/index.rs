//! Queue index files: a checkpoint of each durable queue, written at a clean stop, that the
//! next start loads instead of replaying the log.
//!
//! ```text
//! DATA_DIR/storage/queues/
//!   <queue id>.idx   header (queue, log position), then one record per entry in queue order:
//!                    seq, delivery count, deadlines, where its put is in the log, and the
//!                    message itself when its body is under 4 KiB (larger ones are read from the log)
//!   segments.idx     header, then each log segment and the older segments it refers to
//! ```
//!
//! The log stays the truth: an index is used only after a clean stop, only when every
//! declared queue has one, and only when all were written at the log's current end. Anything
//! else (a crash, a missing or damaged file, an index behind the log) means the start replays
//! the log, which rebuilds the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use warren_core::storage::{QueueId, StoreRef, StoredEntry};

use crate::record::{self, HEADER, IndexRecord, Record};
use crate::segment::Segment;
use crate::sync::sync_dir;

/// Bodies shorter than this are kept in the index itself.
pub const INLINE_MAX: usize = 4096;

/// The queue id the segment list's header carries.
const SEGMENT_LIST: QueueId = u64::MAX;

/// Where the log ended when an index was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEnd {
    /// Newest segment.
    pub segment: u64,
    /// Offset of the first unwritten octet in it.
    pub end: u64,
}

fn queue_file(dir: &Path, queue: QueueId) -> PathBuf {
    dir.join(format!("{queue:016}.idx"))
}

fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes an index for each queue in `queues` with its `entries` (sorted by queue, then seq),
/// and the segment list; removes index files of queues that are gone.
pub fn write(
    dir: &Path,
    at: LogEnd,
    queues: &[QueueId],
    entries: &[StoredEntry],
    segments: &BTreeMap<u64, BTreeSet<u64>>,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut buf = BytesMut::new();
    for &queue in queues {
        let from = entries.partition_point(|e| e.queue < queue);
        let to = entries.partition_point(|e| e.queue <= queue);
        let list = &entries[from..to];
        buf.clear();
        record::frame(&mut buf, |w| record::index_header(w, queue, at.segment, at.end, list.len() as u64));
        for e in list {
            let inline = (e.message.body.len() < INLINE_MAX).then_some(&*e.message);
            record::frame(&mut buf, |w| record::index_entry(w, e.seq, &e.state, e.at.0, inline));
        }
        write_atomically(&queue_file(dir, queue), &buf)?;
    }
    buf.clear();
    record::frame(&mut buf, |w| {
        record::index_header(w, SEGMENT_LIST, at.segment, at.end, segments.len() as u64)
    });
    for (id, targets) in segments {
        let targets: Vec<u64> = targets.iter().copied().collect();
        record::frame(&mut buf, |w| record::index_segment(w, *id, &targets));
    }
    write_atomically(&dir.join("segments.idx"), &buf)?;
    let keep: BTreeSet<PathBuf> = queues.iter().map(|q| queue_file(dir, *q)).collect();
    for e in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let path = e.path();
        let stale = path.extension().is_some_and(|x| x == "idx" || x == "tmp")
            && path.file_name().is_some_and(|n| n != "segments.idx")
            && !keep.contains(&path);
        if stale {
            std::fs::remove_file(&path)?;
        }
    }
    sync_dir(dir)
}

/// The framed records of `data`, refusing any damage: an index is all good or not used.
fn records(data: &Bytes, name: &str) -> Result<Vec<IndexRecord>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let (len, crc) =
            data.get(pos..).and_then(record::header).ok_or_else(|| format!("{name}: truncated"))?;
        let intact = data.get(pos + HEADER..pos + HEADER + len).is_some_and(|p| crc32c::crc32c(p) == crc);
        if !intact {
            return Err(format!("{name}: damaged record at {pos}"));
        }
        let rec = record::decode_index(data.slice(pos + HEADER..pos + HEADER + len))
            .map_err(|e| format!("{name}: {e} at {pos}"))?;
        out.push(rec);
        pos += HEADER + len;
    }
    Ok(out)
}

/// Reads a whole file as shared bytes: mapped, so inline bodies are views of the page cache.
fn map(path: &Path) -> Result<Bytes, String> {
    let name = path.display();
    let seg = Segment::open(path, 0).map_err(|e| format!("{name}: {e}"))?;
    seg.read(0, seg.capacity()).ok_or_else(|| format!("{name}: unreadable"))
}

/// The segment list: where the log ended, and each segment's targets.
pub fn read_segments(dir: &Path) -> Result<(LogEnd, BTreeMap<u64, BTreeSet<u64>>), String> {
    let path = dir.join("segments.idx");
    let data = std::fs::read(&path).map(Bytes::from).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut recs = records(&data, "segments.idx")?.into_iter();
    let Some(IndexRecord::Header { queue: SEGMENT_LIST, segment, end, .. }) = recs.next() else {
        return Err("segments.idx: no header".into());
    };
    let mut targets = BTreeMap::new();
    for r in recs {
        if let IndexRecord::Segment { id, targets: t } = r {
            targets.insert(id, t.into_iter().collect());
        }
    }
    Ok((LogEnd { segment, end }, targets))
}

/// Loads the index of `queue`, which must have been written at `at`. Large messages are read
/// from their put records in `segments`.
pub fn read_queue(
    dir: &Path,
    queue: QueueId,
    at: LogEnd,
    segments: &BTreeMap<u64, &Segment>,
) -> Result<Vec<StoredEntry>, String> {
    let path = queue_file(dir, queue);
    if !path.exists() {
        return Err(format!("no index for queue {queue}"));
    }
    let data = map(&path)?;
    let name = path.display().to_string();
    let mut recs = records(&data, &name)?.into_iter();
    let count = match recs.next() {
        Some(IndexRecord::Header { queue: q, segment, end, entries })
            if q == queue && LogEnd { segment, end } == at =>
        {
            entries
        }
        Some(IndexRecord::Header { .. }) => {
            return Err(format!("{name}: written at another point of the log"));
        }
        _ => return Err(format!("{name}: no header")),
    };
    let mut out = Vec::new();
    for r in recs {
        let IndexRecord::Entry { seq, state, at: place, inline } = r else {
            return Err(format!("{name}: unexpected record"));
        };
        let message = match inline {
            Some(m) => Arc::from(m),
            None => Arc::from(
                from_log(segments, place, queue, seq).map_err(|e| format!("{name}: seq {seq}: {e}"))?,
            ),
        };
        out.push(StoredEntry { queue, seq, state, at: StoreRef(place), message });
    }
    if out.len() as u64 != count {
        return Err(format!("{name}: {} entries, header says {count}", out.len()));
    }
    Ok(out)
}

/// Reads the put record at `place` and checks it is entry `seq` of `queue`.
fn from_log(
    segments: &BTreeMap<u64, &Segment>,
    place: u64,
    queue: QueueId,
    seq: u64,
) -> Result<Box<warren_core::message::Message>, String> {
    let (id, offset) = (place >> 32, (place & u64::from(u32::MAX)) as usize);
    let seg = segments.get(&id).ok_or_else(|| format!("log segment {id} is missing"))?;
    let (len, crc) = seg.read(offset, HEADER).and_then(|h| record::header(&h)).ok_or("no record")?;
    let payload =
        seg.read(offset + HEADER, len).filter(|p| crc32c::crc32c(p) == crc).ok_or("damaged record")?;
    match record::decode(payload) {
        Ok(Record::Put { queue: q, seq: s, message, .. }) if q == queue && s == seq => Ok(message),
        Ok(_) => Err("the log has another record there".into()),
        Err(e) => Err(e.to_string()),
    }
}
