//! Loads the plugin components named in the config, registers them with the broker,
//! reloads them on SIGHUP, and reports their counters on `/metrics`.

use std::path::Path;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use warren_core::Broker;
use warren_plugin_host::{AdapterPlugin, ExchangePlugin, FAILURE_KINDS, PluginStats, RetryPlugin, Runtime};

use crate::config::{AdapterEntry, PluginSettings};
use crate::node::Node;
use crate::shared::lock;

/// The loaded plugins.
pub struct Plugins {
    exchanges: Vec<ExchangePlugin>,
    retries: Vec<Arc<RetryPlugin>>,
    /// Protocol adapters, with the entries that name their listeners and their counters.
    pub adapters: Vec<(AdapterEntry, Arc<AdapterPlugin>, Arc<crate::adapter::AdapterStats>)>,
}

impl Plugins {
    /// Compiles (or loads from the cache in `data_dir`) every configured component and
    /// registers it with every broker of the node (`brokers`, one per vhost). Call before storage recovery: recovered exchanges and
    /// queues need their types and policies. The first component that cannot serve stops
    /// start-up with an error naming its file.
    pub fn load(
        settings: &PluginSettings,
        data_dir: &Path,
        brokers: &mut [Broker],
    ) -> anyhow::Result<Option<Plugins>> {
        if settings.exchanges.is_empty() && settings.retries.is_empty() && settings.adapters.is_empty() {
            return Ok(None);
        }
        let cache = data_dir.join("plugin-cache");
        let runtime = Runtime::new(Some(&cache))
            .map_err(|e| anyhow::anyhow!("cannot start the plugin runtime: {e:#}"))?;
        let mut plugins = Plugins { exchanges: Vec::new(), retries: Vec::new(), adapters: Vec::new() };
        for e in &settings.exchanges {
            let (kind, path) = (&e.name, &e.component);
            let started = std::time::Instant::now();
            let p = ExchangePlugin::load(&runtime, kind, path, e.limits)?;
            tracing::info!(r#type = %kind, component = %path.display(), ms = started.elapsed().as_millis() as u64, "exchange type plugin loaded");
            for b in brokers.iter_mut() {
                b.register_exchange_type(kind, Arc::new(p.clone()));
            }
            plugins.exchanges.push(p);
        }
        for e in &settings.retries {
            let (name, path) = (&e.name, &e.component);
            let p = Arc::new(RetryPlugin::load(&runtime, name, path, e.config.clone(), e.limits)?);
            tracing::info!(policy = %name, component = %path.display(), "retry policy plugin loaded");
            for b in brokers.iter_mut() {
                b.register_retry_policy(p.clone());
            }
            plugins.retries.push(p);
        }
        for a in &settings.adapters {
            let e = &a.plugin;
            let p = AdapterPlugin::load(
                &runtime,
                &e.name,
                &e.component,
                e.config.clone(),
                e.limits,
                a.sessions_per_instance,
            )?;
            tracing::info!(protocol = %e.name, component = %e.component.display(), "protocol adapter plugin loaded");
            plugins.adapters.push((a.clone(), Arc::new(p), Arc::default()));
        }
        Ok(Some(plugins))
    }

    /// Registers every loaded type and policy with `broker`, one made after start-up.
    pub fn register(&self, broker: &mut Broker) {
        for p in &self.exchanges {
            broker.register_exchange_type(p.type_name(), Arc::new(p.clone()));
        }
        for p in &self.retries {
            broker.register_retry_policy(p.clone());
        }
    }

    /// Reads every component file again and swaps in the ones that load; a component that
    /// fails keeps its predecessor. Connections stay up: exchanges rebuild their instances
    /// from their bindings on their next call, and cached routes of reloaded types are
    /// dropped.
    pub fn reload(&self, node: &Node) {
        for p in &self.exchanges {
            match p.reload() {
                Ok(()) => {
                    for (_, shared) in &node.brokers() {
                        lock(shared).broker.exchange_type_reloaded(p.type_name());
                    }
                    tracing::info!(r#type = %p.type_name(), component = %p.path().display(), "exchange type plugin reloaded");
                }
                Err(e) => tracing::error!("exchange type plugin not reloaded, the previous one stays: {e}"),
            }
        }
        for p in &self.retries {
            match p.reload() {
                Ok(()) => tracing::info!(component = %p.path().display(), "retry policy plugin reloaded"),
                Err(e) => tracing::error!("retry policy plugin not reloaded, the previous one stays: {e}"),
            }
        }
        for (_, p, _) in &self.adapters {
            match p.reload() {
                Ok(()) => {
                    tracing::info!(protocol = %p.name(), "protocol adapter plugin reloaded: new connections use it")
                }
                Err(e) => {
                    tracing::error!("protocol adapter plugin not reloaded, the previous one stays: {e}")
                }
            }
        }
    }

    fn stats(&self) -> Vec<(&'static str, String, Arc<PluginStats>)> {
        let x = self.exchanges.iter().map(|p| ("exchange", p.type_name().to_string(), p.stats()));
        let r = self.retries.iter().map(|p| {
            use warren_core::retry::ExternalRetry;
            ("retry", p.name().to_string(), p.stats())
        });
        let a = self.adapters.iter().map(|(_, p, _)| ("adapter", p.name().to_string(), p.stats()));
        x.chain(r).chain(a).collect()
    }

    /// A collector for `/metrics`.
    pub fn collector(self: &Arc<Self>) -> PluginCollector {
        PluginCollector { plugins: self.clone(), descs: PluginFamilies::new().descs() }
    }
}

/// `warren_plugin_*` series, read from the plugins' counters at scrape time.
pub struct PluginCollector {
    plugins: Arc<Plugins>,
    descs: Vec<Desc>,
}

struct PluginFamilies {
    calls: IntCounterVec,
    traps: IntCounterVec,
    instances: IntGaugeVec,
    rebuilds: IntCounterVec,
    reloads: IntCounterVec,
    adapter_connections: IntGaugeVec,
    adapter_sessions: IntGaugeVec,
    adapter_accepted: IntCounterVec,
    adapter_refused: IntCounterVec,
    adapter_received: IntCounterVec,
    adapter_sent: IntCounterVec,
}

impl PluginFamilies {
    fn new() -> Self {
        let labels = &["plugin", "kind"];
        let g = |n: &str, h: &str| {
            IntGaugeVec::new(Opts::new(n, h), &["protocol"]).unwrap_or_else(|e| panic!("metric {n}: {e}"))
        };
        let c = |n: &str, h: &str, l: &[&str]| {
            IntCounterVec::new(Opts::new(n, h), l).unwrap_or_else(|e| panic!("metric {n}: {e}"))
        };
        PluginFamilies {
            calls: c("warren_plugin_calls_total", "Calls into the plugin.", labels),
            traps: c(
                "warren_plugin_traps_total",
                "Calls that failed: reason is trap, timeout (deadline) or memory (cap).",
                &["plugin", "kind", "reason"],
            ),
            instances: IntGaugeVec::new(
                Opts::new("warren_plugin_instances", "Live instances of the plugin."),
                labels,
            )
            .unwrap_or_else(|e| panic!("metric warren_plugin_instances: {e}")),
            rebuilds: c(
                "warren_plugin_rebuilds_total",
                "Instances rebuilt after a failure or a reload.",
                labels,
            ),
            reloads: c("warren_plugin_reloads_total", "Components swapped in by a reload.", labels),
            adapter_connections: g(
                "warren_adapter_connections",
                "Connections open on the adapter's listener.",
            ),
            adapter_sessions: g("warren_adapter_sessions", "Sessions open in the adapter's instances."),
            adapter_accepted: c(
                "warren_adapter_connections_accepted_total",
                "Connections accepted by the adapter's listener.",
                &["protocol"],
            ),
            adapter_refused: c(
                "warren_adapter_connections_refused_total",
                "Connections refused: max-connections reached, or no instance could open a session.",
                &["protocol"],
            ),
            adapter_received: c(
                "warren_adapter_received_bytes_total",
                "Octets read from the adapter's clients.",
                &["protocol"],
            ),
            adapter_sent: c(
                "warren_adapter_sent_bytes_total",
                "Octets written to the adapter's clients.",
                &["protocol"],
            ),
        }
    }

    fn descs(&self) -> Vec<Desc> {
        let all: [&dyn Collector; 11] = [
            &self.calls,
            &self.traps,
            &self.instances,
            &self.rebuilds,
            &self.reloads,
            &self.adapter_connections,
            &self.adapter_sessions,
            &self.adapter_accepted,
            &self.adapter_refused,
            &self.adapter_received,
            &self.adapter_sent,
        ];
        all.iter().flat_map(|c| c.desc().into_iter().cloned().collect::<Vec<_>>()).collect()
    }
}

impl Collector for PluginCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = PluginFamilies::new();
        for (kind, name, s) in self.plugins.stats() {
            let l = [name.as_str(), kind];
            f.calls.with_label_values(&l).inc_by(s.calls());
            for reason in FAILURE_KINDS {
                f.traps.with_label_values(&[name.as_str(), kind, reason]).inc_by(s.failures(reason));
            }
            f.instances.with_label_values(&l).set(i64::try_from(s.instances()).unwrap_or(i64::MAX));
            f.rebuilds.with_label_values(&l).inc_by(s.rebuilds());
            f.reloads.with_label_values(&l).inc_by(s.reloads());
        }
        for (_, p, s) in &self.plugins.adapters {
            let l = [p.name()];
            let (sessions, _) = p.census();
            f.adapter_connections.with_label_values(&l).set(i64::try_from(s.open()).unwrap_or(i64::MAX));
            f.adapter_sessions.with_label_values(&l).set(i64::try_from(sessions).unwrap_or(i64::MAX));
            f.adapter_accepted.with_label_values(&l).inc_by(s.accepted());
            f.adapter_refused.with_label_values(&l).inc_by(s.refused());
            f.adapter_received.with_label_values(&l).inc_by(s.received());
            f.adapter_sent.with_label_values(&l).inc_by(s.sent());
        }
        let all: [&dyn Collector; 11] = [
            &f.calls,
            &f.traps,
            &f.instances,
            &f.rebuilds,
            &f.reloads,
            &f.adapter_connections,
            &f.adapter_sessions,
            &f.adapter_accepted,
            &f.adapter_refused,
            &f.adapter_received,
            &f.adapter_sent,
        ];
        all.iter().flat_map(|c| c.collect()).collect()
    }
}
