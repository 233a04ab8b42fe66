//! Runs the durable store: opens and recovers it into the broker at start, drives group
//! commit on a thread of its own, watches free disk space, and marks a clean stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tracing::{error, info, warn};
use warren_core::Broker;
use warren_core::broker::{Compaction, ConfirmPolicy, RestoreReport};
use warren_core::storage::{Recovered, SharedStore, Storage as _};
use warren_storage::{FileStore, Options, SyncError, SyncStop, Syncer};

use crate::alarms::{Alarm, Alarms};
use crate::config::{FsyncMode, StorageSettings};
use crate::node::NodeRef;
use crate::shared::lock;

/// Group commit waits for writes to pause this long before an fsync...
const LINGER_QUIET: Duration = Duration::from_micros(200);
/// ...but no longer than this under a steady stream.
const LINGER_MAX: Duration = Duration::from_millis(2);

/// Storage metrics, updated by the syncer and the disk monitor.
#[derive(Clone)]
pub struct StorageMetrics {
    fsyncs: IntCounter,
    rounds: IntCounter,
    per_round: Histogram,
    deleted: IntCounter,
    compacted: IntCounter,
    compacted_bytes: IntCounter,
    sync_errors: IntCounter,
    failed: IntGauge,
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
            compacted: c(
                "warren_storage_compacted_messages_total",
                "Stored messages written again at the head of the log so the segments behind them could be deleted.",
            ),
            compacted_bytes: c(
                "warren_storage_compacted_bytes_total",
                "Body octets of the messages compaction wrote again.",
            ),
            sync_errors: c("warren_storage_sync_errors_total", "Syncs that failed."),
            failed: g(
                "warren_storage_failed",
                "1 once an fsync failed: the store takes no more writes until a restart recovers it.",
            ),
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
        let all: [Box<dyn prometheus::core::Collector>; 11] = [
            Box::new(self.fsyncs.clone()),
            Box::new(self.rounds.clone()),
            Box::new(self.per_round.clone()),
            Box::new(self.deleted.clone()),
            Box::new(self.compacted.clone()),
            Box::new(self.compacted_bytes.clone()),
            Box::new(self.sync_errors.clone()),
            Box::new(self.failed.clone()),
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
    /// The store, as every broker of the node shares it.
    pub store: SharedStore,
    dir: PathBuf,
    data_dir: PathBuf,
    syncer: Syncer,
    settings: StorageSettings,
    /// Its metrics.
    pub metrics: StorageMetrics,
    /// The resource alarms, the disk and storage ones raised here.
    pub alarms: Arc<Alarms>,
}

/// After the fsync when confirms wait for one, else after the write.
fn confirm_policy(fsync: FsyncMode) -> ConfirmPolicy {
    match fsync {
        FsyncMode::BeforeConfirm => ConfirmPolicy::AfterSync,
        FsyncMode::Interval | FsyncMode::Never => ConfirmPolicy::AfterWrite,
    }
}

impl Storage {
    /// Opens the store under `data_dir` and restores what it holds into `brokers`, one per
    /// vhost, `/` first: each gets its vhost's records, and `/` those of vhosts no broker
    /// serves (the configuration dropped them), which it keeps closed.
    pub fn open(
        data_dir: &Path,
        settings: StorageSettings,
        brokers: &mut [Broker],
    ) -> anyhow::Result<Storage> {
        let dir = data_dir.join("storage");
        let options = Options { segment_size: settings.segment_size, salvage: settings.salvage };
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
        let policy = confirm_policy(settings.fsync);
        let mut store = SharedStore::new(Box::new(store));
        let recovered = store
            .recover()
            .map_err(|e| anyhow::anyhow!("cannot recover the store in {}: {e}", dir.display()))?;
        let (clean, next_queue_id) = (recovered.clean, recovered.next_queue_id);
        let served: Vec<String> = brokers
            .iter()
            .map(|b| b.vhosts().iter().next().map_or_else(String::new, |(_, v)| v.name.to_string()))
            .collect();
        let mut parts = recovered.split_by_vhost(|v| served.iter().position(|s| s == v).unwrap_or(0));
        let mut restored = RestoreReport::default();
        for (i, broker) in brokers.iter_mut().enumerate() {
            let part = parts.remove(&i).unwrap_or(Recovered { clean, next_queue_id, ..Default::default() });
            restored.add(broker.attach_recovered(Box::new(store.clone()), policy, part));
        }
        for s in &restored.skipped {
            warn!(what = %s, "stored item not restored");
        }
        for v in &restored.vhosts {
            warn!(vhost = %v, "vhost not in the configuration: its stored queues and exchanges are kept, but it takes no connection");
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
            store,
            dir,
            data_dir: data_dir.to_path_buf(),
            syncer,
            metrics: StorageMetrics::new(settings.disk_free_limit),
            alarms: Arc::new(Alarms::default()),
            settings,
        })
    }

