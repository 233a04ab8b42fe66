//! Counters per loaded plugin, read by the broker's metrics collector at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::failure::Failure;

/// What one plugin has done since it was loaded.
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    memory: AtomicU64,
    instances: AtomicU64,
    rebuilds: AtomicU64,
    reloads: AtomicU64,
}

impl PluginStats {
    pub(crate) fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, f: &Failure) {
        let counter = match f {
            Failure::Trap(_) => &self.traps,
            Failure::Timeout => &self.timeouts,
            Failure::Memory => &self.memory,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn instance_added(&self) {
        self.instances.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn instance_dropped(&self) {
        self.instances.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn rebuilt(&self) {
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls made into the plugin.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls that ended in a failure of kind `kind` ("trap", "timeout" or "memory").
    pub fn failures(&self, kind: &str) -> u64 {
        match kind {
            "trap" => self.traps.load(Ordering::Relaxed),
            "timeout" => self.timeouts.load(Ordering::Relaxed),
            "memory" => self.memory.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Live instances.
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Instances rebuilt after a failure or a reload.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Times the component was replaced on disk and swapped in.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }
}

/// The failure kinds [`PluginStats::failures`] knows, for metric labels.
pub const FAILURE_KINDS: [&str; 3] = ["trap", "timeout", "memory"];
