//! Publish+consume throughput and latency over TCP, TLS and QUIC, with the same small client
//! (`warren_examples::quic::AmqpClient`) on each: `cargo bench -p warren --bench transports`.
//!
//! First on plain loopback; then, where the kernel has `sch_netem`, inside a network namespace
//! whose loopback delays every packet 25 ms (50 ms round trip) and drops 1%.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use warren::config::Settings;
use warren::server::Server;
use warren::tls::TlsConfig;
use warren_examples::quic::{AmqpClient, AmqpOverQuic, connect};

const THROUGHPUT_MESSAGES: usize = 20_000;
const LATENCY_SAMPLES: usize = 500;

#[tokio::main]
async fn main() {
    let child = std::env::args().any(|a| a == "--netem-child");
    let label = if child { "1% loss, 50 ms RTT" } else { "loopback" };
    run_all(label).await;
    if child {
        return;
    }
    match netem_namespace() {
        Ok(ns) => {
            let exe = std::env::current_exe().expect("exe");
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(exe)
                .arg("--netem-child")
                .status();
            let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
            if !status.is_ok_and(|s| s.success()) {
                println!("netem run failed");
            }
        }
        Err(why) => println!("\n1% loss, 50 ms RTT: skipped ({why})"),
    }
}

/// A namespace whose loopback has netem delay and loss, or why there cannot be one.
fn netem_namespace() -> Result<String, String> {
    let ns = format!("warren-bench-{}", std::process::id());
    let run = |args: &[&str]| -> Result<(), String> {
        let out = std::process::Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    run(&["netns", "add", &ns])?;
    let setup = run(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]).and_then(|()| {
        run(&[
            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "25ms",
            "loss", "1%",
        ])
    });
    if let Err(e) = setup {
        let _ = run(&["netns", "del", &ns]);
        return Err(format!("netem unavailable: {e}"));
    }
    Ok(ns)
}

