//! Settings: command-line flags (each also read from `WARREN_<FLAG>`), an optional TOML file,
//! and built-in defaults, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use warren_codec::FieldValue;
use warren_core::ConnectionConfig;
use warren_core::auth::User;
use warren_core::policy::Policy;
use warren_core::queue_args::QueueArgs;

use crate::tls::TlsConfig;

mod access;
pub mod cluster;
mod plugins;
pub use plugins::{
    AdapterEntry, AdapterPluginConfig, ExchangePluginConfig, PluginEntry, PluginSettings, PluginsConfig,
    RetryPluginConfig,
};

/// Command-line flags.
#[derive(Debug, Default, Parser)]
#[command(name = "warren", version, about = "Warren: an AMQP 0-9-1 message broker")]
pub struct Cli {
    /// Address for AMQP 0-9-1 over TCP, or `off` for a TLS-only broker [default: [::]:5672,
    /// IPv6 and IPv4].
    #[arg(long, env = "WARREN_AMQP_LISTEN", value_name = "ADDR|off")]
    pub amqp_listen: Option<Listen>,
    /// Directory for metadata and message logs [default: ./warren-data].
    #[arg(long, env = "WARREN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for AMQP over TLS; needs `[tls]` in the config file [default: 0.0.0.0:5671
    /// when TLS is configured].
    #[arg(long, env = "WARREN_AMQPS_LISTEN", value_name = "ADDR")]
    pub amqps_listen: Option<SocketAddr>,
    /// UDP address for AMQP over QUIC (ALPN amqp091) [default: 0.0.0.0:5671].
    #[arg(long, env = "WARREN_QUIC_LISTEN", value_name = "ADDR")]
    pub quic_listen: Option<SocketAddr>,
    /// Address for Prometheus `/metrics` [default: 0.0.0.0:15692].
    #[arg(long, env = "WARREN_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log line format: text or json [default: text].
    #[arg(long, env = "WARREN_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Address for the management HTTP API (basic auth with the broker's users)
    /// [default: 127.0.0.1:15672].
    #[arg(long, env = "WARREN_MANAGEMENT_LISTEN", value_name = "ADDR")]
    pub management_listen: Option<SocketAddr>,
    /// TOML file with the same settings and more; unknown keys are an error.
    #[arg(long, env = "WARREN_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Start even if a storage log is damaged in the middle, skipping (and logging) the
    /// damaged records. Without it such damage stops the start, naming the file and offset.
    #[arg(long, env = "WARREN_SALVAGE_STORAGE")]
    pub salvage_storage: bool,
    /// Run a tool instead of the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools the binary runs instead of the broker.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Accept plain AMQP on a local TCP port and carry each connection over QUIC to a broker.
    Bridge {
        /// Local TCP address to accept AMQP clients on.
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// The broker's QUIC address, `quic://HOST:PORT`.
        #[arg(long, value_name = "URL")]
        to: String,
        /// PEM certificate(s) to trust for the broker (its self-signed `quic/cert.pem`, or a CA).
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
    },
    /// Operate a running broker over its management API: list, declare, delete, purge,
    /// replay, close connections, export definitions.
    Ctl(crate::ctl::CtlArgs),
    /// The cluster of the node `--config` configures.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Print RabbitMQ's hash of a password, for `password-hash` in `[[users]]` (and accepted
    /// by RabbitMQ's definitions import). The password is read from standard input when not
    /// given, so it stays out of the shell history and the process list.
    HashPassword {
        /// The password.
        password: Option<Secret>,
        /// RabbitMQ's hashing module: `rabbit_password_hashing_sha256` (default), `_sha512` or `_md5`.
        #[arg(long, default_value = "rabbit_password_hashing_sha256")]
        algorithm: String,
    },
}

