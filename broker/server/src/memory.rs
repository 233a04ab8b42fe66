//! The memory alarm, as RabbitMQ's `vm_memory_high_watermark`: while the broker's resident
//! memory is above the watermark, publishing connections are blocked exactly as under the
//! disk alarm, and consumers keep draining queues.
//!
//! Memory is read from `/proc` once a second: the anonymous resident memory of this process
//! (not the page cache of the mapped message log), and the machine's memory capped by a
//! cgroup v2 limit (a container's limit is the memory it has).

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntGauge, Registry};
use tracing::{info, warn};

use crate::alarms::{Alarm, Alarms};
use crate::config::Watermark;
use crate::node::NodeRef;

/// The memory alarm's metrics.
#[derive(Clone)]
pub struct MemoryMetrics {
    alarm: IntGauge,
    limit: IntGauge,
}

impl MemoryMetrics {
    fn new() -> Self {
        let g = |n: &str, h: &str| IntGauge::new(n, h).unwrap_or_else(|e| panic!("metric {n}: {e}"));
        MemoryMetrics {
            alarm: g("warren_memory_alarm", "1 while resident memory is above the high watermark."),
            limit: g(
                "warren_resident_memory_limit_bytes",
                "The memory high watermark: above it publishers are blocked.",
            ),
        }
    }

    /// Adds them to `r`.
    pub fn register(&self, r: &Registry) {
        for m in [&self.alarm, &self.limit] {
            if let Err(e) = r.register(Box::new(m.clone())) {
                tracing::error!(error = %e, "memory metric not registered");
            }
        }
    }
}

impl Default for MemoryMetrics {
    fn default() -> Self {
        MemoryMetrics::new()
    }
}

/// The watermark in octets, given the memory the machine (or cgroup) has.
pub fn limit(watermark: Watermark, available: u64) -> u64 {
    match watermark {
        Watermark::Absolute(s) => s.0,
        Watermark::Relative(f) => (available as f64 * f) as u64,
    }
}

/// Memory available to this process: the machine's, or its cgroup's limit when lower.
pub fn available() -> std::io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let total = kib_field(&meminfo, "MemTotal:")
        .ok_or_else(|| std::io::Error::other("no MemTotal in /proc/meminfo"))?;
    // "max" (no limit) or a number of octets.
    let cgroup =
        std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse().ok());
    Ok(cgroup.map_or(total, |c: u64| c.min(total)))
}

/// This process's anonymous resident memory in octets: its heap and stacks. File pages are
/// left out on purpose: queued persistent bodies are views of the mapped log, pages the kernel
/// can drop and read back, and counting them would raise the alarm for a long durable queue
/// right after a restart (recovery touches every page) and never clear it.
pub fn resident() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    kib_field(&status, "RssAnon:").ok_or_else(|| std::io::Error::other("no RssAnon in /proc/self/status"))
}

/// A `Name:   1234 kB` line of a /proc file, in octets.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Checks resident memory every second and raises or clears the memory alarm.
pub async fn watch(node: NodeRef, alarms: Arc<Alarms>, watermark: Watermark, m: MemoryMetrics) {
    let limit = match available() {
        Ok(total) => limit(watermark, total),
        Err(e) => {
            warn!(error = %e, "cannot read the machine's memory: no memory alarm");
            return;
        }
    };
    m.limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
    info!(limit, "memory high watermark");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let used = match resident() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read resident memory");
                continue;
            }
        };
        let high = used > limit;
        if high == alarms.is_raised(Alarm::Memory) {
            continue;
        }
        m.alarm.set(i64::from(high));
        if high {
            warn!(used, limit, "memory above the high watermark: publishers are blocked");
        } else {
            info!(used, limit, "memory below the high watermark again: publishers unblocked");
        }
        alarms.set(Alarm::Memory, high, &node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Size;

    #[test]
    fn watermarks_and_proc_fields() {
        assert_eq!(limit(Watermark::Relative(0.6), 1000), 600);
        assert_eq!(limit(Watermark::Absolute(Size(42)), 1000), 42);
        assert_eq!(kib_field("VmPeak:\t  10 kB\nRssAnon:\t   2048 kB\n", "RssAnon:"), Some(2 << 20));
        assert_eq!(kib_field("VmPeak: 1 kB\n", "VmRSS:"), None);
        let (total, rss) = (available().expect("meminfo"), resident().expect("status"));
        assert!(rss > 0 && rss < total, "{rss} of {total}");
    }
}
