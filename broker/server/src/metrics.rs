//! Prometheus metrics with RabbitMQ's names under the `warren_` prefix, so RabbitMQ's
//! dashboards need only the prefix changed.
//!
//! A custom [`Collector`] reads the broker at scrape time: it copies the counters out under
//! the broker lock (a few hundred nanoseconds per queue, no allocation per message) and builds
//! the series after releasing it. A deleted queue therefore leaves no stale series. Queues
//! that receive dead letters carry `dead_letter_target="true"`, the others `"false"`; every
//! queue carries its `queue_type` (`classic` or `quorum`), as RabbitMQ's detailed metrics do.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use warren_core::deadletter::Reason;
use warren_core::stats::{GlobalStats, QueueStats};

use std::sync::Arc;

use crate::node::NodeRef;
use crate::shared::lock;

const QUEUE_LABELS: &[&str] = &["vhost", "queue", "dead_letter_target", "queue_type"];

/// One queue's numbers, copied out under the lock (for metrics and the management API).
pub(crate) struct QueueSnapshot {
    pub(crate) vhost: String,
    pub(crate) name: String,
    /// `classic` or `quorum`.
    pub(crate) kind: &'static str,
    pub(crate) durable: bool,
    pub(crate) dead_letter_target: bool,
    pub(crate) ready: usize,
    pub(crate) unacked: usize,
    pub(crate) bytes: u64,
    pub(crate) consumers: usize,
    pub(crate) delayed: usize,
    pub(crate) head_ms: Option<u64>,
    pub(crate) stats: QueueStats,
    pub(crate) dead_lettered: [u64; 4],
    /// How it was declared, for the management API (not copied for scrapes).
    pub(crate) decl: Option<QueueDecl>,
}

/// A queue's declaration, as the management API shows it.
pub(crate) struct QueueDecl {
    pub(crate) auto_delete: bool,
    pub(crate) exclusive: bool,
    pub(crate) arguments: warren_codec::FieldTable,
}

/// Every queue's numbers in one pass over the broker: one walk of the unacked deliveries and
/// of the dead-letter graph, not one per queue.
pub(crate) fn queue_snapshots(b: &warren_core::Broker) -> Vec<QueueSnapshot> {
    queue_snapshots_with(b, false)
}

/// [`queue_snapshots`], with each queue's declaration when `decl`.
pub(crate) fn queue_snapshots_with(b: &warren_core::Broker, decl: bool) -> Vec<QueueSnapshot> {
    let targets = b.dead_letter_targets();
    let unacked = b.unacked_by_queue();
    // A cluster member's numbers are those of the queues that live on it, as RabbitMQ's
    // per-node metrics are; the others' homes give theirs.
    b.queues()
        .filter(|q| q.home.is_none())
        .map(|q| QueueSnapshot {
            vhost: q.vhost_name.to_string(),
            name: q.name.to_string(),
            kind: q.kind(),
            durable: q.spec.durable,
            dead_letter_target: targets.contains(&(q.vhost, q.name.to_string())),
            ready: q.len(),
            unacked: unacked.get(&q.id).copied().unwrap_or(0),
            bytes: q.bytes(),
            consumers: q.consumers.len(),
            delayed: q.delayed + q.quorum.as_ref().map_or(0, |l| l.machine().delayed()),
            head_ms: q.head().map(|m| m.enqueued_ms),
            stats: q.stats,
            dead_lettered: q.dead_lettered,
            decl: decl.then(|| QueueDecl {
                auto_delete: q.spec.auto_delete,
                exclusive: q.spec.exclusive_owner.is_some(),
                arguments: q.spec.arguments.clone(),
            }),
        })
        .collect()
}

/// Reads the broker at scrape time.
pub struct BrokerCollector {
    node: NodeRef,
    descs: Vec<Desc>,
}

impl BrokerCollector {
    /// A collector over every broker of the node.
    pub fn new(node: NodeRef) -> Self {
        let descs = families(&Snapshot::default())
            .iter()
            .flat_map(|f| f.desc().into_iter().cloned().collect::<Vec<_>>())
            .collect();
        BrokerCollector { node, descs }
    }

