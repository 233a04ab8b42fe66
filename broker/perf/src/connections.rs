//! The connections mode: open many idle connections, each with a channel, and report how much
//! memory the broker spends on each.

use std::time::Duration;

use crate::client::{Uri, connect};

/// How long one handshake may take before the broker counts as full.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What the connections mode measured.
#[derive(Debug, Clone, Default)]
pub struct ConnectionsSummary {
    /// Connections opened (each with channel 1 open).
    pub opened: usize,
    /// Broker heap (RssAnon) growth per connection, when its pid was given.
    pub bytes_per_connection: Option<f64>,
    /// Why it stopped short of the count asked for (a broker out of file descriptors stops
    /// answering handshakes).
    pub error: Option<String>,
}

impl ConnectionsSummary {
    /// One JSON object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": "connections",
            "opened": self.opened,
            "bytes_per_connection": self.bytes_per_connection.map(f64::round),
            "error": self.error,
        })
    }
}

/// Anonymous resident memory (heap) of process `pid`, in octets.
pub fn rss_anon(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 =
        status.lines().find(|l| l.starts_with("RssAnon:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Opens `count` connections with a channel each, holds them, and measures `pid`'s heap
/// before and after.
pub async fn run(uri: &Uri, count: usize, pid: Option<u32>) -> anyhow::Result<ConnectionsSummary> {
    let before = pid.and_then(rss_anon);
    let mut open = Vec::with_capacity(count);
    // A few dozen handshakes at a time: brokers throttle connection storms.
    let mut error = None;
    while open.len() < count && error.is_none() {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..(count - open.len()).min(50) {
            let uri = uri.clone();
            batch.spawn(async move { tokio::time::timeout(HANDSHAKE, connect(&uri)).await });
        }
        while let Some(c) = batch.join_next().await {
            match c? {
                Ok(Ok(c)) => open.push(c),
                Ok(Err(e)) => error = Some(format!("after {} connections: {e:#}", open.len())),
                Err(_) => {
                    error =
                        Some(format!("after {} connections a handshake took over {HANDSHAKE:?}", open.len()))
                }
            }
        }
    }
    if open.is_empty() {
        anyhow::bail!("no connection opened: {}", error.unwrap_or_default());
    }
    let count = open.len();
    // Let the broker settle (its allocator, its per-connection processes).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pid.and_then(rss_anon);
    let bytes_per_connection =
        before.zip(after).map(|(b, a)| a.saturating_sub(b) as f64 / count.max(1) as f64);
    let opened = open.len();
    for (_, w) in open {
        let _ = w.close().await;
    }
    Ok(ConnectionsSummary { opened, bytes_per_connection, error })
}
