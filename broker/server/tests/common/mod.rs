//! Starts a real Warren broker in-process on an ephemeral port.
#![allow(dead_code, missing_docs)]

pub mod cluster;
pub mod lapin_client;
pub mod process;
pub mod proxy;

use std::net::SocketAddr;

use tokio::sync::oneshot;
use warren::config::Settings;
use warren::server::{Server, SharedRef};

/// A running broker; dropping it shuts the broker down.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub management: Option<SocketAddr>,
    pub amqps: Option<SocketAddr>,
    pub quic: Option<(SocketAddr, std::path::PathBuf)>,
    pub metrics: Option<SocketAddr>,
    /// The MQTT adapter's listener, when one is configured.
    pub mqtt: Option<SocketAddr>,
    /// Every protocol adapter's listener, by protocol.
    pub adapters: Vec<(String, SocketAddr)>,
    /// The MQTT adapter's TLS listener, when one is configured.
    pub mqtts: Option<SocketAddr>,
    pub shared: SharedRef,
    /// Every vhost's broker (`shared` is the one of `/`).
    pub node: warren::server::NodeRef,
    /// The resource alarms, to raise one by hand.
    pub alarms: std::sync::Arc<warren::alarms::Alarms>,
    /// The data directory, when the test did not choose one.
    pub data: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestBroker {
        let data = tempfile::tempdir().expect("data dir");
        let mut settings = Settings {
            data_dir: data.path().to_path_buf(),
            // Small segments: a test suite runs dozens of brokers at once.
            storage: warren::config::StorageSettings { segment_size: 1 << 20, ..Default::default() },
            amqp_listen: Some("127.0.0.1:0".parse().expect("addr")),
            management_listen: Some("127.0.0.1:0".parse().expect("addr")),
            metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
            quic_listen: None,
            ..Settings::default()
        };
        tweak(&mut settings);
        let data = (settings.data_dir == data.path()).then_some(data);
        let server = Server::bind(&settings).await.expect("bind");
        // 0.0.0.0:0 when the plain listener is off (a TLS-only broker).
        let addr = server.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let management = server.management_addr();
        let amqps = server.amqps_addr();
        let quic = server.quic_addr().zip(server.quic_cert().map(|p| p.to_path_buf()));
        let metrics = server.metrics_addr();
        let mqtt = server.adapter_addr("mqtt");
        let adapters = server.adapter_addrs();
        let mqtts = server.adapter_tls_addr("mqtt");
        let shared = server.shared();
        let node = server.node();
        let alarms = server.services().alarms.clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
        });
        TestBroker {
            addr,
            management,
            amqps,
            quic,
            metrics,
            mqtt,
            adapters,
            mqtts,
            shared,
            node,
            alarms,
            data,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// amqp URI for the default vhost.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// (ready, unacked, consumers) of a queue, read from the broker model.
    pub fn counts(&self, queue: &str) -> Option<(usize, usize, usize)> {
        warren::server::lock(&self.shared).broker.queue_counts(queue)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server run");
        }
    }

    /// Waits up to `within` for the server to stop on its own; its result if it did.
    pub async fn stopped_within(&mut self, within: std::time::Duration) -> Option<std::io::Result<()>> {
        let t = self.task.as_mut()?;
        let r = tokio::time::timeout(within, t).await.ok()?;
        self.task = None;
        Some(r.expect("server task"))
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A plain HTTP/1.1 request to the management API as guest; returns (status, body).
pub async fn http(b: &TestBroker, method: &str, path: &str) -> (u16, String) {
    let auth = "Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n"; // guest:guest
    let (status, _, body) = http_raw(b.management.expect("management API on"), method, path, auth).await;
    (status, body)
}

/// A request with a JSON `body` to the management API as guest; returns (status, body).
pub async fn http_body(b: &TestBroker, method: &str, path: &str, body: &str) -> (u16, String) {
    http_as(b.management.expect("management API on"), ("guest", "guest"), method, path, body).await
}

/// A request with a JSON `body` to the API at `addr` as `(user, password)`; returns (status,
/// body); status 0 when nothing answered.
pub async fn http_as(
    addr: SocketAddr,
    (user, password): (&str, &str),
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string()))
}

/// A plain HTTP/1.1 request to `addr`; returns (status, body).
pub async fn http_to(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_raw(addr, method, path, "").await;
    (status, body)
}

/// A plain HTTP/1.1 request to `addr` with `headers` (each ending in CRLF) added; returns
/// (status, response headers, body).
pub async fn http_raw(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // A test may send its own Host.
    let host = if headers.to_ascii_lowercase().contains("host:") {
        String::new()
    } else {
        format!("Host: {addr}\r\n")
    };
    let req =
        format!("{method} {path} HTTP/1.1\r\n{host}{headers}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_string(), body.to_string())
}

/// A lapin field table from pairs.
pub fn table(pairs: &[(&str, lapin::types::AMQPValue)]) -> lapin::types::FieldTable {
    let mut t = lapin::types::FieldTable::default();
    for (k, v) in pairs {
        t.insert(lapin::types::ShortString::from(*k), v.clone());
    }
    t
}

/// The reply code a failed lapin call carries, if the broker sent one.
pub fn code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// A lapin long-string value.
pub fn s(v: &str) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongString(v.into())
}

/// Polls `f` until it returns true or two seconds pass.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Publishes with confirms and waits for every ack.
pub async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
    bodies: &[String],
    props: lapin::BasicProperties,
) {
    let mut confirms = Vec::new();
    for body in bodies {
        let c = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                lapin::options::BasicPublishOptions::default(),
                body.as_bytes(),
                props.clone(),
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        let c = c.await.expect("confirm");
        assert!(c.is_ack(), "every publish is acked: {c:?}");
    }
}
