//! `warren`: starts a single-node broker.

use anyhow::Context;
use clap::Parser;
use tracing::info;
use tracing_subscriber::EnvFilter;
use warren::config::{Cli, Command, LogFormat, Settings};
use warren::server::Server;

/// glibc's malloc serialises threads on its arena locks: a message is allocated by the
/// publisher's connection task and freed by the consumer's, on the other core, and once
/// decoding and encoding ran outside the broker lock the arena lock became a futex storm
/// (375 000 futex calls in 2 s). mimalloc frees across threads without a lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Bridge { listen, to, ca }) = &cli.command {
        tracing_subscriber::fmt().with_env_filter(EnvFilter::new("info")).with_writer(std::io::stderr).init();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        return warren::bridge::run(listener, to, ca).await;
    }
    if let Some(Command::Ctl(args)) = &cli.command {
        println!("{}", warren::ctl::run(args)?);
        return Ok(());
    }
    if let Some(Command::Cluster { action }) = &cli.command {
        println!("{}", warren::ctl::cluster(&cli, action)?);
        return Ok(());
    }
    if let Some(Command::HashPassword { password, algorithm }) = &cli.command {
        return hash_password(password.clone().map(|s| s.0), algorithm);
    }
    let settings = Settings::load(&cli)?;
    let shutdown = shutdown_signal()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    let server = Server::bind(&settings).await.with_context(|| match settings.amqp_listen {
        Some(addr) => format!("cannot start the broker (AMQP on {addr})"),
        None => "cannot start the broker".to_string(),
    })?;
    match server.local_addr() {
        Ok(addr) => info!(%addr, "listening for AMQP 0-9-1 over TCP"),
        Err(_) => info!("plain AMQP over TCP is off"),
    }
    if let (Some(addr), Some(cert)) = (server.quic_addr(), server.quic_cert()) {
        info!(%addr, cert = %cert.display(), "listening for AMQP 0-9-1 over QUIC (UDP, ALPN amqp091)");
    }
    if let Some(addr) = server.amqps_addr() {
        info!(%addr, "listening for AMQP 0-9-1 over TLS");
    }
    if let Some(addr) = server.metrics_addr() {
        info!(%addr, "listening for Prometheus scrapes on /metrics");
    }
    if let Some(addr) = server.management_addr() {
        info!(%addr, "listening for the management HTTP API");
    }
    info!(data_dir = %settings.data_dir.display(), "data directory");
    server.run(shutdown).await?;
    info!("stopped");
    Ok(())
}

/// `warren hash-password`: the hash of `password` (or of standard input's first line) under
/// a fresh salt from the OS.
fn hash_password(password: Option<String>, algorithm: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, Read};
    use warren_core::password::{HashAlgorithm, SALT_LEN, hash};
    let algorithm = HashAlgorithm::from_name(algorithm)?;
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    let mut salt = [0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .context("cannot read a salt from /dev/urandom")?;
    println!("{}", hash(algorithm, salt, &password));
    Ok(())
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed now, not when
/// the future is first polled, so a signal during start-up still stops the broker cleanly.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
