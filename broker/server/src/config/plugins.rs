//! `[[plugins.exchange]]`, `[[plugins.retry]]` and `[[plugins.adapter]]`: the components to
//! load, with their limits.

use std::path::PathBuf;

use serde::Deserialize;

use super::*;

/// `[plugins]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Exchange types.
    #[serde(default)]
    pub exchange: Vec<ExchangePluginConfig>,
    /// Retry policies.
    #[serde(default)]
    pub retry: Vec<RetryPluginConfig>,
    /// Protocol adapters.
    #[serde(default)]
    pub adapter: Vec<AdapterPluginConfig>,
}

/// `[[plugins.adapter]]`: a protocol served by a component on a listener of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdapterPluginConfig {
    /// The protocol's name, which logs and metrics use ("mqtt").
    pub protocol: String,
    /// The component file.
    pub component: PathBuf,
    /// Where it listens (`0.0.0.0:1883`).
    pub listen: std::net::SocketAddr,
    /// Where it listens over TLS with `[tls]`'s certificate (`0.0.0.0:8883`).
    pub tls_listen: Option<std::net::SocketAddr>,
    /// Handed to the adapter when an instance is built; it may refuse it.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
    /// Linear memory cap per instance (octets, or "64MiB").
    pub memory: Option<Size>,
    /// Deadline for one call, milliseconds.
    pub timeout_ms: Option<u64>,
    /// Most instances alive at once.
    pub max_instances: Option<usize>,
    /// Sessions one instance serves: a trap in an instance ends this many at most.
    pub sessions_per_instance: Option<usize>,
    /// Most connections at once on this listener.
    pub max_connections: Option<usize>,
}

/// `[[plugins.exchange]]`: an exchange type implemented by a component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExchangePluginConfig {
    /// The type name clients pass to exchange.declare.
    #[serde(rename = "type")]
    pub kind: String,
    /// The component file (relative paths are from the broker's working directory).
    pub component: PathBuf,
    /// Linear memory cap per instance (octets, or "64MiB").
    pub memory: Option<Size>,
    /// Deadline for one call, milliseconds.
    pub timeout_ms: Option<u64>,
    /// Most instances alive at once (an exchange plugin has one per exchange).
    pub max_instances: Option<usize>,
}

/// `[[plugins.retry]]`: a retry policy implemented by a component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RetryPluginConfig {
    /// The name queues give in `x-retry-policy`.
    pub name: String,
    /// The component file.
    pub component: PathBuf,
    /// Handed to the policy when it is built; it may refuse it.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
    /// Linear memory cap per instance (octets, or "64MiB").
    pub memory: Option<Size>,
    /// Deadline for one call, milliseconds.
    pub timeout_ms: Option<u64>,
    /// Most instances alive at once (an exchange plugin has one per exchange).
    pub max_instances: Option<usize>,
}

