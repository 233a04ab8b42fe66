//! Users, vhosts, permissions, limits and policies changed at run time through the
//! management API, driven by the RabbitMQ team's client (`rabbitmq_http_client`), checked
//! with a real AMQP client (lapin), and kept across a restart; a RabbitMQ 3.10 definitions
//! export imported with `POST /api/definitions`; a change the disk cannot take does not
//! happen.

mod common;

use common::{TestBroker, code};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::{PolicyTarget, UserLimitTarget, VirtualHostLimitTarget};
use rabbitmq_http_client::password_hashing;
use rabbitmq_http_client::requests::{
    EnforcedLimitParams, Permissions, PolicyParams, UserParams, VirtualHostParams,
};

type Admin = Client<String, &'static str, &'static str>;

fn admin(b: &TestBroker) -> Admin {
    Client::new(format!("http://{}/api", b.management.expect("management")), "guest", "guest")
}

async fn open(b: &TestBroker, user: &str, password: &str, vhost: &str) -> Result<Connection, lapin::Error> {
    let path = if vhost == "/" { "%2f" } else { vhost };
    Connection::connect(
        &format!("amqp://{user}:{password}@{}/{path}", b.addr),
        ConnectionProperties::default(),
    )
    .await
}

fn permissions<'a>(user: &'a str, vhost: &'a str, configure: &'a str, write: &'a str) -> Permissions<'a> {
    Permissions { user, vhost, configure, write, read: ".*" }
}

async fn user(api: &Admin, name: &str, password: &str, tags: &str) {
    let hash =
        password_hashing::base64_encoded_salted_password_hash_sha256(&password_hashing::salt(), password);
    api.create_user(&UserParams { name, password_hash: &hash, tags }).await.expect("create user");
}