/// What `warren cluster` does.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterAction {
    /// Print the members, their state and the metadata leader, as the node sees them (asked
    /// over its management API).
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The user to ask as (`administrator` or `monitoring`).
        #[arg(long, env = "WARREN_USER", default_value = "guest")]
        user: String,
        /// Its password.
        #[arg(long, env = "WARREN_PASSWORD", default_value = "guest", hide_env_values = true)]
        password: Secret,
    },
    /// Add this new node (one its own `peers` do not name) to the cluster of the member whose
    /// inter-node address is PEER: a learner first, a voter once it caught up.
    Join {
        /// A member's inter-node address, ip:port.
        peer: String,
        /// The user to ask as (`administrator`).
        #[arg(long, env = "WARREN_USER", default_value = "guest")]
        user: String,
        /// Its password.
        #[arg(long, env = "WARREN_PASSWORD", default_value = "guest", hide_env_values = true)]
        password: Secret,
    },
    /// Take this node out of its cluster for good; its name is retired.
    Leave {
        /// The user to ask as (`administrator`).
        #[arg(long, env = "WARREN_USER", default_value = "guest")]
        user: String,
        /// Its password.
        #[arg(long, env = "WARREN_PASSWORD", default_value = "guest", hide_env_values = true)]
        password: Secret,
    },
    /// Take member NODE, which is down, out of the cluster for good; its name is retired.
    Forget {
        /// The member's name.
        node: String,
        /// The user to ask as (`administrator`).
        #[arg(long, env = "WARREN_USER", default_value = "guest")]
        user: String,
        /// Its password.
        #[arg(long, env = "WARREN_PASSWORD", default_value = "guest", hide_env_values = true)]
        password: Secret,
    },
}

/// A secret given on the command line: never printed by `Debug`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The config file's shape. Every key is optional; unknown keys are refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// As `--amqp-listen`.
    pub amqp_listen: Option<Listen>,
    /// As `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// As `--management-listen`.
    pub management_listen: Option<SocketAddr>,
    /// Host names (besides IP addresses and `localhost`) the management API answers to: the
    /// names clients use to reach it. Any other name in `Host` is refused (DNS rebinding).
    pub management_hosts: Option<Vec<String>>,
    /// As `--amqps-listen`.
    pub amqps_listen: Option<SocketAddr>,
    /// As `--quic-listen`.
    pub quic_listen: Option<SocketAddr>,
    /// `[tls]`: certificate, key, optional client CA.
    pub tls: Option<TlsConfig>,
    /// As `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// As `--log-format`.
    pub log_format: Option<LogFormat>,
    /// Connection limits offered to clients.
    #[serde(default)]
    pub amqp: AmqpLimits,
    /// Users; when given, they replace the default guest user.
    pub users: Option<Vec<access::UserConfig>>,
    /// `[[permissions]]`: what each user may do in each vhost.
    #[serde(default)]
    pub permissions: Vec<access::PermissionConfig>,
    /// `[[topic-permissions]]`: the routing keys each user may use with a topic exchange.
    #[serde(default)]
    pub topic_permissions: Vec<access::TopicPermissionConfig>,
    /// Queue policies: arguments applied by queue-name pattern.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// `[[vhosts]]`: vhosts besides `/`, which always exists.
    #[serde(default)]
    pub vhosts: Vec<VHostConfig>,
    /// `[storage]`: durability and disk limits.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[limits]`: the memory alarm.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[[plugins.exchange]]` and `[[plugins.retry]]`: WebAssembly components to load.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// `[cluster]`: this node's part in a cluster.
    pub cluster: Option<cluster::ClusterConfig>,
}

/// `[storage]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageConfig {
    /// When stored messages are fsynced.
    pub fsync: Option<FsyncMode>,
    /// For `fsync = "interval"`: milliseconds between syncs.
    pub fsync_interval_ms: Option<u64>,
    /// Segment file size in octets, or with a unit ("16MiB").
    pub segment_size: Option<Size>,
    /// Publishers are blocked while free disk space is below this (octets, or "50MB").
    pub disk_free_limit: Option<Size>,
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Listen {
    /// Listen here.
    On(SocketAddr),
    /// No listener.
    Off,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::On)
            .map_err(|_| format!("'{s}' is neither an address such as 0.0.0.0:5672 nor off"))
    }
}

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(s: String) -> Result<Listen, String> {
        s.parse()
    }
}

