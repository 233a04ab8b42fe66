//! The `warren-perf` command line.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use warren_codec::{FieldTable, FieldValue};
use warren_perf::client::Uri;
use warren_perf::throughput::{self, Scenario};

/// Load for AMQP 0-9-1 brokers: throughput, latency, idle connections.
#[derive(Debug, Parser)]
#[command(name = "warren-perf", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Print one JSON summary line instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Producers and consumers as fast as they go (or at --rate).
    Throughput(Load),
    /// End-to-end latency at a fixed rate: p50, p99, p99.9 from a timestamp in each body.
    Latency {
        #[command(flatten)]
        load: Load,
    },
    /// MQTT: one publisher fanning out to subscribers at QoS 0 or 1 (any MQTT broker).
    Mqtt {
        #[command(flatten)]
        mqtt: MqttArgs,
        /// Seconds to publish.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Subscribers, each getting every message.
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// QoS of publishes and subscriptions: 0 or 1.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        /// Body size in octets (at least 8).
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// QoS 1 publishes unacked at most.
        #[arg(long, default_value_t = 100)]
        window: usize,
    },
    /// MQTT: opens idle connections and reports the broker's memory per connection.
    MqttConnections {
        #[command(flatten)]
        mqtt: MqttArgs,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// The broker's process id, to read its memory from /proc.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Opens idle connections with a channel each and reports the broker's memory per connection.
    Connections {
        /// Broker URI.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        uri: Uri,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// The broker's process id, to read its memory from /proc.
        #[arg(long)]
        pid: Option<u32>,
    },
}

#[derive(Debug, Args)]
struct MqttArgs {
    /// The broker's MQTT listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: std::net::SocketAddr,
    /// User name.
    #[arg(long, default_value = "guest")]
    user: String,
    /// Password.
    #[arg(long, default_value = "guest")]
    password: String,
    /// Speak MQTT 5 rather than 3.1.1.
    #[arg(long)]
    v5: bool,
}

impl MqttArgs {
    fn scenario(self) -> warren_perf::mqtt::Scenario {
        warren_perf::mqtt::Scenario {
            addr: self.addr,
            user: (self.user, self.password),
            qos: 0,
            subscribers: 0,
            size: 16,
            duration: Duration::ZERO,
            window: 1,
            version: if self.v5 { warren_mqtt::Version::V5 } else { warren_mqtt::Version::V311 },
        }
    }
}

#[derive(Debug, Args)]
struct Load {
    /// Broker URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: Uri,
    /// Where producers connect, when not to `--uri` (another member of a cluster: the queues
    /// live where `--uri` declares them).
    #[arg(long)]
    publish_uri: Option<Uri>,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consuming connections.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Body size in octets (at least 8).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Seconds to publish.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Publisher confirms, at most this many unconfirmed per producer.
    #[arg(long, value_name = "WINDOW")]
    confirm: Option<usize>,
    /// Persistent messages into a durable queue.
    #[arg(long)]
    persistent: bool,
    /// Consumers ack automatically.
    #[arg(long, conflicts_with_all = ["prefetch", "multi_ack"])]
    autoack: bool,
    /// Prefetch for manual-ack consumers.
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Manual-ack consumers ack every N deliveries with multiple=true.
    #[arg(long, default_value_t = 1)]
    multi_ack: u32,
    /// Messages per second across all producers (latency mode: required).
    #[arg(long)]
    rate: Option<f64>,
    /// Queue name (with --exchange: the prefix of each consumer's own queue).
    #[arg(long)]
    queue: Option<String>,
    /// Queue arguments, `x-max-length=1000` (integers are sent as integers).
    #[arg(long, value_name = "K=V", num_args = 1..)]
    queue_args: Vec<String>,
    /// Publish through this exchange; each consumer gets its own queue bound with the key.
    #[arg(long, requires = "routing_key")]
    exchange: Option<String>,
    /// The exchange's type.
    #[arg(long, default_value = "topic")]
    exchange_type: String,
    /// Routing (and binding) key for --exchange.
    #[arg(long)]
    routing_key: Option<String>,
}

impl Load {
    fn scenario(self, json: bool) -> anyhow::Result<Scenario> {
        let mut queue_args = FieldTable::new();
        for kv in &self.queue_args {
            let Some((k, v)) = kv.split_once('=') else { bail!("--queue-args takes K=V, not '{kv}'") };
            let value = v.parse::<i64>().map(FieldValue::I64).unwrap_or_else(|_| FieldValue::str(v));
            queue_args.insert(k.to_string(), value);
        }
        let cleanup = self.queue.is_none();
        Ok(Scenario {
            uri: self.uri,
            publish_uri: self.publish_uri,
            producers: self.producers,
            consumers: self.consumers,
            size: self.size,
            duration: Duration::from_secs_f64(self.duration),
            confirm: self.confirm,
            persistent: self.persistent,
            autoack: self.autoack,
            prefetch: self.prefetch,
            multi_ack: self.multi_ack,
            rate: self.rate,
            queue: self.queue.unwrap_or_else(|| format!("warren-perf-{}", std::process::id())),
            queue_args,
            exchange: self.exchange,
            exchange_type: self.exchange_type,
            routing_key: self.routing_key.unwrap_or_default(),
            cleanup,
            progress: !json,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Throughput(load) => {
            report("throughput", &throughput::run(&load.scenario(cli.json)?).await?, cli.json)
        }
        Mode::Latency { load } => {
            if load.rate.is_none() {
                bail!("latency needs --rate: latency at saturation measures queueing, not the broker");
            }
            report("latency", &throughput::run(&load.scenario(cli.json)?).await?, cli.json)
        }
        Mode::Mqtt { mqtt, duration, subscribers, qos, size, window } => {
            let s = warren_perf::mqtt::Scenario {
                duration: Duration::from_secs_f64(duration),
                subscribers,
                qos,
                size,
                window,
                ..mqtt.scenario()
            };
            let summary = warren_perf::mqtt::run(&s).await?;
            if cli.json {
                println!("{}", summary.json());
            } else {
                println!("{}", summary.text());
            }
        }
        Mode::MqttConnections { mqtt, count, pid } => {
            let (opened, per) = warren_perf::mqtt::connections(&mqtt.scenario(), count, pid).await?;
            let per = per.map_or("unknown (give --pid)".into(), |b| format!("{b:.0} octets"));
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"mode": "mqtt-connections", "opened": opened, "per_connection": per})
                );
            } else {
                println!("opened {opened} MQTT connections; broker memory per connection: {per}");
            }
        }
        Mode::Connections { uri, count, pid } => {
            let s = warren_perf::connections::run(&uri, count, pid).await?;
            if cli.json {
                println!("{}", s.json());
            } else {
                let per = s
                    .bytes_per_connection
                    .map_or("unknown (give --pid)".into(), |b| format!("{:.0} octets", b));
                println!("opened {} connections; broker memory per connection: {per}", s.opened);
                if let Some(e) = &s.error {
                    println!("stopped early: {e}");
                }
            }
        }
    }
    Ok(())
}

fn report(mode: &str, s: &throughput::Summary, json: bool) {
    if json {
        println!("{}", s.json(mode));
    } else {
        println!("{}", s.text());
    }
}
