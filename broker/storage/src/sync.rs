//! Group commit: the store registers what it wrote; a syncer thread makes it durable in
//! batches, one fsync per dirty file however many records went into it, and only then
//! deletes segments whose messages are all gone.
//!
//! A failed fsync ends durability for this run of the store. After one, Linux may already
//! have dropped the dirty pages it could not write and marked them clean, so a later fsync
//! of the same file succeeds without the data being on disk (PostgreSQL's "fsyncgate").
//! Retrying proves nothing; the syncer is poisoned instead: it never reports a position past
//! the last good sync again, and the store refuses every write from then on. What was
//! written before is recovered from the log by the next start, which checks every record.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The state shared by a store and its syncer.
#[derive(Debug, Default)]
pub struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
    written: AtomicU64,
    /// Set once a sync failed; the store checks it before every write.
    poisoned: AtomicBool,
    /// The next segment, created ahead by the syncer so that the store's writer (under the
    /// broker lock) never waits on creating and allocating a file.
    spare: Mutex<Option<crate::segment::Segment>>,
}

/// A file written since the last sync.
#[derive(Debug)]
struct Dirty {
    /// Unique per file; the metadata log is 0, so it syncs first.
    id: u64,
    file: Arc<File>,
    /// For the log line and the alarm when its sync fails.
    path: PathBuf,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Files written since the last sync.
    dirty: Vec<Dirty>,
    /// Records written since the last sync.
    records: u64,
    /// A segment file was created since the last sync.
    dir_changed: bool,
    /// Segment files to delete once the writes that made them dead are durable.
    doomed: Vec<PathBuf>,
    waiting: bool,
    stop: bool,
    /// Why the store stopped taking writes, once a sync failed.
    failure: Option<String>,
    /// The segment the store will want next (id, capacity), not created yet.
    want_spare: Option<(u64, usize)>,
}

