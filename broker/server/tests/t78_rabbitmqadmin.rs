//! rabbitmqadmin v2, the RabbitMQ team's CLI over the management API, unchanged against
//! Warren: overview, vhosts, users, permissions, queues, definitions, purge, delete, a health
//! check. `scripts/test.sh` installs it (`cargo install rabbitmqadmin`); `RABBITMQADMIN`
//! names another binary.

mod common;

use std::process::Command;

use common::TestBroker;

/// rabbitmqadmin v2's path: `RABBITMQADMIN`, else cargo's bin directory (Debian's
/// `/usr/bin/rabbitmqadmin` is v1, a different tool).
fn binary() -> String {
    if let Ok(p) = std::env::var("RABBITMQADMIN") {
        return p;
    }
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    format!("{home}/bin/rabbitmqadmin")
}

/// Runs it against `b` as guest: (success, stdout and stderr).
async fn admin(b: &TestBroker, args: &[&str]) -> (bool, String) {
    let port = b.management.expect("management").port().to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &port, "--username", "guest", "--password", "guest"])
            .args(&args)
            .output()
            .expect("rabbitmqadmin v2 (cargo install rabbitmqadmin; scripts/test.sh does)");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmqadmin_v2_manages_warren() {
    let b = TestBroker::start().await;
    let (ok, version) = admin(&b, &["--version"]).await;
    assert!(ok && version.contains(" 2."), "rabbitmqadmin v2: {version}");
    let (ok, out) = admin(&b, &["show", "overview"]).await;
    assert!(ok && out.contains("Warren"), "{out}");

    let (ok, out) = admin(&b, &["declare", "vhost", "--name", "shop"]).await;
    assert!(ok, "{out}");
    let (ok, out) =
        admin(&b, &["declare", "user", "--name", "clerk", "--password", "clerk-pw", "--tags", "management"])
            .await;
    assert!(ok, "{out}");
    let (ok, out) = admin(
        &b,
        &[
            "--vhost",
            "shop",
            "declare",
            "permissions",
            "--user",
            "clerk",
            "--configure",
            ".*",
            "--write",
            ".*",
            "--read",
            ".*",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = admin(&b, &["list", "permissions"]).await;
    assert!(ok && out.lines().any(|l| l.contains("clerk") && l.contains("shop")), "{out}");
    let (ok, out) = admin(&b, &["list", "users"]).await;
    assert!(ok && out.contains("clerk") && out.contains("management"), "{out}");

    // The user it made logs in over AMQP where its permissions say.
    let uri = format!("amqp://clerk:clerk-pw@{}/shop", b.addr);
    let conn = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()).await.expect("clerk");
    conn.close(200, "bye".into()).await.expect("close");

    let (ok, out) =
        admin(&b, &["--vhost", "shop", "declare", "queue", "--name", "orders", "--durable", "true"]).await;
    assert!(ok, "{out}");
    let (ok, out) = admin(&b, &["--vhost", "shop", "list", "queues"]).await;
    assert!(ok && out.contains("orders"), "{out}");
    let (ok, out) = admin(&b, &["definitions", "export", "--stdout"]).await;
    let defs: serde_json::Value = serde_json::from_str(out.trim()).expect("definitions JSON");
    assert!(ok && defs["queues"].as_array().is_some_and(|q| q.iter().any(|q| q["name"] == "orders")));
    let (ok, out) = admin(&b, &["--vhost", "shop", "purge", "queue", "--name", "orders"]).await;
    assert!(ok, "{out}");
    let (ok, out) = admin(&b, &["--vhost", "shop", "delete", "queue", "--name", "orders"]).await;
    assert!(ok, "{out}");
    let (ok, out) = admin(&b, &["delete", "vhost", "--name", "shop"]).await;
    assert!(ok, "{out}");
    let (ok, out) = admin(&b, &["delete", "user", "--name", "clerk"]).await;
    assert!(ok, "{out}");
    let (ok, out) = admin(&b, &["list", "vhosts"]).await;
    assert!(ok && !out.contains("shop"), "{out}");
    let (ok, out) = admin(&b, &["health_check", "local_alarms"]).await;
    assert!(ok && out.contains("passed"), "{out}");
    b.stop().await;
}
