//! The handles the server's tasks share without the broker lock: each one is its own
//! synchronisation (atomics, registries), read by connections and by `/metrics`.

use std::sync::Arc;

/// Handles the background tasks share without the broker lock.
#[derive(Clone)]
pub struct Services {
    /// The resource alarms; whether any is raised is read without the lock.
    pub alarms: Arc<crate::alarms::Alarms>,
    /// Storage metrics, registered on `/metrics` when the store is open.
    pub storage_metrics: Option<crate::storage::StorageMetrics>,
    /// The memory alarm's metrics.
    pub memory_metrics: crate::memory::MemoryMetrics,
    /// Loaded plugin components, when the config names any.
    pub plugins: Option<Arc<crate::plugins::Plugins>>,
}