impl SyncShared {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a record written to `file` (id `id`, at `path`); `position` is the store's
    /// position after it.
    pub fn wrote(&self, id: u64, file: &Arc<File>, path: &std::path::Path, position: u64) {
        let mut s = self.lock();
        if !s.dirty.iter().any(|d| d.id == id) {
            s.dirty.push(Dirty { id, file: file.clone(), path: path.to_path_buf() });
        }
        s.records += 1;
        let wake = s.waiting;
        drop(s);
        // Stored after the file is registered: a syncer that sees this position also sees the
        // file it must sync for it.
        self.written.store(position, Ordering::Release);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Notes that a segment file was created.
    pub fn created_file(&self) {
        self.lock().dir_changed = true;
    }

    /// Asks the syncer to create segment `id` of `capacity` octets ahead of its use.
    pub fn want_spare(&self, id: u64, capacity: usize) {
        let mut s = self.lock();
        s.want_spare = Some((id, capacity));
        let wake = s.waiting;
        drop(s);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Forgets the segment made ahead, and any asked for: at a clean stop the log on disk
    /// is exactly what the queue index describes. The spare's lock is taken first, as the
    /// syncer takes it to make one: a creation under way finishes, then goes.
    pub fn drop_spare(&self) {
        let mut spare = self.spare_slot();
        let mut s = self.lock();
        s.want_spare = None;
        if let Some(seg) = spare.take() {
            let _ = std::fs::remove_file(&seg.path);
            s.dir_changed = true;
        }
    }

    fn spare_slot(&self) -> MutexGuard<'_, Option<crate::segment::Segment>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Segment `id`, if the syncer created it ahead, renamed to its segment name; one being
    /// created is waited for.
    pub fn take_spare(&self, id: u64) -> Option<crate::segment::Segment> {
        let mut slot = self.spare_slot();
        // A request for this segment or an older one is moot: the caller is about to have
        // it, made ahead or by itself (a second file would only take disk space).
        {
            let mut s = self.lock();
            if s.want_spare.is_some_and(|(want, _)| want <= id) {
                s.want_spare = None;
            }
        }
        match slot.take() {
            Some(mut seg) if seg.id == id => match seg.make_live() {
                Ok(()) => {
                    self.created_file();
                    Some(seg)
                }
                Err(_) => {
                    // A rename reported failed may have happened all the same: the live name
                    // then holds this file, and the caller could not create it again.
                    let live = seg.path.with_file_name(crate::segment::file_name(seg.id));
                    if live.exists() {
                        seg.path = live;
                        self.created_file();
                        return Some(seg);
                    }
                    let _ = std::fs::remove_file(&seg.path);
                    None
                }
            },
            // One for another id cannot be used: its file is removed (it holds nothing).
            Some(seg) => {
                let _ = std::fs::remove_file(&seg.path);
                None
            }
            None => None,
        }
    }

    /// Hands a dead segment file to the syncer for deletion.
    pub fn doom(&self, path: PathBuf) {
        self.lock().doomed.push(path);
    }

    /// Why the store takes no more writes, once a sync has failed.
    pub fn failure(&self) -> Option<String> {
        if !self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        self.lock().failure.clone()
    }

    /// Whether a sync has failed: from then on nothing written can be made durable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Ends durability for this run; the first reason given is the one kept.
    pub fn poison(&self, why: String) {
        let mut s = self.lock();
        s.failure.get_or_insert(why);
        self.poisoned.store(true, Ordering::Release);
        drop(s);
        // The syncer reports it even when nothing is left to sync (a failure outside a sync).
        self.wake.notify_all();
    }
}

/// Why a sync round failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// An fsync failed (now or in an earlier round): what was written since the last good
    /// sync may not be on disk, and the store takes no more writes.
    #[error("durability lost: {0}")]
    Poisoned(String),
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncRound {
    /// Everything the store wrote up to here is durable.
    pub position: u64,
    /// Records it covered.
    pub records: u64,
    /// fsync calls it made.
    pub fsyncs: u64,
    /// Segment files it deleted.
    pub deleted: u64,
    /// A dead segment that could not be deleted (kept for the next round), and why.
    pub undeleted: Option<String>,
}

/// Makes a store's writes durable; run it on a thread of its own.
#[derive(Debug)]
pub struct Syncer {
    shared: Arc<SyncShared>,
    segments_dir: PathBuf,
    synced: u64,
}

/// Stops a syncer's wait from another thread.
#[derive(Debug, Clone)]
pub struct SyncStop(Arc<SyncShared>);

impl SyncStop {
    /// Makes the syncer's current and future waits return `false`.
    pub fn stop(&self) {
        self.0.lock().stop = true;
        self.0.wake.notify_all();
    }
}

impl Syncer {
    pub(crate) fn new(shared: Arc<SyncShared>, segments_dir: PathBuf) -> Self {
        let synced = shared.written.load(Ordering::Acquire);
        Syncer { shared, segments_dir, synced }
    }

    /// A handle that ends [`Syncer::wait`].
    pub fn stopper(&self) -> SyncStop {
        SyncStop(self.shared.clone())
    }

    /// The store's write position now.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// Waits until there are writes to sync (or `timeout` passes); `false` once stopped.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut s = self.shared.lock();
        loop {
            if s.stop {
                return false;
            }
            if self.written() > self.synced
                || !s.doomed.is_empty()
                || s.failure.is_some()
                || s.want_spare.is_some()
            {
                return true;
            }
            s.waiting = true;
            s = match timeout {
                Some(t) => {
                    let (s, r) = self.shared.wake.wait_timeout(s, t).unwrap_or_else(|p| p.into_inner());
                    if r.timed_out() {
                        let mut s = s;
                        s.waiting = false;
                        return !s.stop;
                    }
                    s
                }
                None => self.shared.wake.wait(s).unwrap_or_else(|p| p.into_inner()),
            };
            s.waiting = false;
        }
    }

    /// Blocks until the syncer is stopped: after a failed sync there is nothing else to do.
    pub fn wait_for_stop(&self) {
        let mut s = self.shared.lock();
        while !s.stop {
            s = self.shared.wake.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lets a batch gather before a sync: returns once no write arrived for `quiet`, or after
    /// `max`. Under a steady stream this trades up to `max` of confirm latency for far fewer
    /// fsyncs (each costs a system call, a disk flush, and a wake-up of every publisher);
    /// a lone publisher waiting for its confirm pays only `quiet`.
    pub fn linger(&self, quiet: Duration, max: Duration) {
        let started = std::time::Instant::now();
        let mut seen = self.written();
        while started.elapsed() < max {
            std::thread::sleep(quiet);
            let now = self.written();
            if now == seen {
                return;
            }
            seen = now;
        }
    }

    /// Syncs every file written since the last round (unless `fsync` is false: the
    /// `never` mode, which only deletes), then deletes dead segments. After a failed fsync
    /// every round fails: see the module's note.
    pub fn sync(&mut self, fsync: bool) -> Result<SyncRound, SyncError> {
        if let Some(why) = self.shared.failure() {
            return Err(SyncError::Poisoned(why));
        }
        let position = self.written();
        let (dirty, records, dir_changed, doomed) = {
            let mut s = self.shared.lock();
            let r = (
                std::mem::take(&mut s.dirty),
                std::mem::take(&mut s.records),
                std::mem::take(&mut s.dir_changed),
                std::mem::take(&mut s.doomed),
            );
            drop(s);
            r
        };
        let mut round = SyncRound { position, records, ..Default::default() };
        let fail = |what: &std::path::Path, e: io::Error| {
            let why = format!("fsync of {} failed: {e}", what.display());
            self.shared.poison(why.clone());
            SyncError::Poisoned(why)
        };
        if dir_changed && fsync {
            sync_dir(&self.segments_dir).map_err(|e| fail(&self.segments_dir, e))?;
            round.fsyncs += 1;
        }
        // The metadata log has the lowest id, so a queue is durable before its messages are.
        let mut dirty = dirty;
        dirty.sort_by_key(|d| d.id);
        for d in dirty.iter().filter(|_| fsync) {
            d.file.sync_data().map_err(|e| fail(&d.path, e))?;
            round.fsyncs += 1;
        }
        // Doomed in log order, each deletion made durable before the next: a segment whose
        // removes cancel entries of an older one must outlive it, even across a power cut.
        let mut doomed = doomed.into_iter();
        while let Some(path) = doomed.next() {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    round.deleted += 1;
                    // The record of where its torn tail was cut, if it had one, goes with it.
                    let mut cut = path.as_os_str().to_os_string();
                    cut.push(crate::recover::CUT_SUFFIX);
                    let _ = std::fs::remove_file(std::path::PathBuf::from(cut));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Not a durability problem: the file is kept, and tried again (with those
                    // after it, still in order) next round.
                    round.undeleted = Some(format!("{}: {e}", path.display()));
                    let mut s = self.shared.lock();
                    let later = std::mem::take(&mut s.doomed);
                    s.doomed = std::iter::once(path).chain(doomed).chain(later).collect();
                    break;
                }
            }
            if fsync {
                sync_dir(&self.segments_dir).map_err(|e| fail(&self.segments_dir, e))?;
                round.fsyncs += 1;
            }
        }
        self.synced = position;
        Ok(round)
    }

    /// Creates the segment the store asked for ahead, if it asked; call it after a round's
    /// confirms went out, so none waits on it. Whether one was made; an error is not fatal:
    /// the store then creates the segment itself, and reports its error if that fails too.
    ///
    /// The spare's lock is held while the file is made: a store that reaches the segment
    /// meanwhile waits for it rather than making a second one.
    pub fn prepare_spare(&mut self) -> Result<bool, String> {
        let mut spare = self.shared.spare_slot();
        let Some((id, capacity)) = self.shared.lock().want_spare.take() else {
            return Ok(false);
        };
        match crate::segment::Segment::create_spare(&self.segments_dir, id, capacity) {
            Ok(seg) => {
                if let Some(old) = spare.replace(seg) {
                    let _ = std::fs::remove_file(&old.path);
                }
                Ok(true)
            }
            Err(e) => Err(format!("segment {id} not created ahead: {e}")),
        }
    }
}

/// fsyncs a directory, so the files created or deleted in it are durable.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
