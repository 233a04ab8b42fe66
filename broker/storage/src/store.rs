//! [`FileStore`]: the broker's [`Storage`] on disk.
//!
//! ```text
//! DATA_DIR/storage/
//!   metadata.log            durable exchanges, queues, bindings: a log, rewritten as a snapshot at start
//!   segments/0000…0001.seg  the message log: fixed-size, preallocated, append-only
//!   clean-shutdown          present only between a clean stop and the next start
//! ```
//!
//! Every queue entry change is one record appended to the active segment: a put (the whole
//! message), a remove, or a delivery-count update. Recovery replays the segments in order. A
//! segment is deleted once none of its puts is still queued and every segment its removes
//! refer to is gone (otherwise replay would resurrect what those removes cancelled); the
//! store keeps, per queue and segment, how many of its entries are live, and per segment
//! which older segments its records refer to, and nothing per message.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use warren_core::message::Message;
use warren_core::storage::{
    EntryState, MetaOp, QueueId, Recovered, Storage, StorageError, StoreRef, StoredEntry, tidy_entries,
};

use crate::index;
use crate::record::{self, HEADER, Meta, Record};
use crate::recover::{Scan, damaged, recover_metadata, scan};
use crate::segment::{self, Segment};
use crate::sync::{SyncShared, Syncer, sync_dir};

/// How a store is laid out.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Size of a segment file; a record larger than this gets a segment of its own size.
    pub segment_size: usize,
    /// Start even when a log is damaged in the middle, skipping the damaged records (each
    /// logged). Without it such damage stops the start, naming the file and offset.
    pub salvage: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { segment_size: 16 << 20, salvage: false }
    }
}

/// What start-up found, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Entries still queued.
    pub entries: usize,
    /// Records skipped because their checksum did not match, with where they were.
    pub damaged: Vec<String>,
    /// Torn tails cut off (a write the crash interrupted), with where.
    pub truncated: Vec<String>,
    /// Segments deleted because nothing in them was live.
    pub deleted: usize,
    /// Whether the previous run stopped cleanly.
    pub clean: bool,
    /// Whether the queues were loaded from their index files (after a clean stop) rather
    /// than by replaying the log.
    pub from_index: bool,
    /// Why the index files were not used, when they were not.
    pub index_unused: Option<String>,
    /// Milliseconds the recovery took.
    pub millis: u64,
}

#[derive(Debug)]
struct SegmentState {
    segment: Segment,
    /// Live entries whose put is in this segment.
    live: u64,
    /// Puts written to it, and the octets it holds: together with `live`, an estimate of its
    /// live octets that costs no read of a record when an entry is removed.
    puts: u64,
    put_bytes: u64,
    /// Older segments whose entries this segment's records remove, update or supersede.
    targets: BTreeSet<u64>,
}

impl SegmentState {
    fn new(segment: Segment, targets: BTreeSet<u64>) -> Self {
        SegmentState { segment, live: 0, puts: 0, put_bytes: 0, targets }
    }

    /// Estimated octets of its live entries.
    fn live_bytes(&self) -> u64 {
        if self.puts == 0 {
            return 0;
        }
        let estimate = u128::from(self.live) * u128::from(self.put_bytes) / u128::from(self.puts);
        u64::try_from(estimate).unwrap_or(u64::MAX)
    }
}

/// Compaction starts once the segments on disk hold more than twice the live octets plus
/// this many segments: the price of a log is at most that much disk, and the live entries
/// are written again at most once per that much traffic.
const COMPACT_SLACK_SEGMENTS: u64 = 4;

/// Rounds a stuck segment (see `FileStore::stuck`) waits before it is planned again.
const STUCK_ROUNDS: u64 = 60;

/// What a put record costs beyond its body, roughly: for estimates only.
const RECORD_OVERHEAD: u64 = 128;