    /// How long one scrape takes its turns at the brokers' locks (what a message path waits
    /// at most); for the scrape benchmark.
    pub fn lock_hold(&self) -> std::time::Duration {
        let started = std::time::Instant::now();
        let snapshot = self.snapshot();
        let held = started.elapsed();
        drop(snapshot);
        held
    }

    /// Each broker is read under its own lock, one after the other: a scrape never holds
    /// two locks, and never stops the node as a whole.
    fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for (_, shared) in &self.node.brokers() {
            let s = lock(shared);
            let b = &s.broker;
            snap.queues.extend(queue_snapshots(b));
            let (conns, chans) = b.open_counts();
            snap.open.0 += conns;
            snap.open.1 += chans;
            snap.open.2 += b.blocked_count();
            snap.global += b.stats();
            snap.delayed.extend(b.delayed_by_exchange());
        }
        snap
    }
}

impl Collector for BrokerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.snapshot()).iter().flat_map(|f| f.collect()).collect()
    }
}

/// A metric family that knows how to collect itself.
trait Family {
    fn collect(&self) -> Vec<MetricFamily>;
    fn desc(&self) -> Vec<&Desc>;
}

impl<T: Collector> Family for T {
    fn collect(&self) -> Vec<MetricFamily> {
        Collector::collect(self)
    }
    fn desc(&self) -> Vec<&Desc> {
        Collector::desc(self)
    }
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What one scrape reads from the broker, under its lock.
#[derive(Default)]
struct Snapshot {
    queues: Vec<QueueSnapshot>,
    global: GlobalStats,
    /// Connections, channels, blocked connections.
    open: (usize, usize, usize),
    /// Messages held by each delayed-message exchange.
    delayed: Vec<(String, String, u64)>,
}

/// Every family, filled from a snapshot.
fn families(snap: &Snapshot) -> Vec<Box<dyn Family>> {
    let (queues, g) = (&snap.queues, &snap.global);
    let (conns, chans, blocked) = snap.open;
    let mut out: Vec<Box<dyn Family>> = Vec::new();
    let held = gauge(
        "warren_exchange_messages_delayed",
        "Messages a delayed-message exchange holds until their x-delay runs out.",
        &["vhost", "exchange"],
    );
    for (v, x, n) in &snap.delayed {
        held.with_label_values(&[v.as_str(), x.as_str()]).set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    out.push(Box::new(held));
    let qg = |n: &str, h: &str| gauge(&format!("warren_queue_{n}"), h, QUEUE_LABELS);
    let qc = |n: &str, h: &str| counter(&format!("warren_queue_{n}"), h, QUEUE_LABELS);
    let ready = qg("messages_ready", "Messages ready to be delivered to consumers.");
    let unacked = qg("messages_unacked", "Messages delivered to consumers but not yet acknowledged.");
    let total = qg("messages", "Ready and unacknowledged messages.");
    let bytes = qg("messages_bytes", "Body octets of ready messages.");
    let consumers = qg("consumers", "Consumers on the queue.");
    let delayed = qg(
        "messages_retry_delayed",
        "Messages held out of the queue by its retry policy or a delayed-message exchange.",
    );
    let head = GaugeVec::new(
        Opts::new(
            "warren_queue_head_message_timestamp",
            "When the oldest ready message entered the queue (seconds since the epoch).",
        ),
        QUEUE_LABELS,
    )
    .unwrap_or_else(|e| panic!("head timestamp: {e}"));
    let published = qc("messages_published_total", "Messages that entered the queue.");
    let delivered = qc("messages_delivered_total", "Messages delivered to consumers or basic.get.");
    let redelivered = qc("messages_redelivered_total", "Deliveries flagged redelivered.");
    let acked = qc("messages_acked_total", "Deliveries acknowledged.");
    let mut dl_labels = QUEUE_LABELS.to_vec();
    dl_labels.push("reason");
    let dead = counter(
        "warren_queue_messages_dead_lettered_total",
        "Messages dead-lettered from the queue.",
        &dl_labels,
    );
    for q in queues {
        let target = if q.dead_letter_target { "true" } else { "false" };
        let l = [q.vhost.as_str(), q.name.as_str(), target, q.kind];
        ready.with_label_values(&l).set(int(q.ready));
        unacked.with_label_values(&l).set(int(q.unacked));
        total.with_label_values(&l).set(int(q.ready + q.unacked));
        bytes.with_label_values(&l).set(i64::try_from(q.bytes).unwrap_or(i64::MAX));
        consumers.with_label_values(&l).set(int(q.consumers));
        delayed.with_label_values(&l).set(int(q.delayed));
        if let Some(ms) = q.head_ms {
            head.with_label_values(&l).set(ms as f64 / 1000.0);
        }
        published.with_label_values(&l).inc_by(q.stats.published);
        delivered.with_label_values(&l).inc_by(q.stats.delivered);
        redelivered.with_label_values(&l).inc_by(q.stats.redelivered);
        acked.with_label_values(&l).inc_by(q.stats.acked);
        for r in Reason::ALL {
            let count = q.dead_lettered[r as usize];
            let l = [q.vhost.as_str(), q.name.as_str(), target, q.kind, r.as_str()];
            dead.with_label_values(&l).inc_by(count);
        }
    }
    out.extend([
        Box::new(ready) as Box<dyn Family>,
        Box::new(unacked),
        Box::new(total),
        Box::new(bytes),
        Box::new(consumers),
        Box::new(delayed),
        Box::new(head),
        Box::new(published),
        Box::new(delivered),
        Box::new(redelivered),
        Box::new(acked),
        Box::new(dead),
    ]);

    let global = [
        ("messages_received_total", "Messages published by clients.", g.received),
        ("messages_confirmed_total", "Publisher confirms sent.", g.confirmed),
        ("messages_routed_total", "Messages routed to at least one queue.", g.routed),
        ("messages_unroutable_dropped_total", "Unroutable messages dropped.", g.unroutable_dropped),
        (
            "messages_unroutable_returned_total",
            "Unroutable mandatory messages returned.",
            g.unroutable_returned,
        ),
        ("messages_delivered_total", "Deliveries to consumers and basic.get.", g.delivered),
        ("messages_acknowledged_total", "Deliveries acknowledged.", g.acknowledged),
    ];
    for (name, help, value) in global {
        let c = counter(&format!("warren_global_{name}"), help, &[]);
        c.with_label_values(&[] as &[&str]).inc_by(value);
        out.push(Box::new(c));
    }
    let dead = counter(
        "warren_global_messages_dead_lettered_total",
        "Messages dead-lettered, by reason.",
        &["reason"],
    );
    for r in Reason::ALL {
        dead.with_label_values(&[r.as_str()]).inc_by(g.dead_lettered[r as usize]);
    }
    out.push(Box::new(dead));
    let plain_counters = [
        ("warren_connections_opened_total", "Connections opened.", g.connections_opened),
        ("warren_connections_closed_total", "Connections closed.", g.connections_closed),
        ("warren_channels_opened_total", "Channels opened.", g.channels_opened),
        ("warren_channels_closed_total", "Channels closed.", g.channels_closed),
        (
            "warren_storage_write_errors_total",
            "Storage writes that failed (a publish so refused is nacked).",
            g.storage_errors,
        ),
    ];
    for (name, help, value) in plain_counters {
        let c = counter(name, help, &[]);
        c.with_label_values(&[] as &[&str]).inc_by(value);
        out.push(Box::new(c));
    }
    let gauges = [
        ("warren_connections", "Open connections.", int(conns)),
        ("warren_channels", "Open channels.", int(chans)),
        ("warren_queues", "Declared queues.", int(queues.len())),
        (
            "warren_connections_blocked",
            "Connections not read from because a resource alarm blocks publishers.",
            int(blocked),
        ),
    ];
    for (name, help, value) in gauges {
        let gv = gauge(name, help, &[]);
        gv.with_label_values(&[] as &[&str]).set(value);
        out.push(Box::new(gv));
    }
    out
}

/// The `/metrics` endpoint over `registry`.
pub fn router(node: NodeRef, services: &crate::services::Services) -> axum::Router {
    let registry = Arc::new(registry(node, services));
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let body = render(&registry);
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }
        }),
    )
}

