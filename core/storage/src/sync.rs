//! Group commit: the store registers what it wrote; a syncer thread makes it durable in
//! batches, one fsync per dirty file however many records went into it, and only then
//! deletes segments whose messages are all gone.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The state shared by a store and its syncer.
#[derive(Debug, Default)]
pub struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
    written: AtomicU64,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Files written since the last sync, by an id unique per file.
    dirty: Vec<(u64, Arc<File>)>,
    /// Records written since the last sync.
    records: u64,
    /// A segment file was created since the last sync.
    dir_changed: bool,
    /// Segment files to delete once the writes that made them dead are durable.
    doomed: Vec<PathBuf>,
    waiting: bool,
    stop: bool,
}

impl SyncShared {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a record written to `file` (id `id`); `position` is the store's position after it.
    pub fn wrote(&self, id: u64, file: &Arc<File>, position: u64) {
        let mut s = self.lock();
        if !s.dirty.iter().any(|(d, _)| *d == id) {
            s.dirty.push((id, file.clone()));
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

    /// Hands a dead segment file to the syncer for deletion.
    pub fn doom(&self, path: PathBuf) {
        self.lock().doomed.push(path);
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncRound {
    /// Everything the store wrote up to here is durable.
    pub position: u64,
    /// Records it covered.
    pub records: u64,
    /// fsync calls it made.
    pub fsyncs: u64,
    /// Segment files it deleted.
    pub deleted: u64,
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
            if self.written() > self.synced || !s.doomed.is_empty() {
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
    /// `never` mode, which only deletes), then deletes dead segments.
    pub fn sync(&mut self, fsync: bool) -> io::Result<SyncRound> {
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
        if dir_changed && fsync {
            sync_dir(&self.segments_dir)?;
            round.fsyncs += 1;
        }
        // The metadata log has the lowest id, so a queue is durable before its messages are.
        let mut dirty = dirty;
        dirty.sort_by_key(|(id, _)| *id);
        for (_, file) in dirty.iter().filter(|_| fsync) {
            file.sync_data()?;
            round.fsyncs += 1;
        }
        // Doomed in log order, each deletion made durable before the next: a segment whose
        // removes cancel entries of an older one must outlive it, even across a power cut.
        for path in doomed {
            match std::fs::remove_file(&path) {
                Ok(()) => round.deleted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if fsync {
                sync_dir(&self.segments_dir)?;
                round.fsyncs += 1;
            }
        }
        self.synced = position;
        Ok(round)
    }
}

/// fsyncs a directory, so the files created or deleted in it are durable.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