/// The file store. Writes happen under the broker's lock and cost a memory copy; the
/// [`Syncer`] returned with it makes them durable.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    segments_dir: PathBuf,
    options: Options,
    segments: BTreeMap<u64, SegmentState>,
    active: u64,
    meta: Arc<File>,
    meta_path: PathBuf,
    /// The metadata log's length after its last whole record: a write that fails part-way is
    /// cut back to it, so the next record does not land after a torn one.
    meta_len: u64,
    /// Live entries per queue and segment.
    live: HashMap<QueueId, HashMap<u64, u64>>,
    shared: Arc<SyncShared>,
    scratch: BytesMut,
    written: u64,
    recovered: Option<Recovered>,
    report: RecoveryReport,
    /// Segments whose live entries the broker is moving (see [`Storage::plan_compaction`]),
    /// with their live count when planned.
    compacting: BTreeMap<u64, u64>,
    /// Segments a round left as live as it found them (an entry the broker does not hold,
    /// such as one of a queue that could not be restored), and the round until which they
    /// are not planned again: moving what is behind them would free nothing.
    stuck: BTreeMap<u64, u64>,
    /// Compaction rounds planned so far.
    rounds: u64,
    /// Held open, and locked, for as long as the store is: see [`crate::disk::lock_dir`].
    _lock: File,
}

/// Where an entry's put record is: its segment in the high half, its offset in the low.
fn store_ref(segment: u64, offset: usize) -> Result<StoreRef, StorageError> {
    let offset = u32::try_from(offset).map_err(|_| StorageError::Io("record offset beyond 4 GiB".into()))?;
    Ok(StoreRef(segment << 32 | u64::from(offset)))
}

/// The segment of a [`StoreRef`].
fn segment_of(at: StoreRef) -> u64 {
    at.0 >> 32
}

/// The id the syncer knows the metadata log by; segment `n` is `n + 1`.
const META_FILE: u64 = 0;
pub(crate) const META_LOG: &str = "metadata.log";
const CLEAN: &str = "clean-shutdown";

fn io_err(e: io::Error) -> StorageError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        StorageError::Full(e.to_string())
    } else {
        StorageError::Io(e.to_string())
    }
}

pub(crate) fn at(what: &Path, e: io::Error) -> StorageError {
    io_err(io::Error::new(e.kind(), format!("{}: {e}", what.display())))
}

impl FileStore {
    /// Opens (or creates) the store in `dir`, recovering what is there. The entries found are
    /// handed to the broker by [`Storage::recover`].
    pub fn open(dir: &Path, options: Options) -> Result<(FileStore, Syncer), StorageError> {
        let started = Instant::now();
        let segments_dir = dir.join("segments");
        std::fs::create_dir_all(&segments_dir).map_err(|e| at(&segments_dir, e))?;
        let lock = crate::disk::lock_dir(dir).map_err(io_err)?;
        remove_spares(&segments_dir)?;
        let clean_path = dir.join(CLEAN);
        let clean = clean_path.exists();
        if clean {
            // From here on a crash is not a clean stop.
            std::fs::remove_file(&clean_path).map_err(|e| at(&clean_path, e))?;
            sync_dir(dir).map_err(|e| at(dir, e))?;
        }
        let mut report = RecoveryReport { clean, ..Default::default() };
        let (mut recovered, meta) = recover_metadata(dir, &mut report, options.salvage)?;
        let meta_len = meta.metadata().map_err(|e| at(&dir.join(META_LOG), e))?.len();
        recovered.clean = clean;
        let shared = Arc::new(SyncShared::default());
        let mut store = FileStore {
            dir: dir.to_path_buf(),
            segments_dir: segments_dir.clone(),
            options,
            segments: BTreeMap::new(),
            active: 0,
            meta,
            meta_path: dir.join(META_LOG),
            meta_len,
            live: HashMap::new(),
            shared: shared.clone(),
            scratch: BytesMut::new(),
            written: 0,
            recovered: None,
            report,
            compacting: BTreeMap::new(),
            stuck: BTreeMap::new(),
            rounds: 0,
            _lock: lock,
        };
        let loaded =
            if clean { store.load_index(&mut recovered) } else { Err("the last stop was not clean".into()) };
        match loaded {
            Ok(()) => store.report.from_index = true,
            Err(why) => {
                store.report.index_unused = Some(why);
                store.replay(&mut recovered)?;
            }
        }
        let next = store.segments.keys().next_back().map_or(1, |id| id + 1);
        store.open_segment(next, options.segment_size)?;
        shared.want_spare(next + 1, options.segment_size);
        let before = store.segments.len();
        store.collect_garbage();
        store.report.deleted = before - store.segments.len();
        store.report.millis = started.elapsed().as_millis() as u64;
        store.report.entries = recovered.entries.len();
        store.recovered = Some(recovered);
        let syncer = Syncer::new(shared, segments_dir);
        Ok((store, syncer))
    }