    /// When the brokers on this store confirm a stored message.
    pub fn confirm_policy(&self) -> ConfirmPolicy {
        confirm_policy(self.settings.fsync)
    }

    /// Starts the syncer thread and the disk monitor.
    pub fn start(self, node: NodeRef) -> std::io::Result<StorageTask> {
        let stop = self.syncer.stopper();
        let monitor = tokio::spawn(watch_disk(
            node.clone(),
            self.data_dir.clone(),
            self.settings.disk_free_limit,
            self.metrics.clone(),
            self.alarms.clone(),
        ));
        let (dir, settings, metrics, alarms) = (self.dir, self.settings, self.metrics, self.alarms);
        let syncer = self.syncer;
        let thread = std::thread::Builder::new()
            .name("warren-sync".into())
            .spawn(move || run_syncer(syncer, Shared { node, alarms, m: metrics }, settings, &dir));
        match thread {
            Ok(t) => Ok(StorageTask { stop, thread: Some(t), monitor }),
            Err(e) => {
                // Without a syncer no confirm would ever go out: refuse to run at all.
                monitor.abort();
                Err(std::io::Error::other(format!("cannot start the storage syncer thread: {e}")))
            }
        }
    }
}

/// The running storage tasks.
pub struct StorageTask {
    stop: SyncStop,
    thread: Option<JoinHandle<()>>,
    monitor: tokio::task::JoinHandle<()>,
}

impl StorageTask {
    /// Which of the storage tasks ended before it was asked to, if one did.
    pub fn dead(&self) -> Option<&'static str> {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            Some("the storage syncer")
        } else if self.monitor.is_finished() {
            Some("the disk monitor")
        } else {
            None
        }
    }

    /// Stops the disk monitor, and with it compaction, and waits until it has stopped: a
    /// compaction already under way finishes first, so none writes after the queue index.
    pub async fn stop_monitor(&mut self) {
        self.monitor.abort();
        let _ = (&mut self.monitor).await;
    }

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

/// What the syncer thread reports to.
struct Shared {
    node: NodeRef,
    alarms: Arc<Alarms>,
    m: StorageMetrics,
}

fn run_syncer(mut syncer: Syncer, to: Shared, settings: StorageSettings, dir: &Path) {
    let fsync = settings.fsync != FsyncMode::Never;
    while syncer.wait(None) {
        if settings.fsync == FsyncMode::BeforeConfirm {
            syncer.linger(LINGER_QUIET, LINGER_MAX);
        }
        if !round(&mut syncer, &to, fsync) {
            // Nothing more can be made durable in this run; wait for the stop, which must not
            // mark the store clean: the next start replays and checks the whole log.
            syncer.wait_for_stop();
            return;
        }
        match settings.fsync {
            FsyncMode::BeforeConfirm => {}
            FsyncMode::Interval => std::thread::sleep(settings.fsync_interval),
            // Only deletions to do: no hurry.
            FsyncMode::Never => std::thread::sleep(Duration::from_secs(1)),
        }
    }
    // Stopping: whatever was written is made durable, then the stop is marked clean.
    if round(&mut syncer, &to, true) {
        match FileStore::mark_clean(dir) {
            Ok(()) => info!("storage synced and closed cleanly"),
            Err(e) => {
                error!(error = %e, "cannot mark the store clean; the next start treats this stop as a crash")
            }
        }
    }
}

