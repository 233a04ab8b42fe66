//! `warren ctl`, the real binary, against a running broker's management API: tables and
//! JSON, changes, a replay, closing a connection, and errors that name what went wrong.

mod common;

use std::process::Command;

use common::{TestBroker, eventually};
use lapin::{Connection, ConnectionProperties};

/// Runs `warren ctl` against `b` off the async workers: (success, stdout, stderr).
async fn ctl(b: &TestBroker, args: &[&str]) -> (bool, String, String) {
    ctl_with(b, args, None).await
}

/// [`ctl`], with `password` as the new user's password in its environment when given.
async fn ctl_with(b: &TestBroker, args: &[&str], password: Option<&str>) -> (bool, String, String) {
    let url = format!("http://{}", b.management.expect("management"));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let password = password.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.arg("ctl")
            .args(["--url", &url])
            .args(&args)
            .env_remove("WARREN_URL")
            .env_remove("WARREN_USER")
            .env_remove("WARREN_PASSWORD")
            .env_remove("WARREN_NEW_PASSWORD");
        if let Some(p) = password {
            cmd.env("WARREN_NEW_PASSWORD", p);
        }
        let out = cmd.output().expect("run warren ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_lists_changes_replays_and_closes_through_the_api() {
    let b = TestBroker::start().await;
    let (ok, out, err) = ctl(&b, &["declare-queue", "/", "work"]).await;
    assert!(ok && out.contains("queue 'work' declared in vhost '/'"), "{out}{err}");
    let (ok, out, err) = ctl(&b, &["declare-exchange", "/", "jobs", "--type", "fanout"]).await;
    assert!(ok, "{out}{err}");

    let (ok, out, _) = ctl(&b, &["list", "queues"]).await;
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("vhost  name  type     durable  ready"), "a header: {out}");
    assert!(lines.iter().any(|l| l.split_whitespace().take(3).eq(["/", "work", "classic"])), "{out}");
    let (ok, out, _) = ctl(&b, &["--json", "list", "exchanges", "--vhost", "/"]).await;
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("JSON with --json");
    assert!(
        ok && parsed
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == "jobs" && x["type"] == "fanout"))
    );

    let (ok, out, _) = ctl(&b, &["purge", "/", "work"]).await;
    assert!(ok && out.contains("purged"), "{out}");
    let (ok, out, _) = ctl(&b, &["replay", "/", "work"]).await;
    assert!(ok && out.contains("moved 0, skipped 0, refused 0"), "{out}");
    let (ok, out, _) = ctl(&b, &["export-definitions"]).await;
    assert!(ok && out.contains("\"rabbitmq_version\""), "{out}");

    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let (_, out, _) = ctl(&b, &["--json", "list", "connections"]).await;
    let conns: serde_json::Value = serde_json::from_str(&out).expect("json");
    let name = conns[0]["name"].as_str().expect("a connection").to_string();
    let (ok, out, err) = ctl(&b, &["close-connection", &name, "--reason", "maintenance"]).await;
    assert!(ok && out.contains("closed"), "{out}{err}");
    assert!(eventually(|| !conn.status().connected()).await);

    // Errors name the request and the API's reason, and exit non-zero.
    let (ok, _, err) = ctl(&b, &["delete-queue", "/", "nope"]).await;
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = ctl(&b, &["list", "widgets"]).await;
    assert!(!ok && err.contains("cannot list 'widgets'"), "{err}");
    let (ok, _, err) = ctl(&b, &["--password", "wrong", "list", "queues"]).await;
    assert!(!ok && err.contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_manages_users_vhosts_permissions_and_definitions() {
    let b = TestBroker::start().await;
    let (ok, out, err) = ctl(&b, &["add-vhost", "shop"]).await;
    assert!(ok && out.contains("vhost 'shop' added"), "{out}{err}");
    let (ok, out, err) = ctl_with(&b, &["add-user", "clerk", "--tags", "management"], Some("clerk-pw")).await;
    assert!(ok, "{out}{err}");
    let uri = format!("amqp://clerk:clerk-pw@{}/shop", b.addr);
    assert!(Connection::connect(&uri, ConnectionProperties::default()).await.is_err(), "no permissions yet");
    let (ok, out, err) = ctl(&b, &["set-permissions", "clerk", "--vhost", "shop", ".*", ".*", ".*"]).await;
    assert!(ok, "{out}{err}");
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("clerk opens shop");
    conn.close(200, "bye".into()).await.expect("close");
    let (ok, out, _) = ctl(&b, &["list", "permissions"]).await;
    assert!(ok && out.lines().any(|l| l.split_whitespace().take(2).eq(["clerk", "shop"])), "{out}");

    // Export, delete, import again: the user logs in as before.
    let (ok, exported, _) = ctl(&b, &["export-definitions"]).await;
    assert!(ok);
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), &exported).expect("write");
    let (ok, out, err) = ctl(&b, &["delete-user", "clerk"]).await;
    assert!(ok, "{out}{err}");
    assert!(Connection::connect(&uri, ConnectionProperties::default()).await.is_err(), "deleted");
    let path = file.path().to_string_lossy().to_string();
    let (ok, out, err) = ctl(&b, &["import-definitions", &path]).await;
    assert!(ok && out.contains("imported"), "{out}{err}");
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("clerk is back");
    conn.close(200, "bye".into()).await.expect("close");

    let (ok, _, err) = ctl(&b, &["clear-permissions", "clerk", "--vhost", "shop"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(&b, &["delete-vhost", "shop"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(&b, &["delete-vhost", "shop"]).await;
    assert!(!ok && err.contains("404"), "a second delete names the 404: {err}");
    // A background replay: started, listed, and cancelling a finished one is a 404.
    let (ok, out, err) = ctl(&b, &["declare-queue", "/", "dlq"]).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = ctl(&b, &["replay", "/", "dlq", "--background", "--rate", "50"]).await;
    assert!(ok && out.contains("replay 1 started"), "{out}{err}");
    let (ok, out, _) = ctl(&b, &["list", "replays"]).await;
    assert!(
        ok && out.lines().nth(1).is_some_and(|l| l.split_whitespace().take(3).eq(["1", "/", "dlq"])),
        "{out}"
    );
    // An empty queue's replay completes at once; a finished task cannot be cancelled.
    let mut status = String::new();
    for _ in 0..50 {
        let (_, out, _) = ctl(&b, &["--json", "list", "replays"]).await;
        let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
        status = listed[0]["status"].as_str().unwrap_or_default().to_string();
        if status == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, "completed");
    let (ok, _, err) = ctl(&b, &["cancel-replay", "1"]).await;
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = ctl(&b, &["add-user", "nopass"]).await;
    assert!(!ok && err.contains("WARREN_NEW_PASSWORD"), "{err}");
    b.stop().await;
}