/// Limits from a plugin entry over the host's defaults.
fn plugin_limits(
    what: &str,
    memory: Option<Size>,
    timeout_ms: Option<u64>,
    max_instances: Option<usize>,
) -> Result<warren_plugin_host::Limits, ConfigError> {
    let mut l = warren_plugin_host::Limits::default();
    if let Some(Size(n)) = memory {
        if n < 1 << 20 {
            return Err(ConfigError::Invalid(format!(
                "{what}: memory = {n} is below 1MiB, too small for any guest"
            )));
        }
        l.memory_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(ms) = timeout_ms {
        if ms == 0 {
            return Err(ConfigError::Invalid(format!("{what}: timeout-ms must be above 0")));
        }
        l.timeout = std::time::Duration::from_millis(ms);
    }
    if let Some(n) = max_instances {
        if n == 0 {
            return Err(ConfigError::Invalid(format!("{what}: max-instances must be above 0")));
        }
        l.max_instances = n;
    }
    Ok(l)
}

/// Exchange types clients rely on being the real thing; a plugin may not replace them.
const RESERVED_TYPES: [&str; 4] = ["direct", "fanout", "topic", "headers"];

/// The plugins to load, resolved.
#[derive(Debug, Clone, Default)]
pub struct PluginSettings {
    /// Exchange types.
    pub exchanges: Vec<PluginEntry>,
    /// Retry policies.
    pub retries: Vec<PluginEntry>,
    /// Protocol adapters.
    pub adapters: Vec<AdapterEntry>,
}

/// One protocol adapter to serve.
#[derive(Debug, Clone)]
pub struct AdapterEntry {
    /// The plugin, `name` being the protocol.
    pub plugin: PluginEntry,
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    /// Where it listens over TLS.
    pub tls_listen: Option<std::net::SocketAddr>,
    /// Sessions per instance.
    pub sessions_per_instance: usize,
    /// Most connections at once.
    pub max_connections: usize,
}

/// Sessions per adapter instance unless the entry says: a trap costs at most this many.
pub const DEFAULT_SESSIONS_PER_INSTANCE: usize = 256;
/// An adapter instance's memory cap unless the entry says: its sessions' buffers share it.
pub const DEFAULT_ADAPTER_MEMORY: usize = 512 << 20;
/// Connections an adapter listener serves at once unless the entry says.
pub const DEFAULT_ADAPTER_CONNECTIONS: usize = 65_536;

/// One plugin to load.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// The exchange type or retry policy name.
    pub name: String,
    /// The component file.
    pub component: PathBuf,
    /// Its config table (retry policies only).
    pub config: Vec<(String, String)>,
    /// Its limits.
    pub limits: warren_plugin_host::Limits,
}

impl PluginsConfig {
    pub(super) fn build(self) -> Result<PluginSettings, ConfigError> {
        let mut s = PluginSettings::default();
        for x in self.exchange {
            let what = format!("plugins.exchange '{}'", x.kind);
            if RESERVED_TYPES.contains(&x.kind.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "{what}: '{}' is built in and cannot be replaced",
                    x.kind
                )));
            }
            if s.exchanges.iter().any(|e| e.name == x.kind) {
                return Err(ConfigError::Invalid(format!("{what}: configured twice")));
            }
            let limits = plugin_limits(&what, x.memory, x.timeout_ms, x.max_instances)?;
            s.exchanges.push(PluginEntry {
                name: x.kind,
                component: x.component,
                config: Vec::new(),
                limits,
            });
        }
        for r in self.retry {
            let what = format!("plugins.retry '{}'", r.name);
            if s.retries.iter().any(|e| e.name == r.name) {
                return Err(ConfigError::Invalid(format!("{what}: configured twice")));
            }
            let limits = plugin_limits(&what, r.memory, r.timeout_ms, r.max_instances)?;
            let config = r.config.into_iter().collect();
            s.retries.push(PluginEntry { name: r.name, component: r.component, config, limits });
        }
        for a in self.adapter {
            let what = format!("plugins.adapter '{}'", a.protocol);
            if a.protocol.is_empty() || !a.protocol.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(ConfigError::Invalid(format!(
                    "{what}: protocol must be letters, digits and '-'"
                )));
            }
            if s.adapters.iter().any(|e| e.plugin.name == a.protocol) {
                return Err(ConfigError::Invalid(format!("{what}: configured twice")));
            }
            if s.adapters.iter().any(|e| e.listen == a.listen) {
                return Err(ConfigError::Invalid(format!(
                    "{what}: {} is another adapter's listener",
                    a.listen
                )));
            }
            let mut limits = plugin_limits(&what, a.memory, a.timeout_ms, a.max_instances)?;
            if a.memory.is_none() {
                limits.memory_bytes = DEFAULT_ADAPTER_MEMORY;
            }
            let sessions_per_instance = a.sessions_per_instance.unwrap_or(DEFAULT_SESSIONS_PER_INSTANCE);
            let max_connections = a.max_connections.unwrap_or(DEFAULT_ADAPTER_CONNECTIONS);
            if sessions_per_instance == 0 || max_connections == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{what}: sessions-per-instance and max-connections must be above 0"
                )));
            }
            let config = a.config.into_iter().collect();
            s.adapters.push(AdapterEntry {
                plugin: PluginEntry { name: a.protocol, component: a.component, config, limits },
                listen: a.listen,
                tls_listen: a.tls_listen,
                sessions_per_instance,
                max_connections,
            });
        }
        Ok(s)
    }
}