#[tokio::test]
async fn users_vhosts_and_permissions_change_at_run_time_and_survive_a_restart() {
    let data = tempfile::tempdir().expect("data");
    let dir = data.path().to_path_buf();
    let b = TestBroker::start_with(|s| s.data_dir = dir.clone()).await;
    let api = admin(&b);

    // A vhost of its own, made at run time; its creator may use it at once.
    api.create_vhost(&VirtualHostParams::named("billing")).await.expect("create vhost");
    let guest = open(&b, "guest", "guest", "billing").await.expect("guest opens the new vhost");
    let ch = guest.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("billing.q".into(), durable, FieldTable::default()).await.expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let props = BasicProperties::default().with_delivery_mode(2);
    let confirm = ch
        .basic_publish("".into(), "billing.q".into(), BasicPublishOptions::default(), b"kept", props)
        .await
        .expect("publish");
    assert!(confirm.await.expect("confirm").is_ack());
    let vhosts: Vec<String> = api.list_vhosts().await.expect("vhosts").into_iter().map(|v| v.name).collect();
    assert!(vhosts.contains(&"billing".to_string()), "{vhosts:?}");

    // A user with no permissions cannot open it (530); with some, it may do what they say.
    user(&api, "app", "app-secret", "").await;
    let e = open(&b, "app", "app-secret", "billing").await.expect_err("no permissions yet");
    assert_eq!(code(&e), Some(530), "{e}");
    api.declare_permissions(&permissions("app", "billing", "^app\\.", ".*")).await.expect("permissions");
    let app = open(&b, "app", "app-secret", "billing").await.expect("app opens billing");
    let ch = app.create_channel().await.expect("channel");
    ch.queue_declare("app.q".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("own");
    let e = ch
        .queue_declare("other".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("configure refused");
    assert_eq!(code(&e), Some(403), "{e}");

    // Narrowed while connected: the next operation is refused.
    api.declare_permissions(&permissions("app", "billing", "", ".*")).await.expect("narrow");
    let ch = app.create_channel().await.expect("channel");
    let e = ch
        .queue_declare("app.q2".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("configure now refused");
    assert_eq!(code(&e), Some(403), "{e}");

    // Limits: a user limit and a vhost limit, set through the API, hold for new connections.
    api.set_user_limit("app", EnforcedLimitParams::new(UserLimitTarget::MaxConnections, 1))
        .await
        .expect("user limit");
    let e = open(&b, "app", "app-secret", "billing").await.expect_err("second connection");
    assert_eq!(code(&e), Some(530), "{e}");
    api.set_vhost_limit("billing", EnforcedLimitParams::new(VirtualHostLimitTarget::MaxQueues, 1))
        .await
        .expect("vhost limit");

    // A policy, applied to queues declared after it.
    let mut definition = serde_json::Map::new();
    definition.insert("max-length".into(), serde_json::json!(3));
    let policy = PolicyParams {
        vhost: "/",
        name: "short",
        pattern: "^short\\.",
        apply_to: PolicyTarget::Queues,
        priority: 1,
        definition,
    };
    api.declare_policy(&policy).await.expect("policy");

    // A user deleted at run time loses its connections at once.
    user(&api, "temp", "temp-secret", "").await;
    api.declare_permissions(&permissions("temp", "/", ".*", ".*")).await.expect("temp permissions");
    let temp = open(&b, "temp", "temp-secret", "/").await.expect("temp opens /");
    api.delete_user("temp", false).await.expect("delete user");
    assert!(common::eventually(|| !temp.status().connected()).await, "closed with its user");
    assert!(open(&b, "temp", "temp-secret", "/").await.is_err(), "and cannot log in again");
    assert!(api.delete_user("temp", false).await.is_err(), "a second delete is a 404");

    guest.close(200, "bye".into()).await.expect("close guest");
    let _ = app.close(200, "bye".into()).await;
    b.stop().await;

    // After a restart: the vhost, its stored message, the user, its permissions and limits,
    // and the policy are all still there.
    let b = TestBroker::start_with(|s| s.data_dir = dir.clone()).await;
    let api = admin(&b);
    let app = open(&b, "app", "app-secret", "billing").await.expect("app after restart");
    let ch = app.create_channel().await.expect("channel");
    let e = ch
        .queue_declare("app.q3".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("still narrowed");
    assert_eq!(code(&e), Some(403), "{e}");
    assert!(open(&b, "app", "app-secret", "billing").await.is_err(), "user limit kept");
    let q = api.get_queue_info("billing", "billing.q").await.expect("queue after restart");
    assert_eq!(q.message_count, 1);
    let p = api.get_policy("/", "short").await.expect("policy after restart");
    assert_eq!(p.definition.0.as_ref().and_then(|d| d.get("max-length")), Some(&serde_json::json!(3)));
    let guest = open(&b, "guest", "guest", "/").await.expect("guest");
    let ch = guest.create_channel().await.expect("channel");
    ch.queue_declare("short.q".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("q");
    for _ in 0..5 {
        ch.basic_publish(
            "".into(),
            "short.q".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    assert!(
        common::eventually(|| b.counts("short.q").is_some_and(|c| c.0 == 3)).await,
        "the policy's max-length"
    );

    // Deleting the vhost closes its connections and takes its queues and messages along;
    // made again, it is empty.
    drop(app);
    let billing = open(&b, "guest", "guest", "billing").await.expect("guest in billing");
    api.delete_vhost("billing", false).await.expect("delete vhost");
    assert!(common::eventually(|| !billing.status().connected()).await, "closed with its vhost");
    let e = open(&b, "guest", "guest", "billing").await.expect_err("gone");
    assert_eq!(code(&e), Some(530), "{e}");
    assert!(api.list_permissions().await.expect("permissions").iter().all(|p| p.vhost != "billing"));
    api.create_vhost(&VirtualHostParams::named("billing")).await.expect("again");
    assert!(api.get_queue_info("billing", "billing.q").await.is_err(), "its queue went with it");
    b.stop().await;
}

#[tokio::test]
async fn a_rabbitmq_export_imports_and_its_users_log_in() {
    let b = TestBroker::start().await;
    let api = admin(&b);
    let text = include_str!("fixtures/rabbitmq-3.10-definitions.json");
    let mut defs: serde_json::Value = serde_json::from_str(text).expect("fixture");
    // The fixture's guest has RabbitMQ's password; keep this broker's guest as it is.
    if let Some(users) = defs["users"].as_array_mut() {
        users.retain(|u| u["name"] != "guest");
    }
    defs["exchanges"] = serde_json::json!([{"name": "orders.dlx", "vhost": "orders", "type": "fanout",
        "durable": true, "auto_delete": false, "internal": false, "arguments": {}}]);
    defs["queues"] = serde_json::json!([{"name": "orders.dead", "vhost": "orders", "durable": true,
        "auto_delete": false, "arguments": {}}]);
    defs["bindings"] = serde_json::json!([{"source": "orders.dlx", "vhost": "orders", "destination": "orders.dead",
        "destination_type": "queue", "routing_key": "", "arguments": {}}]);
    api.import_definitions(defs).await.expect("import");

    // Every user logs in with its RabbitMQ password, where its permissions let it.
    let alice = open(&b, "alice", "alice-secret", "orders").await.expect("alice (sha256)");
    let ch = alice.create_channel().await.expect("channel");
    let e = ch
        .queue_declare("billing.q".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("outside alice's configure pattern");
    assert_eq!(code(&e), Some(403), "{e}");
    let ch = alice.create_channel().await.expect("channel");
    ch.queue_declare("orders.mine".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("inside it");
    let e = open(&b, "carol", "carol", "orders").await.expect_err("carol has no permissions there");
    assert_eq!(code(&e), Some(530), "{e}");
    let policies = api.list_policies_in("orders").await.expect("policies");
    assert!(policies.iter().any(|p| p.name == "dlx"), "the policy came along");
    let q = api.get_queue_info("orders", "orders.dead").await.expect("the imported queue");
    assert!(q.durable);
    let bindings = api.list_queue_bindings("orders", "orders.dead").await.expect("bindings");
    assert!(bindings.iter().any(|b| b.source == "orders.dlx"), "the imported binding");

    // Warren's own export imports back into Warren unchanged.
    let exported: serde_json::Value =
        serde_json::from_str(&api.export_cluster_wide_definitions().await.expect("export")).expect("json");
    api.import_definitions(exported).await.expect("re-import");

    // A document with an unreadable entry is refused whole, naming it.
    let bad = serde_json::json!({"users": [{"name": "mallory", "password_hash": "!!", "tags": []}],
        "permissions": [{"user": "mallory", "vhost": "/", "configure": "(?!x)", "write": "", "read": ""}]});
    let e = api.import_definitions(bad).await.expect_err("refused");
    assert!(format!("{e:?}").contains("mallory"), "{e:?}");
    assert!(api.get_user("mallory").await.is_err(), "nothing of it was applied");
    b.stop().await;
}

#[tokio::test]
async fn a_change_the_disk_cannot_take_does_not_happen() {
    let b = TestBroker::start().await;
    let api = admin(&b);
    let data = b.data.as_ref().expect("data").path().to_path_buf();
    // The new file cannot be made: a directory is where it would go.
    std::fs::create_dir(data.join("definitions.json.new")).expect("block the write");
    let hash = password_hashing::base64_encoded_salted_password_hash_sha256(&password_hashing::salt(), "x");
    let e = api.create_user(&UserParams { name: "ghost", password_hash: &hash, tags: "" }).await;
    let e = format!("{:?}", e.expect_err("500"));
    assert!(e.contains("500") && e.contains("could not be stored"), "{e}");
    assert!(api.get_user("ghost").await.is_err(), "not made");
    assert!(open(&b, "ghost", "x", "/").await.is_err(), "cannot log in");
    let e = api.create_vhost(&VirtualHostParams::named("nowhere")).await.expect_err("vhost not made");
    assert!(format!("{e:?}").contains("500"), "{e:?}");
    assert!(open(&b, "guest", "guest", "nowhere").await.is_err(), "no broker for it");
    // Unblocked, the same change goes through.
    std::fs::remove_dir(data.join("definitions.json.new")).expect("unblock");
    api.create_user(&UserParams { name: "ghost", password_hash: &hash, tags: "" }).await.expect("now made");
    b.stop().await;
}

#[tokio::test]
async fn only_administrators_change_the_directory() {
    let b = TestBroker::start_with(|s| {
        s.users.push(warren_core::auth::User {
            name: "watcher".into(),
            password: warren_core::password::Password::plain("watcher"),
            loopback_only: false,
            tags: vec!["monitoring".into()],
            limits: Default::default(),
        });
    })
    .await;
    let watcher: Admin =
        Client::new(format!("http://{}/api", b.management.expect("m")), "watcher", "watcher");
    let hash = password_hashing::base64_encoded_salted_password_hash_sha256(&password_hashing::salt(), "x");
    assert!(watcher.create_user(&UserParams { name: "x", password_hash: &hash, tags: "" }).await.is_err());
    assert!(watcher.create_vhost(&VirtualHostParams::named("x")).await.is_err());
    assert!(watcher.declare_permissions(&permissions("watcher", "/", ".*", ".*")).await.is_err());
    assert!(watcher.delete_user("guest", false).await.is_err());
    assert!(watcher.import_definitions(serde_json::json!({"vhosts": [{"name": "x"}]})).await.is_err());
    let api = admin(&b);
    assert!(api.get_user("x").await.is_err() && api.get_vhost("x").await.is_err(), "nothing was made");
    b.stop().await;
}

#[tokio::test]
async fn hostile_directory_changes_are_refused_whole() {
    let b = TestBroker::start_with(|s| {
        s.users.push(warren_core::auth::User {
            name: "local".into(),
            password: warren_core::password::Password::plain("local"),
            loopback_only: true,
            tags: vec![],
            limits: Default::default(),
        });
    })
    .await;
    let api = admin(&b);
    let refused = |e: Result<(), rabbitmq_http_client::error::Error<_, _, _, _>>| {
        let e = format!("{:?}", e.expect_err("refused"));
        assert!(e.contains("400"), "{e}");
    };
    // A pattern past the length bound, and a short one whose compiled form is too big.
    let long = "a".repeat(5000);
    refused(api.declare_permissions(&permissions("guest", "/", &long, ".*")).await);
    refused(api.declare_permissions(&permissions("guest", "/", "a{1000}{1000}", ".*")).await);
    // A policy name past 255 bytes, a policy value past 255 bytes.
    let mut definition = serde_json::Map::new();
    definition.insert("dead-letter-exchange".into(), serde_json::json!("x".repeat(300)));
    let name = "p".repeat(300);
    let policy = |name: &'static str, definition| PolicyParams {
        vhost: "/",
        name,
        pattern: ".*",
        apply_to: PolicyTarget::Queues,
        priority: 0,
        definition,
    };
    refused(api.declare_policy(&policy(Box::leak(name.into_boxed_str()), serde_json::Map::new())).await);
    refused(api.declare_policy(&policy("long-value", definition)).await);
    // Too many tags.
    let tags = vec!["t"; 40].join(",");
    let hash = password_hashing::base64_encoded_salted_password_hash_sha256(&password_hashing::salt(), "x");
    refused(api.create_user(&UserParams { name: "tagged", password_hash: &hash, tags: &tags }).await);

    // A blank password makes a user who cannot log in with one.
    let body = r#"{"password": "", "tags": ""}"#;
    let (status, _) = common::http_body(&b, "PUT", "/api/users/blank", body).await;
    assert_eq!(status, 201);
    api.declare_permissions(&permissions("blank", "/", ".*", ".*")).await.expect("permissions");
    assert!(open(&b, "blank", "", "/").await.is_err(), "no login with a blank password");

    // A loopback-only user changed through the API stays loopback-only.
    let (status, _) = common::http_body(&b, "PUT", "/api/users/local", r#"{"tags": "management"}"#).await;
    assert_eq!(status, 204);
    let dir = b.node.directory().load();
    let local = dir.user("local").expect("local");
    assert!(local.loopback_only && local.has_tag("management") && local.password.verify("local"));

    // An import that would fail half-way (a permission on a vhost it does not name) makes
    // nothing, not even the vhost it names first.
    let doc = serde_json::json!({
        "vhosts": [{"name": "half"}],
        "users": [{"name": "half-user", "password_hash": "", "tags": []}],
        "permissions": [{"user": "half-user", "vhost": "elsewhere", "configure": ".*", "write": ".*", "read": ".*"}],
    });
    let e = format!("{:?}", api.import_definitions(doc).await.expect_err("refused"));
    assert!(e.contains("elsewhere"), "{e}");
    assert!(api.get_vhost("half").await.is_err() && api.get_user("half-user").await.is_err());

    // The directory file is the owner's alone: it holds password hashes.
    use std::os::unix::fs::PermissionsExt;
    let file = b.data.as_ref().expect("data").path().join("definitions.json");
    let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    b.stop().await;
}
