//! AMQPS: a real client over TLS, with and without a client certificate, and EXTERNAL login.

mod common;

use std::path::{Path, PathBuf};

use common::TestBroker;
use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use warren::tls::TlsConfig;
use warren_core::auth::User;

/// A CA, a server certificate for localhost, and client certificates signed by the CA.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Warren test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, ca_key);
        let pki = Pki { dir, ca_pem: ca_cert.pem() };
        std::fs::write(pki.path("ca.pem"), &pki.ca_pem).expect("write");
        pki.issue(&issuer, "server", "localhost", vec!["localhost".into(), "127.0.0.1".into()]);
        for cn in ["alice", "mallory"] {
            pki.issue(&issuer, cn, cn, vec![]);
        }
        pki
    }

    fn issue(&self, issuer: &Issuer<'_, KeyPair>, file: &str, cn: &str, names: Vec<String>) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, issuer).expect("sign");
        std::fs::write(self.path(&format!("{file}.pem")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem()).expect("write");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self, fail_if_no_peer_cert: bool) -> TlsConfig {
        TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            ca: Some(self.path("ca.pem")),
            fail_if_no_peer_cert,
        }
    }

    fn client(&self, who: Option<&str>) -> OwnedTLSConfig {
        let read = |p: PathBuf| std::fs::read(p).expect("read");
        let identity = who.map(|cn| OwnedIdentity::PKCS8 {
            pem: read(self.path(&format!("{cn}.pem"))),
            key: read(self.path(&format!("{cn}.key"))),
        });
        OwnedTLSConfig { identity, cert_chain: Some(self.ca_pem.clone()) }
    }
}

async fn tls_broker(pki: &Pki, fail_if_no_peer_cert: bool) -> TestBroker {
    let tls = pki.server(fail_if_no_peer_cert);
    TestBroker::start_with(move |s| {
        s.amqps = Some(("127.0.0.1:0".parse().expect("addr"), tls));
        s.users = vec![
            User::guest(),
            User {
                name: "alice".into(),
                password: warren_core::password::Password::plain("unused"),
                loopback_only: false,
                tags: Vec::new(),
                limits: Default::default(),
            },
        ];
    })
    .await
}

async fn connect(b: &TestBroker, pki: &Pki, who: Option<&str>, query: &str) -> lapin::Result<Connection> {
    let port = b.amqps.expect("amqps on").port();
    let uri = format!("amqps://guest:guest@localhost:{port}/%2f{query}");
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_with_config(&uri, ConnectionProperties::default(), pki.client(who), runtime).await
}

async fn round_trip(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"over tls",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let m =
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("get").expect("message");
    assert_eq!(m.delivery.data, b"over tls");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_a_certificate_logs_in_with_a_password() {
    let pki = Pki::new();
    let b = tls_broker(&pki, false).await;
    let conn = connect(&b, &pki, None, "").await.expect("TLS connection");
    round_trip(&conn, "tls-plain").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_logs_in_with_external_as_its_common_name() {
    let pki = Pki::new();
    let b = tls_broker(&pki, true).await;
    let conn = connect(&b, &pki, Some("alice"), "?auth_mechanism=external").await.expect("EXTERNAL login");
    round_trip(&conn, "tls-external").await;
    // A certificate the CA signed, for a user the broker does not have.
    let e = connect(&b, &pki, Some("mallory"), "?auth_mechanism=external").await.expect_err("refused");
    assert!(matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 403), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_if_no_peer_cert_refuses_clients_without_one() {
    let pki = Pki::new();
    let b = tls_broker(&pki, true).await;
    assert!(connect(&b, &pki, None, "").await.is_err(), "a client without a certificate got in");
    let ok =
        connect(&b, &pki, Some("alice"), "").await.expect("with a certificate, password login works too");
    round_trip(&ok, "tls-mutual").await;
}

#[test]
fn missing_certificate_files_are_named() {
    let cfg = TlsConfig {
        cert: Path::new("/nonexistent/cert.pem").into(),
        key: "k.pem".into(),
        ca: None,
        fail_if_no_peer_cert: false,
    };
    let e = warren::tls::server_config(&cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("/nonexistent/cert.pem"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_deliveries_over_tls_all_arrive() {
    // Enough traffic to fill socket buffers, where a TLS stream holds records until flushed.
    use futures_lite::StreamExt;
    let pki = Pki::new();
    let b = tls_broker(&pki, false).await;
    let conn = connect(&b, &pki, None, "").await.expect("TLS connection");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("tls-many".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    for _ in 0..20_000 {
        ch.basic_publish(
            "".into(),
            "tls-many".into(),
            BasicPublishOptions::default(),
            &[b'x'; 64],
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer =
        ch.basic_consume("tls-many".into(), "".into(), opts, FieldTable::default()).await.expect("consume");
    let all = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        for _ in 0..20_000 {
            consumer.next().await.expect("delivery").expect("ok");
        }
    })
    .await;
    assert!(all.is_ok(), "deliveries stalled over TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn quic_asks_for_client_certificates_as_amqps_does() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("data");
    let tls = pki.server(true);
    let data_dir = data.path().to_path_buf();
    let b = TestBroker::start_with(move |s| {
        s.amqps = Some(("127.0.0.1:0".parse().expect("addr"), tls));
        s.quic_listen = Some("127.0.0.1:0".parse().expect("addr"));
        s.data_dir = data_dir;
    })
    .await;
    let addr = b.quic.as_ref().expect("quic on").0;
    let ca = pki.path("ca.pem");
    let open = |identity: Option<(PathBuf, PathBuf)>| {
        let ca = ca.clone();
        async move {
            let ids = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            let endpoint = warren::quic::client_endpoint_as(&ca, ids)?;
            let quic = endpoint.connect(addr, "localhost")?.await?;
            let mut amqp = warren_examples::quic::AmqpOverQuic::open(&quic, "guest", "guest").await?;
            amqp.declare("over-quic-mtls").await?;
            anyhow::Ok(())
        }
    };
    // Without a certificate: QUIC is no way around fail-if-no-peer-cert.
    let refused = tokio::time::timeout(std::time::Duration::from_secs(10), open(None)).await;
    assert!(matches!(refused, Ok(Err(_))), "a client without a certificate is refused: {refused:?}");
    let alice = Some((pki.path("alice.pem"), pki.path("alice.key")));
    open(alice).await.expect("a client with a certificate from the CA gets in");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_only_broker_has_no_plain_listener() {
    let pki = Pki::new();
    let tls = pki.server(true);
    let b = TestBroker::start_with(move |s| {
        s.amqp_listen = None;
        s.amqps = Some(("127.0.0.1:0".parse().expect("addr"), tls));
    })
    .await;
    assert_eq!(b.addr.port(), 0, "no plain AMQP listener");
    let conn = connect(&b, &pki, Some("alice"), "").await.expect("AMQPS with a certificate");
    round_trip(&conn, "tls-only").await;
}