/// One sync; releases the confirms it covered. Returns whether it succeeded; a failure is
/// final for this run (see [`warren_storage::sync`]): everything waiting on a sync is
/// answered as failed, and the storage alarm blocks publishers.
fn round(syncer: &mut Syncer, to: &Shared, fsync: bool) -> bool {
    let m = &to.m;
    match syncer.sync(fsync) {
        Ok(r) => {
            m.rounds.inc();
            m.fsyncs.inc_by(r.fsyncs);
            m.deleted.inc_by(r.deleted);
            m.per_round.observe(r.records as f64);
            if let Some(why) = &r.undeleted {
                warn!(error = %why, "cannot delete a dead segment; kept and tried again next sync");
            }
            for (_, shared) in &to.node.brokers() {
                let mut s = lock(shared);
                s.broker.storage_synced(r.position);
                s.wake_all();
            }
            // After the confirms went out: none waits on a file being made.
            if let Err(why) = syncer.prepare_spare() {
                warn!(error = %why, "the next segment will be created when it is needed");
            }
            true
        }
        Err(SyncError::Poisoned(why)) => {
            m.sync_errors.inc();
            m.failed.set(1);
            error!(
                error = %why,
                "storage sync failed: unsynced publishes are nacked, the store takes no more \
                 writes, publishers are blocked; restart to recover from the log"
            );
            for (_, shared) in &to.node.brokers() {
                let mut s = lock(shared);
                s.broker.storage_failed(&why);
                s.wake_all();
            }
            to.alarms.set(Alarm::Storage, true, &to.node);
            false
        }
    }
}

/// Body octets compaction moves per second at most: a few milliseconds of copying under the
/// broker lock.
const COMPACTION_BUDGET: u64 = 16 << 20;

/// Checks free disk space every second and raises or clears the disk alarm; compacts the log
/// when it is mostly dead.
async fn watch_disk(node: NodeRef, dir: PathBuf, limit: u64, m: StorageMetrics, alarms: Arc<Alarms>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0usize;
    loop {
        tick.tick().await;
        round = round.wrapping_add(1);
        let done = compact(&node, COMPACTION_BUDGET, round);
        if done.moved > 0 {
            m.compacted.inc_by(done.moved);
            m.compacted_bytes.inc_by(done.bytes);
            info!(messages = done.moved, bytes = done.bytes, "compacted the message log");
        }
        let free = match warren_storage::disk::free_space(&dir) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, dir = %dir.display(), "cannot read free disk space");
                continue;
            }
        };
        m.disk_free.set(i64::try_from(free).unwrap_or(i64::MAX));
        let low = free < limit;
        if low == alarms.is_raised(Alarm::Disk) {
            continue;
        }
        m.alarm.set(i64::from(low));
        if low {
            warn!(free, limit, "free disk space below the limit: publishers are blocked");
        } else {
            info!(free, limit, "free disk space above the limit again: publishers unblocked");
        }
        alarms.set(Alarm::Disk, low, &node);
    }
}

/// One compaction round: the shared store plans it once, then each broker moves its own
/// entries under its own lock, within what is left of `budget`. Which broker goes first turns
/// with `round`: a budget spent by one must not leave another's entries unmoved every round
/// (the store would take their segment for one it cannot compact).
fn compact(node: &NodeRef, budget: u64, round: usize) -> Compaction {
    let mut done = Compaction::default();
    let Some(mut store) = node.store().cloned() else {
        return done;
    };
    if !store.plan_compaction(budget) {
        return done;
    }
    let brokers = node.brokers();
    let n = brokers.len();
    for (_, shared) in brokers.iter().cycle().skip(round % n.max(1)).take(n) {
        let left = budget.saturating_sub(done.bytes);
        if left == 0 {
            break;
        }
        let d = lock(shared).broker.compact_planned(left);
        done.moved += d.moved;
        done.bytes += d.bytes;
    }
    done
}

/// Writes the queue index of every broker's stored queues, in one file set: at a clean stop,
/// after the last connection is gone and compaction has stopped. Returns the entries indexed.
pub fn checkpoint(node: &NodeRef) -> Result<usize, warren_core::storage::StorageError> {
    let Some(mut store) = node.store().cloned() else {
        return Ok(0);
    };
    let (mut queues, mut entries) = (Vec::new(), Vec::new());
    for (_, shared) in &node.brokers() {
        let (q, e) = lock(shared).broker.stored_index();
        queues.extend(q);
        entries.extend(e);
    }
    entries.sort_by_key(|e| (e.queue, e.seq));
    store.checkpoint(&queues, &entries)?;
    Ok(entries.len())
}