/// `[limits]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Publishers are blocked while the broker's resident memory is above this: a fraction
    /// of the machine's memory (0.6), or a size ("2GiB").
    pub memory_high_watermark: Option<Watermark>,
    /// Open AMQP connections at most (RabbitMQ's `connection_max`); unlimited when absent.
    pub max_connections: Option<usize>,
    /// Queues at most (RabbitMQ's vhost `max-queues`); unlimited when absent.
    pub max_queues: Option<usize>,
    /// Exchanges declared by clients at most (RabbitMQ 4's `cluster_exchange_limit`).
    pub max_exchanges: Option<usize>,
    /// Bindings at most.
    pub max_bindings: Option<usize>,
    /// Consumers per channel at most (RabbitMQ's `consumer_max_per_channel`).
    pub max_consumers_per_channel: Option<usize>,
    /// Consumers in all at most.
    pub max_consumers: Option<usize>,
    /// Publishes and acknowledgements one transaction holds at most (65 536 when absent).
    pub max_tx_operations: Option<usize>,
    /// Body octets one transaction holds at most (256 MiB when absent).
    pub max_tx_bytes: Option<Size>,
}

/// RabbitMQ's `vm_memory_high_watermark`: relative to the memory available, or absolute.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Watermark {
    /// Octets: an integer or a size with a unit. Tried first, so that an integer is octets.
    Absolute(Size),
    /// A fraction of the machine's (or the cgroup's) memory: a float such as 0.6.
    Relative(f64),
}

impl Default for Watermark {
    fn default() -> Self {
        // RabbitMQ's default.
        Watermark::Relative(0.6)
    }
}

/// Limits that are not per connection, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LimitSettings {
    /// When the memory alarm is raised.
    pub memory_high_watermark: Watermark,
    /// Connection and queue counts.
    pub counts: warren_core::broker::Limits,
}

/// When the store fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncMode {
    /// Publisher confirms for stored messages wait for the fsync that covers them (group
    /// commit: one fsync for every message written while the previous one ran).
    #[default]
    BeforeConfirm,
    /// fsync every `fsync-interval-ms`; confirms go out once a message is written.
    Interval,
    /// Leave it to the OS (survives a broker crash, not a power cut).
    Never,
}

/// A size in octets: a number, or a string with a unit (kB, MB, GB, KiB, MiB, GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeText")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeText> for Size {
    type Error = String;

    fn try_from(v: SizeText) -> Result<Size, String> {
        let text = match v {
            SizeText::Number(n) => return Ok(Size(n)),
            SizeText::Text(t) => t,
        };
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| format!("'{text}' is not a size such as 50MB"))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            other => {
                return Err(format!("unknown unit '{other}' in '{text}' (use kB, MB, GB, KiB, MiB or GiB)"));
            }
        };
        n.checked_mul(factor).map(Size).ok_or_else(|| format!("'{text}' is too large"))
    }
}

/// Storage settings, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageSettings {
    /// When to fsync.
    pub fsync: FsyncMode,
    /// Time between syncs for [`FsyncMode::Interval`].
    pub fsync_interval: std::time::Duration,
    /// Segment file size.
    pub segment_size: usize,
    /// Free disk space below which publishers are blocked.
    pub disk_free_limit: u64,
    /// Skip damaged records at recovery instead of refusing to start.
    pub salvage: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            fsync: FsyncMode::BeforeConfirm,
            fsync_interval: std::time::Duration::from_millis(200),
            segment_size: 16 << 20,
            // RabbitMQ's default.
            disk_free_limit: 50_000_000,
            salvage: false,
        }
    }
}

/// `[[vhosts]]`: a vhost, a namespace of exchanges and queues a connection names in
/// connection.open.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VHostConfig {
    /// What connection.open and the management API call it.
    pub name: String,
    /// Connections it takes at once (RabbitMQ's vhost limit `max-connections`).
    pub max_connections: Option<usize>,
    /// Queues it holds at most (`max-queues`; `[limits] max-queues` otherwise).
    pub max_queues: Option<usize>,
}

