//! The `warren` binary itself: configuration errors, the listener log line, clean shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn warren() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.env_remove("RUST_LOG").env("NO_COLOR", "1");
    c
}

#[test]
fn a_bad_config_file_names_the_key_and_line_and_exits_nonzero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warren.toml");
    std::fs::write(&path, "amqp-listen = \"127.0.0.1:0\"\n\n[amqp]\nhartbeat = 5\n").expect("write");
    let out = warren().arg("--config").arg(&path).arg("--data-dir").arg(dir.path()).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hartbeat") && err.contains("line 4") && err.contains("warren.toml"), "{err}");
}

#[test]
fn starts_from_a_config_file_logs_its_address_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warren.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &path,
        format!(
            "amqp-listen = \"127.0.0.1:0\"\nmanagement-listen = \"127.0.0.1:0\"\nmetrics-listen = \"127.0.0.1:0\"\nquic-listen = \"127.0.0.1:0\"\ndata-dir = {:?}\n",
            data
        ),
    )
    .expect("write");
    let mut child = warren()
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("a log line").expect("utf-8");
        if line.contains("listening for AMQP") {
            let at = line.find("addr=").expect("addr field") + 5;
            break line[at..].split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    assert!(data.is_dir(), "data dir not created");
    let mut sock = std::net::TcpStream::connect(&addr).expect("connect");
    std::io::Write::write_all(&mut sock, b"AMQP\x00\x00\x09\x01").expect("header");
    let mut first = [0u8; 7];
    std::io::Read::read_exact(&mut sock, &mut first).expect("connection.start");
    assert_eq!(first[0], 1, "expected a method frame");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "warren did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

#[test]
fn sighup_without_plugins_is_logged_and_the_broker_serves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = warren()
        .args(["--amqp-listen", "127.0.0.1:0", "--management-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut next = || lines.next().expect("a log line").expect("utf-8");
    let addr = loop {
        let line = next();
        if let Some(at) = line.find("addr=").filter(|_| line.contains("listening for AMQP")) {
            break line[at + 5..].split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    while !next().contains("nothing to reload") {}
    assert!(child.try_wait().expect("wait").is_none(), "SIGHUP stopped the broker");
    std::net::TcpStream::connect(&addr).expect("still accepting connections");
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "warren did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hash_password_prints_a_rabbitmq_hash_that_verifies_from_an_argument_or_stdin() {
    use std::io::Write;
    use warren_core::password::{HashAlgorithm, Password};
    let out = warren().args(["hash-password", "s3cret pass"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let p = Password::from_hash(HashAlgorithm::Sha256, printed.trim()).expect("a sha256 hash");
    assert!(p.verify("s3cret pass") && !p.verify("s3cret"));
    let again = warren().args(["hash-password", "s3cret pass"]).output().expect("run");
    assert_ne!(again.stdout, printed.as_bytes(), "a fresh salt each time");

    let mut child = warren()
        .args(["hash-password", "--algorithm", "rabbit_password_hashing_sha512"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"from stdin\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    let p = Password::from_hash(HashAlgorithm::Sha512, String::from_utf8_lossy(&out.stdout).trim())
        .expect("sha512");
    assert!(p.verify("from stdin"));
    let bad = warren().args(["hash-password", "x", "--algorithm", "bcrypt"]).output().expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown hashing algorithm 'bcrypt'"));
}