    /// What start-up found.
    pub fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Marks the store as stopped cleanly; call after the last write and sync.
    pub fn mark_clean(dir: &Path) -> io::Result<()> {
        File::create(dir.join(CLEAN))?.sync_all()?;
        sync_dir(dir)
    }

    /// Segment ids on disk, oldest first.
    fn segment_ids(&self) -> Result<Vec<u64>, StorageError> {
        let mut ids: Vec<u64> = std::fs::read_dir(&self.segments_dir)
            .map_err(|e| at(&self.segments_dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| segment::parse_name(&e.file_name().to_string_lossy()))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Loads every declared queue from its index file; on any doubt, says why and changes
    /// nothing, and the caller replays the log instead.
    fn load_index(&mut self, recovered: &mut Recovered) -> Result<(), String> {
        let qdir = self.dir.join("queues");
        let (at, targets) = index::read_segments(&qdir)?;
        let ids = self.segment_ids().map_err(|e| e.to_string())?;
        if ids.last() != Some(&at.segment) {
            return Err("the log has other segments than when the index was written".into());
        }
        let mut opened = BTreeMap::new();
        for id in ids {
            let path = self.segments_dir.join(segment::file_name(id));
            opened.insert(id, Segment::open(&path, id).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        let newest = opened.get(&at.segment).ok_or("the newest segment is gone")?;
        let more = newest
            .read(at.end as usize, HEADER)
            .and_then(|h| record::header(&h))
            .is_some_and(|(len, _)| len > 0);
        if more {
            return Err("the log has records written after the index".into());
        }
        let refs: BTreeMap<u64, &Segment> = opened.iter().map(|(id, s)| (*id, s)).collect();
        let mut entries = Vec::new();
        for q in &recovered.queues {
            entries.extend(index::read_queue(&qdir, q.id, at, &refs)?);
        }
        for (id, segment) in opened {
            let t = targets.get(&id).cloned().unwrap_or_default();
            self.segments.insert(id, SegmentState::new(segment, t));
            self.report.segments += 1;
        }
        for e in &entries {
            self.count_live(e.queue, segment_of(e.at), 1);
        }
        // The index does not say how many puts each segment held: count its live entries as
        // all it held, at about their size, so what is live is estimated from them.
        for e in &entries {
            if let Some(s) = self.segments.get_mut(&segment_of(e.at)) {
                s.puts += 1;
                s.put_bytes += e.message.body.len() as u64 + RECORD_OVERHEAD;
            }
        }
        recovered.entries = entries;
        Ok(())
    }

    /// Replays every segment in order into `recovered.entries`.
    fn replay(&mut self, recovered: &mut Recovered) -> Result<(), StorageError> {
        let ids = self.segment_ids()?;
        let mut entries: HashMap<(QueueId, u64), (StoreRef, EntryState, Box<Message>)> = HashMap::new();
        let newest = ids.last().copied();
        for id in ids {
            let path = self.segments_dir.join(segment::file_name(id));
            let mut seg = Segment::open(&path, id).map_err(|e| at(&path, e))?;
            // Where an earlier start found this segment's torn tail: nothing after it counts.
            if let Some(cut) = crate::recover::read_cut(&path)? {
                seg.limit(cut);
            }
            let mut unreadable = false;
            if let Err((offset, e)) = seg.verify_readable() {
                let what = format!("{} at offset {offset}: cannot be read ({e})", path.display());
                damaged(&mut self.report, self.options.salvage, what)?;
                seg.limit(offset);
                unreadable = true;
            }
            let mut targets = BTreeSet::new();
            let mut puts = 0;
            // The crash cut writes short in the newest segment: anything bad there is a torn tail.
            let strict = Some(id) != newest && !self.options.salvage;
            let salvage = self.options.salvage;
            let torn_before = self.report.truncated.len();
            let end = scan(&mut seg, &mut self.report, Scan { strict, salvage }, |pos, rec| match rec {
                Record::Put { queue, seq, state, message } => {
                    let Ok(at) = store_ref(id, pos) else {
                        return;
                    };
                    puts += 1;
                    if let Some((old, _, _)) = entries.insert((queue, seq), (at, state, message)) {
                        targets.insert(segment_of(old));
                    }
                }
                Record::Remove { queue, seq } => {
                    if let Some((old, _, _)) = entries.remove(&(queue, seq)) {
                        targets.insert(segment_of(old));
                    }
                }
                Record::Count { queue, seq, delivery_count } => {
                    if let Some((old, state, _)) = entries.get_mut(&(queue, seq)) {
                        state.delivery_count = delivery_count;
                        targets.insert(segment_of(*old));
                    }
                }
            })?;
            // A torn tail stays on disk as the crash left it, and once a newer segment holds
            // records this one is read strictly: what lies past the tear (sectors that reached
            // the disk out of order, never confirmed and dropped now) would then look like
            // damage, or come back under salvage. The cut is recorded so it never does.
            // Only a tear a crash could have made: in the segment being written, found by a
            // normal start, not where a read failed (a cut there would hide confirmed records
            // for good, even once the file is restored).
            let torn = self.report.truncated.len() > torn_before;
            if torn && Some(id) == newest && !self.options.salvage && !unreadable {
                crate::recover::write_cut(&path, end)?;
            }
            seg.set_end(end);
            targets.remove(&id);
            self.report.segments += 1;
            let mut state = SegmentState::new(seg, targets);
            (state.puts, state.put_bytes) = (puts, end as u64);
            self.segments.insert(id, state);
        }
        for ((queue, _), _) in entries.iter() {
            recovered.next_queue_id = recovered.next_queue_id.max(queue + 1);
        }
        let declared: BTreeMap<QueueId, _> = recovered.queues.iter().map(|q| (q.id, q.clone())).collect();
        let mut list: Vec<StoredEntry> = entries
            .into_iter()
            .map(|((queue, seq), (at, state, message))| StoredEntry {
                queue,
                seq,
                state,
                at,
                message: Arc::from(message),
            })
            .collect();
        // Entries of a queue whose deletion is durable are dead.
        tidy_entries(&mut list, &declared);
        for e in &list {
            self.count_live(e.queue, segment_of(e.at), 1);
        }
        recovered.entries = list;
        Ok(())
    }

    fn open_segment(&mut self, id: u64, capacity: usize) -> Result<(), StorageError> {
        let seg = Segment::create(&self.segments_dir, id, capacity).map_err(io_err)?;
        self.shared.created_file();
        self.use_segment(seg);
        Ok(())
    }

    /// Makes `seg` (new and empty) the one appends go to.
    fn use_segment(&mut self, seg: Segment) {
        let id = seg.id;
        self.segments.insert(id, SegmentState::new(seg, BTreeSet::new()));
        self.active = id;
    }

    fn count_live(&mut self, queue: QueueId, seg: u64, delta: i64) {
        let per_queue = self.live.entry(queue).or_default();
        let n = per_queue.entry(seg).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            per_queue.remove(&seg);
        }
        if let Some(s) = self.segments.get_mut(&seg) {
            s.live = s.live.saturating_add_signed(delta);
        }
    }

    /// Appends the record in `scratch` to the active segment (opening a new one when it is
    /// full); returns the segment and offset it went to.
    fn append(&mut self) -> Result<(u64, usize), StorageError> {
        self.refuse_if_poisoned()?;
        let len = self.scratch.len();
        let fits = self.segments.get(&self.active).is_some_and(|s| s.segment.remaining() >= len);
        if !fits {
            let next = self.active + 1;
            match self.shared.take_spare(next) {
                Some(seg) if seg.remaining() >= len => self.use_segment(seg),
                spare => {
                    // None ready, or one too small for this record: made here, under the
                    // caller's lock. A spare too small joins the log empty and goes with the
                    // next collection.
                    let id = match spare {
                        Some(seg) => {
                            self.use_segment(seg);
                            next + 1
                        }
                        None => next,
                    };
                    self.open_segment(id, self.options.segment_size.max(len))?;
                }
            }
            self.shared.want_spare(self.active + 1, self.options.segment_size);
            self.collect_garbage();
        }
        let active = self.active;
        let Some(s) = self.segments.get_mut(&active) else {
            return Err(StorageError::Io("no active segment".into()));
        };
        let offset =
            s.segment.append(&self.scratch).ok_or_else(|| StorageError::Io("segment full".into()))?;
        self.written += 1;
        self.shared.wrote(active + 1, &s.segment.file, &s.segment.path, self.written);
        Ok((active, offset))
    }

    /// Notes that a record in the active segment refers to an entry in segment `seg`.
    fn refers_to(&mut self, seg: u64) {
        let active = self.active;
        if seg != active
            && let Some(s) = self.segments.get_mut(&active)
        {
            s.targets.insert(seg);
        }
    }

    /// Hands dead segments to the syncer for deletion, oldest first.
    fn collect_garbage(&mut self) {
        let dead: Vec<u64> = {
            let mut gone: BTreeSet<u64> = BTreeSet::new();
            for (id, s) in &self.segments {
                let targets_gone =
                    s.targets.iter().all(|t| gone.contains(t) || !self.segments.contains_key(t));
                if *id != self.active && s.live == 0 && targets_gone {
                    gone.insert(*id);
                }
            }
            gone.into_iter().collect()
        };
        for id in dead {
            if let Some(s) = self.segments.remove(&id) {
                self.shared.doom(s.segment.path);
            }
        }
    }

    /// After a failed sync nothing written can be trusted to reach the disk: no more writes.
    fn refuse_if_poisoned(&self) -> Result<(), StorageError> {
        match self.shared.failure() {
            Some(why) => {
                Err(StorageError::Io(format!("the store takes no writes after a failed sync ({why})")))
            }
            None => Ok(()),
        }
    }

    fn write_meta(&mut self, m: &Meta) -> Result<(), StorageError> {
        self.refuse_if_poisoned()?;
        self.scratch.clear();
        record::frame(&mut self.scratch, |w| record::meta(w, m));
        if let Err(e) = (&*self.meta).write_all(&self.scratch) {
            // Part of the record may be in the file (ENOSPC part-way): cut it off, or the next
            // record would follow a torn one and recovery would see damage mid-log. If even
            // that fails, the log's end is unknown and the store stops taking writes.
            if let Err(cut) = self.meta.set_len(self.meta_len) {
                self.shared.poison(format!(
                    "{}: a write failed ({e}) and cutting it off failed too ({cut})",
                    self.meta_path.display()
                ));
            }
            return Err(at(&self.meta_path, e));
        }
        self.meta_len += self.scratch.len() as u64;
        self.written += 1;
        self.shared.wrote(META_FILE, &self.meta, &self.meta_path, self.written);
        Ok(())
    }
}

impl Storage for FileStore {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        self.recovered.take().ok_or_else(|| StorageError::Io("recover called twice".into()))
    }

    fn put(
        &mut self,
        queue: QueueId,
        seq: u64,
        message: &Message,
        state: &EntryState,
        replaces: Option<StoreRef>,
    ) -> Result<(StoreRef, Option<bytes::Bytes>), StorageError> {
        self.scratch.clear();
        record::frame(&mut self.scratch, |w| record::put(w, queue, seq, state, message));
        let total = self.scratch.len();
        let (seg, offset) = self.append()?;
        if let Some(s) = self.segments.get_mut(&seg) {
            s.puts += 1;
            s.put_bytes += total as u64;
        }
        self.count_live(queue, seg, 1);
        if let Some(old) = replaces {
            let old = segment_of(old);
            self.refers_to(old);
            // Only what is still counted: the entry of a deleted queue was uncounted with it.
            if self.live.get(&queue).is_some_and(|q| q.contains_key(&old)) {
                self.count_live(queue, old, -1);
                if self.segments.get(&old).is_some_and(|s| s.live == 0) {
                    self.collect_garbage();
                }
            }
        }
        let body_len = message.body.len();
        let body = self.segments.get(&seg).and_then(|s| s.segment.read(offset + total - body_len, body_len));
        Ok((store_ref(seg, offset)?, body))
    }

    fn set_delivery_count(
        &mut self,
        queue: QueueId,
        seq: u64,
        at: StoreRef,
        delivery_count: u32,
    ) -> Result<(), StorageError> {
        if !self.live.contains_key(&queue) {
            return Ok(());
        }
        self.scratch.clear();
        record::frame(&mut self.scratch, |w| record::count(w, queue, seq, delivery_count));
        self.append()?;
        self.refers_to(segment_of(at));
        Ok(())
    }

    fn remove(&mut self, queue: QueueId, seq: u64, at: StoreRef) -> Result<(), StorageError> {
        // A deleted queue's entries went with it.
        let seg = segment_of(at);
        if !self.live.get(&queue).is_some_and(|q| q.contains_key(&seg)) {
            return Ok(());
        }
        self.scratch.clear();
        record::frame(&mut self.scratch, |w| record::remove(w, queue, seq));
        self.append()?;
        self.refers_to(seg);
        self.count_live(queue, seg, -1);
        if self.segments.get(&seg).is_some_and(|s| s.live == 0) {
            self.collect_garbage();
        }
        Ok(())
    }

    fn meta(&mut self, op: &MetaOp) -> Result<(), StorageError> {
        self.write_meta(&Meta::Op(op.clone()))?;
        if let MetaOp::DeleteQueue(id) = op
            && let Some(per_segment) = self.live.remove(id)
        {
            for (seg, n) in per_segment {
                if let Some(s) = self.segments.get_mut(&seg) {
                    s.live = s.live.saturating_sub(n);
                }
            }
            self.collect_garbage();
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    /// Plans the oldest segments that still hold live entries, when the log holds more than
    /// twice what is live (plus [`COMPACT_SLACK_SEGMENTS`]). A segment is deleted only after
    /// every older segment its records refer to, so one long-lived entry in an old segment
    /// pins every segment after it; moving the oldest live entries to the head is what lets
    /// the dead segments behind them go, however many there are.
    fn plan_compaction(&mut self, budget: u64) -> bool {
        self.rounds += 1;
        // A segment the last round planned and left as live as it was holds something the
        // broker cannot move.
        let previous = std::mem::take(&mut self.compacting);
        for (id, live_then) in previous {
            if self.segments.get(&id).is_some_and(|s| s.live >= live_then) {
                self.stuck.insert(id, self.rounds + STUCK_ROUNDS);
            }
        }
        let (segments, rounds) = (&self.segments, self.rounds);
        self.stuck.retain(|id, until| segments.contains_key(id) && *until > rounds);
        if self.shared.is_poisoned() {
            return false;
        }
        let on_disk: u64 = self.segments.values().map(|s| s.segment.capacity() as u64).sum();
        let live: u64 = self.segments.values().map(SegmentState::live_bytes).sum();
        let slack = COMPACT_SLACK_SEGMENTS.saturating_mul(self.options.segment_size as u64);
        if on_disk <= live.saturating_mul(2).saturating_add(slack) {
            return false;
        }
        let mut planned = 0u64;
        for (id, s) in &self.segments {
            if planned >= budget.max(1) {
                break;
            }
            if *id == self.active || s.live == 0 {
                continue;
            }
            // What is behind a stuck segment stays pinned by it: moving it would free nothing
            // and only write the same entries again at every turn.
            if self.stuck.contains_key(id) {
                break;
            }
            self.compacting.insert(*id, s.live);
            planned = planned.saturating_add(s.live_bytes().max(1));
        }
        !self.compacting.is_empty()
    }

    fn should_move(&self, at: StoreRef) -> bool {
        self.compacting.contains_key(&segment_of(at))
    }

    fn checkpoint(&mut self, queues: &[QueueId], entries: &[StoredEntry]) -> Result<(), StorageError> {
        self.shared.drop_spare();
        let end = self.segments.get(&self.active).map_or(0, |s| s.segment.end());
        let log_end = index::LogEnd { segment: self.active, end: end as u64 };
        let targets: BTreeMap<u64, BTreeSet<u64>> =
            self.segments.iter().map(|(id, s)| (*id, s.targets.clone())).collect();
        let dir = self.dir.join("queues");
        index::write(&dir, log_end, queues, entries, &targets).map_err(|e| at(&dir, e))
    }
}

/// Deletes segments made ahead by an earlier run and never used (they hold nothing), and
/// cut records left half written.
fn remove_spares(segments_dir: &Path) -> Result<(), StorageError> {
    let entries = std::fs::read_dir(segments_dir).map_err(|e| at(segments_dir, e))?;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        // A cut record written aside and not renamed over its old one is garbage too.
        if name.ends_with(segment::SPARE_SUFFIX) || name.ends_with(".cut.tmp") {
            let path = e.path();
            std::fs::remove_file(&path).map_err(|e| at(&path, e))?;
        }
    }
    Ok(())
}