/// `[[policies]]`: RabbitMQ-style queue policy. The queue's own `x-` arguments win.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicyConfig {
    /// Name, for errors and logs.
    pub name: String,
    /// The vhost whose queues it applies to, as RabbitMQ's policies belong to one vhost;
    /// `/` when not given.
    pub vhost: Option<String>,
    /// Regular expression over queue names (unanchored, as in RabbitMQ).
    pub pattern: String,
    /// Higher wins when several policies match.
    #[serde(default)]
    pub priority: i64,
    /// As `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// As `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// As `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// As `x-expires`, milliseconds.
    pub expires: Option<u64>,
    /// As `x-max-length`.
    pub max_length: Option<u64>,
    /// As `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// As `x-overflow`.
    pub overflow: Option<String>,
    /// As `x-delivery-limit`.
    pub delivery_limit: Option<u64>,
}

impl PolicyConfig {
    fn build(self) -> Result<Policy, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("policy '{}': {why}", self.name));
        let pattern =
            warren_core::permissions::compile(&self.pattern).map_err(|e| bad(format!("bad pattern: {e}")))?;
        let int = |v: u64| FieldValue::I64(i64::try_from(v).unwrap_or(i64::MAX));
        let mut def: Vec<(&str, FieldValue)> = Vec::new();
        let strings = [
            ("dead-letter-exchange", &self.dead_letter_exchange),
            ("dead-letter-routing-key", &self.dead_letter_routing_key),
            ("overflow", &self.overflow),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                def.push((k, FieldValue::str(v)));
            }
        }
        let numbers = [
            ("message-ttl", self.message_ttl),
            ("expires", self.expires),
            ("max-length", self.max_length),
            ("max-length-bytes", self.max_length_bytes),
            ("delivery-limit", self.delivery_limit),
        ];
        for (k, v) in numbers {
            if let Some(v) = v {
                def.push((k, int(v)));
            }
        }
        let arguments = warren_core::policy::arguments_from(&def).map_err(bad)?;
        // Policies carry no retry policy, so no plugin policies are needed to check them.
        QueueArgs::parse(&arguments, &Default::default()).map_err(|e| bad(e.text))?;
        let vhost = self.vhost.unwrap_or_else(|| "/".into());
        Ok(Policy { name: self.name, vhost, pattern, priority: self.priority, arguments })
    }
}

/// `[amqp]`: what connection.tune offers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AmqpLimits {
    /// Largest frame in octets (4096 or more).
    pub frame_max: Option<u32>,
    /// Highest channel number.
    pub channel_max: Option<u16>,
    /// Heartbeat interval in seconds; 0 disables.
    pub heartbeat: Option<u16>,
    /// Milliseconds a socket write may make no progress before the connection is closed.
    pub write_timeout_ms: Option<u64>,
    /// Milliseconds a consumer's delivery may wait for its ack (RabbitMQ's `consumer_timeout`);
    /// 0 turns it off.
    pub consumer_timeout_ms: Option<u64>,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid; the message names the line and the key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

