//! The definitions export in RabbitMQ's format: read by the RabbitMQ team's client, its
//! password hashes verify, only what survives a restart is in it, and (when `RABBITMQ_URL`
//! names a local RabbitMQ, with `rabbitmqctl` beside it) RabbitMQ imports it and its users
//! log in there with their passwords and their permissions.

mod common;

use common::TestBroker;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use rabbitmq_http_client::api::Client;
use warren_core::auth::User;
use warren_core::password::{HashAlgorithm, Password};
use warren_core::permissions::{Access, Pattern, Permission, TopicPermission};

fn everything(user: &str, vhost: &str) -> Permission {
    Permission {
        user: user.into(),
        vhost: vhost.into(),
        configure: Pattern::new(".*").expect("p"),
        write: Pattern::new(".*").expect("p"),
        read: Pattern::new(".*").expect("p"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_export_is_rabbitmqs_format_and_rabbitmq_imports_it() {
    let run = std::process::id();
    let (vhost, user) = (format!("exp-{run}"), format!("exp-user-{run}"));
    let (v, u) = (vhost.clone(), user.clone());
    let b = TestBroker::start_with(move |s| {
        s.vhosts = vec![v.clone()];
        let limits = warren_core::broker::VHostLimits { max_connections: Some(50), max_queues: Some(100) };
        s.vhost_limits.insert(v.clone(), limits);
        let app = User {
            name: u.clone(),
            password: Password::plain("pw-secret"),
            loopback_only: false,
            tags: vec!["management".into()],
            limits: Default::default(),
        };
        s.users = vec![User::guest(), app];
        let app_perm = Permission {
            user: u.clone(),
            vhost: v.clone(),
            configure: Pattern::new("^app\\.").expect("p"),
            write: Pattern::new(".*").expect("p"),
            read: Pattern::new(".*").expect("p"),
        };
        let topic = TopicPermission::new(&u, &v, "amq.topic", "^app\\.{username}\\.", ".*").expect("topic");
        s.access = std::sync::Arc::new(Access::rules(
            vec![everything("guest", "/"), everything("guest", &v), app_perm],
            vec![topic],
        ));
        let mut args = warren_codec::FieldTable::new();
        args.insert("x-dead-letter-exchange".into(), warren_codec::FieldValue::LongString("app.dlx".into()));
        s.policies = vec![warren_core::policy::Policy {
            name: "dlx".into(),
            vhost: v.clone(),
            pattern: regex::Regex::new("^app\\.").expect("re"),
            priority: 1,
            arguments: args,
        }];
    })
    .await;
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/{vhost}", b.addr),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare("app.x".into(), ExchangeKind::Direct, durable, FieldTable::default())
        .await
        .expect("x");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(7));
    let q = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("app.q".into(), q, args).await.expect("q");
    ch.queue_declare("app.transient".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("t");
    ch.queue_bind(
        "app.q".into(),
        "app.x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");

    let endpoint = format!("http://{}/api", b.management.expect("management"));
    let admin = Client::new(endpoint.clone(), "guest", "guest");
    let defs = admin.export_cluster_wide_definitions_as_data().await.expect("RabbitMQ's client reads it");
    let exported = defs.users.iter().find(|x| x.name == user).expect("the user");
    let password =
        Password::from_hash(HashAlgorithm::Sha256, exported.password_hash.as_ref().expect("hash").as_str())
            .expect("a sha256 hash");
    assert!(password.verify("pw-secret"), "a clear password leaves as RabbitMQ's hash of it");
    let queues: Vec<&str> = defs.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(queues, ["app.q"], "only what survives a restart");
    assert_eq!(defs.bindings.len(), 1);
    assert!(defs.exchanges.iter().any(|x| x.name == "app.x"));
    let raw = admin.export_cluster_wide_definitions_as_string().await.expect("text");
    let json: serde_json::Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(
        json["policies"][0]["definition"]["dead-letter-exchange"], "app.dlx",
        "RabbitMQ's policy keys"
    );
    assert_eq!(
        json["topic_permissions"][0]["write"], "^app\\.{username}\\.",
        "as configured, variables and all"
    );
    let limits =
        json["parameters"].as_array().and_then(|p| p.iter().find(|p| p["component"] == "vhost-limits"));
    assert_eq!(
        limits.map(|l| l["value"]["max-queues"].clone()),
        Some(serde_json::json!(100)),
        "RabbitMQ's vhost-limits"
    );
    // Only an administrator gets the hashes.
    let app = Client::new(endpoint, user.as_str(), "pw-secret");
    assert!(app.export_cluster_wide_definitions_as_string().await.is_err());

    let Ok(rabbit) = std::env::var("RABBITMQ_URL") else {
        println!("RABBITMQ_URL not set: the import into RabbitMQ is skipped");
        return;
    };
    let ctl =
        |args: &[&str]| std::process::Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl");
    // On standard input: the RabbitMQ node, another user, may not read a test's files.
    let out = {
        use std::io::Write;
        let mut child = std::process::Command::new("rabbitmqctl")
            .args(["import_definitions", "--format", "json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("rabbitmqctl");
        child.stdin.take().expect("stdin").write_all(raw.as_bytes()).expect("write");
        child.wait_with_output().expect("wait")
    };
    assert!(out.status.success(), "RabbitMQ refused the export: {}", String::from_utf8_lossy(&out.stderr));
    let host =
        rabbit.split('@').nth(1).and_then(|h| h.split('/').next()).unwrap_or("127.0.0.1:5672").to_string();
    let uri = format!("amqp://{user}:pw-secret@{host}/{vhost}");
    let outcome = async {
        let c =
            Connection::connect(&uri, ConnectionProperties::default()).await.map_err(|e| e.to_string())?;
        let ch = c.create_channel().await.map_err(|e| e.to_string())?;
        ch.queue_declare("app.mine".into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .map_err(|e| e.to_string())?;
        let refused =
            ch.queue_declare("other".into(), QueueDeclareOptions::default(), FieldTable::default()).await;
        Ok::<_, String>(refused.err().map(|e| e.to_string()))
    }
    .await;
    let _ = ctl(&["delete_user", &user]);
    let _ = ctl(&["delete_vhost", &vhost]);
    let refused = outcome.expect("the exported user logs in to RabbitMQ with its password");
    assert!(refused.is_some_and(|e| e.contains("ACCESS_REFUSED")), "and its permissions hold there");
}
