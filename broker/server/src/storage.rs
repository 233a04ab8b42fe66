//! Runs the durable store: opens and recovers it into the broker at start, drives group
//! commit on a thread of its own, watches free disk space, and marks a clean stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tracing::{error, info, warn};
use warren_core::Broker;
use warren_core::broker::ConfirmPolicy;
use warren_storage::{FileStore, Options, SyncStop, Syncer};

use crate::config::{FsyncMode, StorageSettings};
use crate::server::{SharedRef, lock};

/// Group commit waits for writes to pause this long before an fsync...
const LINGER_QUIET: Duration = Duration::from_micros(200);
/// ...but no longer than this under a steady stream.
const LINGER_MAX: Duration = Duration::from_millis(2);

/// The reason RabbitMQ gives in connection.blocked for its disk alarm.
pub const DISK_ALARM: &str = "low on disk";

/// Storage metrics, updated by the syncer and the disk monitor.
#[derive(Clone)]
pub struct StorageMetrics {
    fsyncs: IntCounter,
    rounds: IntCounter,
    per_round: Histogram,
    deleted: IntCounter,
    sync_errors: IntCounter,
    disk_free: IntGauge,
    disk_limit: IntGauge,
    alarm: IntGauge,
}

impl StorageMetrics {
    fn new(limit: u64) -> Self {
        let c = |n: &str, h: &str| IntCounter::new(n, h).unwrap_or_else(|e| panic!("metric {n}: {e}"));
        let g = |n: &str, h: &str| IntGauge::new(n, h).unwrap_or_else(|e| panic!("metric {n}: {e}"));
        let buckets = (0..14).map(|i| f64::from(1u32 << i)).collect();
        let per_round = Histogram::with_opts(
            HistogramOpts::new(
                "warren_storage_records_per_sync",
                "Records (messages, acks) made durable by one group-commit sync.",
            )
            .buckets(buckets),
        )
        .unwrap_or_else(|e| panic!("metric records_per_sync: {e}"));
        let m = StorageMetrics {
            fsyncs: c("warren_storage_fsyncs_total", "fsync calls made by the store."),
            rounds: c(
                "warren_storage_syncs_total",
                "Group-commit syncs (each fsyncs every file written since the last).",
            ),
            per_round,
            deleted: c(
                "warren_storage_segments_deleted_total",
                "Segment files deleted once nothing in them was live.",
            ),
            sync_errors: c("warren_storage_sync_errors_total", "Syncs that failed (retried)."),
            disk_free: g("warren_disk_space_available_bytes", "Free disk space where the data directory is."),
            disk_limit: g(
                "warren_disk_space_available_limit_bytes",
                "Free disk space below which publishers are blocked.",
            ),
            alarm: g("warren_disk_space_alarm", "1 while free disk space is below the limit."),
        };
        m.disk_limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
        m
    }

    /// Adds these metrics to `r`.
    pub fn register(&self, r: &Registry) {
        let all: [Box<dyn prometheus::core::Collector>; 8] = [
            Box::new(self.fsyncs.clone()),
            Box::new(self.rounds.clone()),
            Box::new(self.per_round.clone()),
            Box::new(self.deleted.clone()),
            Box::new(self.sync_errors.clone()),
            Box::new(self.disk_free.clone()),
            Box::new(self.disk_limit.clone()),
            Box::new(self.alarm.clone()),
        ];
        for c in all {
            if let Err(e) = r.register(c) {
                error!(error = %e, "storage metric not registered");
            }
        }
    }
}

/// The store before the broker runs: opened, recovered into the broker.
pub struct Storage {
    dir: PathBuf,
    data_dir: PathBuf,
    syncer: Syncer,
    settings: StorageSettings,
    /// Its metrics.
    pub metrics: StorageMetrics,
    /// Raised while free disk space is below the limit; read by connection tasks without the lock.
    pub alarm: Arc<AtomicBool>,
}

impl Storage {
    /// Opens the store under `data_dir` and restores what it holds into `broker`.
    pub fn open(data_dir: &Path, settings: StorageSettings, broker: &mut Broker) -> anyhow::Result<Storage> {
        let dir = data_dir.join("storage");
        let options = Options { segment_size: settings.segment_size };
        let (store, syncer) = FileStore::open(&dir, options)
            .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", dir.display()))?;
        let report = store.report().clone();
        for d in &report.damaged {
            warn!(record = %d, "damaged record skipped");
        }
        for t in &report.truncated {
            warn!(at = %t, "torn write at the end of a log cut off");
        }
        if let Some(why) = &report.index_unused {
            info!(reason = %why, "queue index not used; queues rebuilt from the log");
        }
        let policy = match settings.fsync {
            FsyncMode::BeforeConfirm => ConfirmPolicy::AfterSync,
            FsyncMode::Interval | FsyncMode::Never => ConfirmPolicy::AfterWrite,
        };
        let restored = broker
            .attach_storage(Box::new(store), policy)
            .map_err(|e| anyhow::anyhow!("cannot recover the store in {}: {e}", dir.display()))?;
        for s in &restored.skipped {
            warn!(what = %s, "stored item not restored");
        }
        info!(
            dir = %dir.display(),
            queues = restored.queues,
            exchanges = restored.exchanges,
            bindings = restored.bindings,
            messages = restored.messages,
            segments = report.segments,
            records = report.records,
            clean = report.clean,
            from_index = report.from_index,
            millis = report.millis,
            fsync = ?settings.fsync,
            "storage recovered"
        );
        Ok(Storage {
            dir,
            data_dir: data_dir.to_path_buf(),
            syncer,
            metrics: StorageMetrics::new(settings.disk_free_limit),
            alarm: Arc::new(AtomicBool::new(false)),
            settings,
        })
    }