/// Everything the server needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// AMQP over TCP listen address.
    pub amqp_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Management HTTP API listen address; `None` turns it off.
    pub management_listen: Option<SocketAddr>,
    /// Host names the management API answers to besides IP addresses and `localhost`.
    pub management_hosts: Vec<String>,
    /// AMQPS listen address and TLS configuration; `None` without `[tls]`.
    pub amqps: Option<(SocketAddr, TlsConfig)>,
    /// QUIC listen address (UDP); `None` turns QUIC off.
    pub quic_listen: Option<SocketAddr>,
    /// Prometheus `/metrics` listen address; `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Queue policies.
    pub policies: Vec<Policy>,
    /// Vhosts besides `/`.
    pub vhosts: Vec<String>,
    /// Vhosts' own limits, by name.
    pub vhost_limits: std::collections::HashMap<String, warren_core::broker::VHostLimits>,
    /// Connection limits and timeouts.
    pub connection: ConnectionConfig,
    /// How long a consumer's delivery may wait for its ack, unless its queue or it says
    /// otherwise; `None` for no limit.
    pub consumer_timeout: Option<std::time::Duration>,
    /// Users allowed to log in.
    pub users: Vec<User>,
    /// Who may open which vhost and do what there.
    pub access: std::sync::Arc<warren_core::permissions::Access>,
    /// Durability and disk limits.
    pub storage: StorageSettings,
    /// The memory alarm.
    pub limits: LimitSettings,
    /// Plugin components to load.
    pub plugins: PluginSettings,
    /// The cluster this node is a member of; `None` for a single node.
    pub cluster: Option<cluster::ClusterSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            amqp_listen: Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 5672))),
            data_dir: PathBuf::from("./warren-data"),
            management_listen: Some(SocketAddr::from(([127, 0, 0, 1], 15672))),
            management_hosts: Vec::new(),
            metrics_listen: Some(SocketAddr::from(([0, 0, 0, 0], 15692))),
            amqps: None,
            quic_listen: Some(SocketAddr::from(([0, 0, 0, 0], 5671))),
            log_format: LogFormat::Text,
            policies: Vec::new(),
            vhosts: Vec::new(),
            vhost_limits: Default::default(),
            connection: ConnectionConfig::default(),
            consumer_timeout: Some(warren_core::broker::DEFAULT_CONSUMER_TIMEOUT),
            users: vec![User::guest()],
            access: Default::default(),
            storage: StorageSettings::default(),
            limits: LimitSettings::default(),
            plugins: PluginSettings::default(),
            cluster: None,
        }
    }
}