async fn run_all(label: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = self_signed(dir.path());
    let tls = TlsConfig {
        cert: cert.clone(),
        key: dir.path().join("key.pem"),
        ca: None,
        fail_if_no_peer_cert: false,
    };
    let settings = Settings {
        amqp_listen: Some("127.0.0.1:0".parse().expect("addr")),
        amqps: Some(("127.0.0.1:0".parse().expect("addr"), tls)),
        quic_listen: Some("127.0.0.1:0".parse().expect("addr")),
        management_listen: None,
        metrics_listen: None,
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let server = Server::bind(&settings).await.expect("bind");
    let (tcp, tls_addr, quic) = (
        server.local_addr().expect("tcp"),
        server.amqps_addr().expect("tls"),
        server.quic_addr().expect("quic"),
    );
    tokio::spawn(server.run(std::future::pending()));

    println!("\n{label}: {THROUGHPUT_MESSAGES} x 16 B through one consumer; latency of publish -> delivery");
    println!("{:<6} {:>12} {:>10} {:>10}", "", "msg/s", "p50 µs", "p99 µs");
    let (p, c) = (tcp_client(tcp).await, tcp_client(tcp).await);
    report("TCP", p, c).await;
    let (p, c) = (tls_client(tls_addr, &cert).await, tls_client(tls_addr, &cert).await);
    report("TLS", p, c).await;
    let url = format!("quic://localhost:{}", quic.port());
    let conn = connect(&url, &cert).await.expect("QUIC");
    let (p, c) = (
        AmqpOverQuic::open(&conn, "guest", "guest").await,
        AmqpOverQuic::open(&conn, "guest", "guest").await,
    );
    report("QUIC", p.expect("producer"), c.expect("consumer")).await;

    println!("\n{label}: latency on one channel while another channel of the same connection drains a");
    println!("{HOL_BACKLOG} x 64 KiB backlog (median of {HOL_ROUNDS} rounds)");
    println!("TCP, both channels on one connection:    {:>8.1} ms", hol_tcp(tcp).await);
    println!("QUIC, each channel on its own stream:    {:>8.1} ms", hol_quic(&conn).await);
}

const HOL_BACKLOG: usize = 256;
const HOL_ROUNDS: usize = 5;

/// Publishes the backlog to `hol-bulk` then one probe to `hol-probe`; returns when it was sent.
async fn publish_backlog_then_probe<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    p: &mut AmqpClient<R, W>,
) -> Instant {
    let bulk = vec![b'b'; 64 * 1024];
    for _ in 0..HOL_BACKLOG {
        p.publish("hol-bulk", &bulk).await.expect("publish");
    }
    let sent = Instant::now();
    p.publish("hol-probe", b"probe").await.expect("publish");
    sent
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// TCP: channels 2 (bulk) and 3 (probe) share the one byte stream, so the probe waits for every
/// backlog byte queued before it.
async fn hol_tcp(addr: SocketAddr) -> f64 {
    let mut producer = tcp_client(addr).await;
    let mut c = tcp_client(addr).await;
    for q in ["hol-bulk", "hol-probe"] {
        c.declare(q).await.expect("declare");
    }
    c.open_channel(2).await.expect("channel 2");
    c.consume("hol-bulk").await.expect("consume");
    c.open_channel(3).await.expect("channel 3");
    c.consume("hol-probe").await.expect("consume");
    let mut rounds = Vec::new();
    for _ in 0..HOL_ROUNDS {
        let sent = publish_backlog_then_probe(&mut producer).await;
        let mut bulk_seen = 0;
        let mut probe_at = None;
        while bulk_seen < HOL_BACKLOG || probe_at.is_none() {
            if let warren_codec::Frame::Method { channel, method: warren_codec::Method::BasicDeliver(_) } =
                c.frame().await.expect("frame")
            {
                match channel {
                    3 => probe_at = Some(sent.elapsed()),
                    _ => bulk_seen += 1,
                }
            }
        }
        rounds.push(probe_at.unwrap_or_default().as_secs_f64() * 1000.0);
    }
    median(rounds)
}

/// QUIC: channel 2 (bulk) and channel 3 (probe) on their own streams of one AMQP connection; a
/// task drains the bulk stream while the probe is read from its own.
async fn hol_quic(conn: &quinn::Connection) -> f64 {
    let mut producer = AmqpOverQuic::open(conn, "guest", "guest").await.expect("producer");
    let mut control = AmqpOverQuic::open(conn, "guest", "guest").await.expect("consumer");
    for q in ["hol-bulk", "hol-probe"] {
        control.declare(q).await.expect("declare");
    }
    let mut bulk = control.open_channel_stream(conn, 2).await.expect("bulk stream");
    bulk.consume("hol-bulk").await.expect("consume");
    let mut probe = control.open_channel_stream(conn, 3).await.expect("probe stream");
    probe.consume("hol-probe").await.expect("consume");
    let drain = tokio::spawn(async move {
        for _ in 0..HOL_BACKLOG * HOL_ROUNDS {
            bulk.next_delivery().await.expect("bulk");
        }
    });
    let mut rounds = Vec::new();
    for _ in 0..HOL_ROUNDS {
        let sent = publish_backlog_then_probe(&mut producer).await;
        probe.next_delivery().await.expect("probe");
        rounds.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = drain.await;
    median(rounds)
}

fn self_signed(dir: &Path) -> PathBuf {
    let signed = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.join("key.pem"), signed.signing_key.serialize_pem()).expect("key");
    std::fs::write(dir.join("cert.pem"), signed.cert.pem()).expect("cert");
    dir.join("cert.pem")
}

async fn tcp_client(
    addr: SocketAddr,
) -> AmqpClient<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf> {
    let s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    s.set_nodelay(true).expect("nodelay");
    let (r, w) = s.into_split();
    AmqpClient::handshake(r, w, "guest", "guest").await.expect("handshake")
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_client(
    addr: SocketAddr,
    cert: &Path,
) -> AmqpClient<tokio::io::ReadHalf<TlsStream>, tokio::io::WriteHalf<TlsStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("pem") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS");
    let (r, w) = tokio::io::split(tls);
    AmqpClient::handshake(r, w, "guest", "guest").await.expect("handshake")
}

/// Throughput through a consumer, then publish -> delivery latency, one line per transport.
async fn report<R, W>(label: &str, mut producer: AmqpClient<R, W>, mut consumer: AmqpClient<R, W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let queue = format!("bench-{}", label.to_lowercase());
    consumer.declare(&queue).await.expect("declare");
    consumer.consume(&queue).await.expect("consume");
    let body = [b'x'; 16];
    let started = Instant::now();
    for _ in 0..THROUGHPUT_MESSAGES {
        producer.publish(&queue, &body).await.expect("publish");
    }
    for _ in 0..THROUGHPUT_MESSAGES {
        consumer.next_delivery().await.expect("delivery");
    }
    let rate = THROUGHPUT_MESSAGES as f64 / started.elapsed().as_secs_f64();
    let mut samples: Vec<Duration> = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let t = Instant::now();
        producer.publish(&queue, &body).await.expect("publish");
        consumer.next_delivery().await.expect("delivery");
        samples.push(t.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize].as_micros();
    println!("{label:<6} {rate:>12.0} {:>10} {:>10}", pct(0.50), pct(0.99));
}