/// Registers the cluster's metrics when the node is a member of one; whether it is.
fn node_is_member(r: &Registry, node: &NodeRef) -> bool {
    if node.cluster().is_none() {
        return false;
    }
    match r.register(Box::new(ClusterCollector::new(node.clone()))) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cluster metrics not registered");
            false
        }
    }
}

/// The cluster's metrics, read from its status at scrape time: the members, which of them
/// the failure detector hears, and the metadata group's Raft numbers.
pub struct ClusterCollector {
    node: NodeRef,
    descs: Vec<Desc>,
}

impl ClusterCollector {
    /// A collector over `node`'s cluster.
    pub fn new(node: NodeRef) -> Self {
        let descs = cluster_families(None)
            .iter()
            .flat_map(|f| f.desc().into_iter().cloned().collect::<Vec<_>>())
            .collect();
        ClusterCollector { node, descs }
    }
}

impl Collector for ClusterCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = self.node.cluster().map(|c| c.status());
        cluster_families(status.as_ref()).iter().flat_map(|f| f.collect()).collect()
    }
}

fn cluster_families(s: Option<&warren_cluster::Status>) -> Vec<Box<dyn Family>> {
    let group = ["metadata"];
    let members = gauge("warren_cluster_members", "Members of the cluster, voters and learners.", &[]);
    let up = gauge(
        "warren_cluster_node_up",
        "1 when the failure detector hears the member (always for this node).",
        &["node"],
    );
    let g = |name: &str, help: &str| gauge(name, help, &["group"]);
    let term = g("warren_raft_term", "The Raft group's current term.");
    let commit = g("warren_raft_commit_index", "The last log index this node knows committed.");
    let applied = g("warren_raft_applied_index", "The last log index this node applied.");
    let lag = g("warren_raft_apply_lag", "Committed entries this node has not applied yet.");
    let has_leader = g(
        "warren_raft_has_leader",
        "1 when this node knows a leader of the group (0: no quorum, or an election).",
    );
    let is_leader = g("warren_raft_is_leader", "1 when this node leads the group.");
    let changes = counter(
        "warren_raft_leader_changes_total",
        "Leaders this node has seen elected since it started.",
        &["group"],
    );
    if let Some(s) = s {
        members.with_label_values(&[] as &[&str]).set(int(s.members.len()));
        for m in &s.members {
            up.with_label_values(&[m.name.as_str()]).set(i64::from(m.up));
        }
        let (c, a) = (s.commit_index.unwrap_or(0), s.applied_index.unwrap_or(0));
        term.with_label_values(&group).set(i64::try_from(s.term).unwrap_or(i64::MAX));
        commit.with_label_values(&group).set(i64::try_from(c).unwrap_or(i64::MAX));
        applied.with_label_values(&group).set(i64::try_from(a).unwrap_or(i64::MAX));
        lag.with_label_values(&group).set(i64::try_from(c.saturating_sub(a)).unwrap_or(i64::MAX));
        has_leader.with_label_values(&group).set(i64::from(s.leader.is_some()));
        is_leader.with_label_values(&group).set(i64::from(s.state == "leader"));
        changes.with_label_values(&group).inc_by(s.leader_changes);
    }
    vec![
        Box::new(members),
        Box::new(up),
        Box::new(term),
        Box::new(commit),
        Box::new(applied),
        Box::new(lag),
        Box::new(has_leader),
        Box::new(is_leader),
        Box::new(changes),
    ]
}

/// The registry served on `/metrics`: the broker collector, the storage, memory and plugin
/// metrics, and process metrics.
pub fn registry(node: NodeRef, services: &crate::services::Services) -> Registry {
    let r = Registry::new();
    if let Err(e) = r.register(Box::new(BrokerCollector::new(node.clone()))) {
        tracing::error!(error = %e, "broker metrics not registered");
    }
    if let Some(m) = &services.storage_metrics {
        m.register(&r);
    }
    services.memory_metrics.register(&r);
    if let Some(p) = &services.plugins
        && let Err(e) = r.register(Box::new(p.collector()))
    {
        tracing::error!(error = %e, "plugin metrics not registered");
    }
    if node_is_member(&r, &node) {
        tracing::debug!("cluster metrics registered");
    }
    let process = prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "warren");
    if let Err(e) = r.register(Box::new(process)) {
        tracing::error!(error = %e, "process metrics not registered");
    }
    r
}

/// The text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}