impl Settings {
    /// Resolves flags over the config file over defaults.
    pub fn load(cli: &Cli) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Settings::resolve(cli, file)
    }

    fn resolve(cli: &Cli, file: FileConfig) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        if let Some(a) = cli.amqp_listen.or(file.amqp_listen) {
            s.amqp_listen = match a {
                Listen::On(addr) => Some(addr),
                Listen::Off => None,
            };
        }
        if let Some(d) = cli.data_dir.clone().or(file.data_dir) {
            s.data_dir = d;
        }
        if let Some(m) = cli.management_listen.or(file.management_listen) {
            s.management_listen = Some(m);
        }
        if let Some(hosts) = file.management_hosts {
            if let Some(bad) = hosts.iter().find(|h| h.is_empty() || h.contains([':', '/', ' '])) {
                return Err(ConfigError::Invalid(format!(
                    "management-hosts: '{bad}' is not a host name (no port, scheme or path)"
                )));
            }
            s.management_hosts = hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
        }
        if let Some(m) = cli.metrics_listen.or(file.metrics_listen) {
            s.metrics_listen = Some(m);
        }
        if let Some(f) = cli.log_format.or(file.log_format) {
            s.log_format = f;
        }
        if let Some(q) = cli.quic_listen.or(file.quic_listen) {
            s.quic_listen = Some(q);
        }
        let amqps_listen = cli.amqps_listen.or(file.amqps_listen);
        s.amqps = match (file.tls, amqps_listen) {
            (Some(tls), addr) => Some((addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 5671))), tls)),
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "amqps-listen needs a [tls] section with cert and key".into(),
                ));
            }
            (None, None) => None,
        };
        if s.amqp_listen.is_none() && s.amqps.is_none() {
            return Err(ConfigError::Invalid(
                "amqp-listen = off needs AMQPS (a [tls] section): no client could connect otherwise".into(),
            ));
        }
        s.policies = file.policies.into_iter().map(PolicyConfig::build).collect::<Result<_, _>>()?;
        for v in file.vhosts {
            // connection.open carries the name as a short string.
            if v.name.is_empty() || v.name.len() > 255 {
                return Err(ConfigError::Invalid(format!(
                    "vhost name '{}' must be 1 to 255 bytes long",
                    v.name
                )));
            }
            // `/` always exists; an entry for it only gives it limits.
            if s.vhosts.contains(&v.name) || (v.name == "/" && s.vhost_limits.contains_key("/")) {
                return Err(ConfigError::Invalid(format!("vhost '{}' is declared twice", v.name)));
            }
            let limits = warren_core::broker::VHostLimits {
                max_connections: v.max_connections,
                max_queues: v.max_queues,
            };
            if v.name == "/" {
                s.vhost_limits.insert(v.name, limits);
                continue;
            }
            if limits != Default::default() {
                s.vhost_limits.insert(v.name.clone(), limits);
            }
            s.vhosts.push(v.name);
        }
        if let Some(f) = file.amqp.frame_max {
            if f < warren_codec::FRAME_MIN_SIZE {
                return Err(ConfigError::Invalid(format!(
                    "amqp.frame-max = {f} is below the AMQP minimum 4096"
                )));
            }
            s.connection.frame_max = f;
        }
        if let Some(c) = file.amqp.channel_max {
            s.connection.channel_max = c;
        }
        if let Some(h) = file.amqp.heartbeat {
            s.connection.heartbeat = h;
        }
        if let Some(ms) = file.amqp.consumer_timeout_ms {
            s.consumer_timeout = (ms > 0).then(|| std::time::Duration::from_millis(ms));
        }
        if let Some(ms) = file.amqp.write_timeout_ms {
            if ms == 0 {
                return Err(ConfigError::Invalid("amqp.write-timeout-ms must be above 0".into()));
            }
            s.connection.write_timeout = std::time::Duration::from_millis(ms);
        }
        s.storage.salvage = cli.salvage_storage;
        let st = file.storage;
        if let Some(f) = st.fsync {
            s.storage.fsync = f;
        }
        if let Some(ms) = st.fsync_interval_ms {
            if ms == 0 {
                return Err(ConfigError::Invalid("storage.fsync-interval-ms must be above 0".into()));
            }
            s.storage.fsync_interval = std::time::Duration::from_millis(ms);
        }
        if let Some(Size(n)) = st.segment_size {
            if !(64 << 10..=1 << 30).contains(&n) {
                return Err(ConfigError::Invalid(format!(
                    "storage.segment-size = {n} is outside 64KiB..1GiB"
                )));
            }
            s.storage.segment_size = n as usize;
        }
        if let Some(Size(n)) = st.disk_free_limit {
            s.storage.disk_free_limit = n;
        }
        if let Some(w) = file.limits.memory_high_watermark {
            if let Watermark::Relative(f) = w
                && !(f > 0.0 && f <= 1.0)
            {
                return Err(ConfigError::Invalid(format!(
                    "limits.memory-high-watermark = {f} is not a fraction in (0, 1] or a size"
                )));
            }
            s.limits.memory_high_watermark = w;
        }
        s.limits.counts.max_connections = file.limits.max_connections;
        s.limits.counts.max_queues = file.limits.max_queues;
        s.limits.counts.max_exchanges = file.limits.max_exchanges;
        s.limits.counts.max_bindings = file.limits.max_bindings;
        s.limits.counts.max_consumers_per_channel = file.limits.max_consumers_per_channel;
        s.limits.counts.max_consumers = file.limits.max_consumers;
        s.limits.counts.max_tx_operations = file.limits.max_tx_operations;
        s.limits.counts.max_tx_bytes = file.limits.max_tx_bytes.map(|Size(n)| n);
        s.plugins = file.plugins.build()?;
        if let Some(a) = s.plugins.adapters.iter().find(|a| a.tls_listen.is_some())
            && s.amqps.is_none()
        {
            return Err(ConfigError::Invalid(format!(
                "plugins.adapter '{}': tls-listen needs a [tls] section with cert and key",
                a.plugin.name
            )));
        }
        s.cluster = file.cluster.map(cluster::ClusterConfig::build).transpose()?;
        if let Some(c) = &s.cluster {
            c.check_transport(s.amqps.as_ref().map(|(_, t)| t))?;
        }
        let (users, access) = access::build(file.users, file.permissions, file.topic_permissions, &s.vhosts)?;
        (s.users, s.access) = (users, std::sync::Arc::new(access));
        Ok(s)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
}

#[cfg(test)]
mod tests;