    /// Starts the syncer thread and the disk monitor.
    pub fn start(self, shared: SharedRef) -> StorageTask {
        let stop = self.syncer.stopper();
        let monitor = tokio::spawn(watch_disk(
            shared.clone(),
            self.data_dir.clone(),
            self.settings.disk_free_limit,
            self.metrics.clone(),
            self.alarm.clone(),
        ));
        let (dir, settings, metrics) = (self.dir, self.settings, self.metrics);
        let syncer = self.syncer;
        let thread = std::thread::Builder::new()
            .name("warren-sync".into())
            .spawn(move || run_syncer(syncer, shared, settings, metrics, &dir));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                error!(error = %e, "cannot start the storage syncer: nothing will be fsynced");
                None
            }
        };
        StorageTask { stop, thread, monitor }
    }
}

/// The running storage tasks.
pub struct StorageTask {
    stop: SyncStop,
    thread: Option<JoinHandle<()>>,
    monitor: tokio::task::JoinHandle<()>,
}

impl StorageTask {
    /// Makes everything written durable, marks the stop clean and ends the tasks. Call after
    /// the last connection is gone.
    pub fn finish(self) {
        self.monitor.abort();
        self.stop.stop();
        if let Some(t) = self.thread
            && t.join().is_err()
        {
            error!("storage syncer panicked");
        }
    }
}

fn run_syncer(
    mut syncer: Syncer,
    shared: SharedRef,
    settings: StorageSettings,
    m: StorageMetrics,
    dir: &Path,
) {
    let fsync = settings.fsync != FsyncMode::Never;
    while syncer.wait(None) {
        if settings.fsync == FsyncMode::BeforeConfirm {
            syncer.linger(LINGER_QUIET, LINGER_MAX);
        }
        round(&mut syncer, &shared, fsync, &m);
        match settings.fsync {
            FsyncMode::BeforeConfirm => {}
            FsyncMode::Interval => std::thread::sleep(settings.fsync_interval),
            // Only deletions to do: no hurry.
            FsyncMode::Never => std::thread::sleep(Duration::from_secs(1)),
        }
    }
    // Stopping: whatever was written is made durable, then the stop is marked clean.
    if round(&mut syncer, &shared, true, &m) {
        match FileStore::mark_clean(dir) {
            Ok(()) => info!("storage synced and closed cleanly"),
            Err(e) => {
                error!(error = %e, "cannot mark the store clean; the next start treats this stop as a crash")
            }
        }
    }
}

/// One sync; releases the confirms it covered. Returns whether it succeeded.
fn round(syncer: &mut Syncer, shared: &SharedRef, fsync: bool, m: &StorageMetrics) -> bool {
    match syncer.sync(fsync) {
        Ok(r) => {
            m.rounds.inc();
            m.fsyncs.inc_by(r.fsyncs);
            m.deleted.inc_by(r.deleted);
            m.per_round.observe(r.records as f64);
            let mut s = lock(shared);
            s.broker.storage_synced(r.position);
            s.wake_all();
            true
        }
        Err(e) => {
            // Confirms stay held: nothing unsynced is ever confirmed. Retry after a pause.
            m.sync_errors.inc();
            error!(error = %e, "storage sync failed; confirms wait until a sync succeeds");
            std::thread::sleep(Duration::from_millis(500));
            false
        }
    }
}

/// Checks free disk space every second and raises or clears the disk alarm.
async fn watch_disk(shared: SharedRef, dir: PathBuf, limit: u64, m: StorageMetrics, alarm: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let free = match warren_storage::disk::free_space(&dir) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, dir = %dir.display(), "cannot read free disk space");
                continue;
            }
        };
        m.disk_free.set(i64::try_from(free).unwrap_or(i64::MAX));
        let low = free < limit;
        if low == alarm.load(Ordering::Acquire) {
            continue;
        }
        alarm.store(low, Ordering::Release);
        m.alarm.set(i64::from(low));
        if low {
            warn!(free, limit, "free disk space below the limit: publishers are blocked");
        } else {
            info!(free, limit, "free disk space above the limit again: publishers unblocked");
        }
        let mut s = lock(&shared);
        s.broker.set_alarm(low.then(|| DISK_ALARM.to_string()));
        s.wake_all();
    }
}
