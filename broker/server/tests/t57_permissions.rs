//! Users and permissions with a real client, as RabbitMQ's access control has them: logins
//! with RabbitMQ's own password hashes, vhost access (530), each row of the
//! configure/write/read table allowed and refused (403, RabbitMQ's words), topic
//! permissions, and the validated `user-id`.
//!
//! The users and their entries are those RabbitMQ 3.10 exported into
//! `tests/fixtures/rabbitmq-3.10-definitions.json` (alice, bob, carol), plus guest.

mod common;

use common::{TestBroker, code, eventually, http, http_raw, s, table};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warren_core::auth::User;
use warren_core::password::{HashAlgorithm, Password};
use warren_core::permissions::{Access, Pattern, Permission, TopicPermission};

fn user(name: &str, algorithm: HashAlgorithm, hash: &str, tags: &[&str]) -> User {
    User {
        name: name.into(),
        password: Password::from_hash(algorithm, hash).expect("hash"),
        loopback_only: false,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        limits: Default::default(),
    }
}

fn permission(user: &str, vhost: &str, configure: &str, write: &str, read: &str) -> Permission {
    Permission {
        user: user.into(),
        vhost: vhost.into(),
        configure: Pattern::new(configure).expect("configure"),
        write: Pattern::new(write).expect("write"),
        read: Pattern::new(read).expect("read"),
    }
}

async fn broker() -> TestBroker {
    TestBroker::start_with(|s| {
        s.vhosts = vec!["orders".into()];
        s.users = vec![
            User::guest(),
            user("alice", HashAlgorithm::Sha256, "RXyMFdXQg+/XCr6rtodH1ZxFjQxyPnEfTl78t2bWrrS35tFm", &["management"]),
            user(
                "bob",
                HashAlgorithm::Sha512,
                "2T5xoJjcQ9OD9TvVGs9hbJwhStPSHN5KR6zGJfm08eZJwfXurpxnzUvg+hBP48w5VAZxXIjMSvq9GeXQvnJeMo0har0=",
                &["monitoring", "impersonator"],
            ),
            // RabbitMQ exported carol without tags; here she may read the management API.
            user("carol", HashAlgorithm::Md5, "BSLKO8ckyPEfKvJE7uUk5QJXo2M=", &["management"]),
        ];
        let permissions = vec![
            permission("guest", "/", ".*", ".*", ".*"),
            permission("alice", "orders", "^orders\\..*", "^(orders\\..*|amq\\.default)$", ".*"),
            permission("alice", "/", "", "", "^logs$"),
            permission("bob", "orders", ".*", ".*", ".*"),
        ];
        let topics = vec![
            TopicPermission::new("bob", "orders", "amq.topic", "^orders\\.{username}\\.", "^orders\\.").expect("topic"),
        ];
        s.access = std::sync::Arc::new(Access::rules(permissions, topics));
    })
    .await
}

const BOB: &str = "b0b%20pass%2C%20with%20spaces%20%C3%BC";

async fn open(
    b: &TestBroker,
    user: &str,
    password: &str,
    vhost: &str,
) -> Result<(Connection, Channel), lapin::Error> {
    let path = if vhost == "/" { "%2f" } else { vhost };
    let uri = format!("amqp://{user}:{password}@{}/{path}", b.addr);
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// The refusal of a failed call: its code and text.
fn refusal(e: &lapin::Error) -> (Option<u16>, String) {
    (code(e), e.to_string())
}

async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    props: BasicProperties,
) -> Result<(), lapin::Error> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm =
        ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), b"m", props).await?;
    confirm.await.map(|_| ())
}

fn queue_opts() -> QueueDeclareOptions {
    QueueDeclareOptions::default()
}

#[tokio::test]
async fn rabbitmq_hashes_log_in_and_a_user_without_an_entry_cannot_open_the_vhost() {
    let b = broker().await;
    open(&b, "alice", "alice-secret", "orders").await.expect("sha256");
    open(&b, "bob", BOB, "orders").await.expect("sha512, with spaces and a non-ASCII letter");
    let e = open(&b, "alice", "alice", "orders").await.expect_err("wrong password");
    assert_eq!(code(&e), Some(403), "{e}");
    // carol's md5 password is right; she has no entry anywhere.
    let e = open(&b, "carol", "carol", "/").await.expect_err("no permissions");
    let (c, text) = refusal(&e);
    assert_eq!(c, Some(530), "{text}");
    assert!(text.contains("access to vhost '/' refused for user 'carol'"), "{text}");
    let e = open(&b, "alice", "alice-secret", "%2f").await.map(|_| ());
    assert!(e.is_ok(), "alice has an entry on /, if one that grants little: {e:?}");
}

#[tokio::test]
async fn configure_guards_declare_and_delete_with_the_dead_letter_and_alternate_exchanges() {
    let b = broker().await;
    let (_bc, bob) = open(&b, "bob", BOB, "orders").await.expect("bob");
    bob.queue_declare("shared".into(), queue_opts(), FieldTable::default()).await.expect("shared");
    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    alice.queue_declare("orders.q".into(), queue_opts(), FieldTable::default()).await.expect("her prefix");

    let e = alice.queue_declare("other".into(), queue_opts(), FieldTable::default()).await.expect_err("403");
    let (c, text) = refusal(&e);
    assert_eq!(c, Some(403), "{text}");
    assert!(text.contains("access to queue 'other' in vhost 'orders' refused for user 'alice'"), "{text}");

    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    let e =
        alice.queue_declare("".into(), queue_opts(), FieldTable::default()).await.expect_err("server-named");
    assert!(refusal(&e).1.contains("access to queue 'amq.gen-"), "checked on the name it would get: {e}");

    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    alice
        .queue_declare("shared".into(), passive, FieldTable::default())
        .await
        .expect("passive needs nothing");
    let e = alice
        .queue_delete("shared".into(), QueueDeleteOptions::default())
        .await
        .expect_err("delete: configure");
    assert!(refusal(&e).1.contains("access to queue 'shared'"), "{e}");

    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    let dlx = table(&[("x-dead-letter-exchange", s("shared.dlx"))]);
    let e = alice.queue_declare("orders.dl".into(), queue_opts(), dlx).await.expect_err("write on the DLX");
    assert!(refusal(&e).1.contains("access to exchange 'shared.dlx' in vhost 'orders'"), "{e}");

    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    let opts = ExchangeDeclareOptions::default();
    alice
        .exchange_declare("orders.x".into(), ExchangeKind::Direct, opts, FieldTable::default())
        .await
        .expect("x");
    let e = alice
        .exchange_declare("other.x".into(), ExchangeKind::Direct, opts, FieldTable::default())
        .await
        .expect_err("configure on the exchange");
    assert!(refusal(&e).1.contains("access to exchange 'other.x'"), "{e}");
    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    let ae = table(&[("alternate-exchange", s("shared.ae"))]);
    let e = alice.exchange_declare("orders.ae".into(), ExchangeKind::Direct, opts, ae).await.expect_err("AE");
    assert!(refusal(&e).1.contains("access to exchange 'shared.ae'"), "{e}");
}

#[tokio::test]
async fn write_and_read_guard_binding_publishing_consuming_and_purging() {
    let b = broker().await;
    let (_gc, guest) = open(&b, "guest", "guest", "/").await.expect("guest");
    for q in ["logs", "other"] {
        guest.queue_declare(q.into(), queue_opts(), FieldTable::default()).await.expect("declare");
    }
    let (_bc, bob) = open(&b, "bob", BOB, "orders").await.expect("bob");
    bob.queue_declare("shared".into(), queue_opts(), FieldTable::default()).await.expect("shared");
    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    alice.queue_declare("orders.q".into(), queue_opts(), FieldTable::default()).await.expect("declare");
    let none = || (QueueBindOptions::default(), FieldTable::default());
    let (o, t) = none();
    alice
        .queue_bind("orders.q".into(), "amq.direct".into(), "k".into(), o, t)
        .await
        .expect("write q, read x");
    let (o, t) = none();
    let e =
        alice.queue_bind("shared".into(), "amq.direct".into(), "k".into(), o, t).await.expect_err("write q");
    assert!(refusal(&e).1.contains("access to queue 'shared' in vhost 'orders'"), "{e}");

    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    let opts = ExchangeDeclareOptions::default();
    alice
        .exchange_declare("orders.x".into(), ExchangeKind::Fanout, opts, FieldTable::default())
        .await
        .expect("x");
    let xbind = |destination: &'static str| {
        let alice = alice.clone();
        async move {
            let opts = lapin::options::ExchangeBindOptions::default();
            alice
                .exchange_bind(
                    destination.into(),
                    "amq.direct".into(),
                    "k".into(),
                    opts,
                    FieldTable::default(),
                )
                .await
        }
    };
    xbind("orders.x").await.expect("write on the destination, read on the source");
    let e = xbind("amq.fanout").await.expect_err("write on the destination");
    assert!(
        refusal(&e).1.contains("access to exchange 'amq.fanout' in vhost 'orders' refused for user 'alice'"),
        "{e}"
    );

    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    publish(&alice, "", "orders.q", BasicProperties::default()).await.expect("amq.default is hers");
    let e = publish(&alice, "amq.topic", "k", BasicProperties::default())
        .await
        .expect_err("write on the exchange");
    let (c, text) = refusal(&e);
    assert_eq!(c, Some(403), "{text}");
    assert!(
        text.contains("access to exchange 'amq.topic' in vhost 'orders' refused for user 'alice'"),
        "{text}"
    );

    // On / alice may read `logs` and nothing else, and write nowhere.
    let (_ac, alice) = open(&b, "alice", "alice-secret", "/").await.expect("alice on /");
    let consume = |ch: Channel, q: &'static str| async move {
        ch.basic_consume(q.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await
    };
    consume(alice.clone(), "logs").await.expect("read on logs");
    let e = consume(alice.clone(), "other").await.expect_err("read on other");
    assert!(refusal(&e).1.contains("access to queue 'other' in vhost '/' refused for user 'alice'"), "{e}");
    let (_ac, alice) = open(&b, "alice", "alice-secret", "/").await.expect("alice on /");
    let e = alice.queue_purge("other".into(), QueuePurgeOptions::default()).await.expect_err("purge: read");
    assert_eq!(code(&e), Some(403), "{e}");
    let (_ac, alice) = open(&b, "alice", "alice-secret", "/").await.expect("alice on /");
    let e = publish(&alice, "", "logs", BasicProperties::default()).await.expect_err("no write on /");
    assert!(refusal(&e).1.contains("access to exchange 'amq.default' in vhost '/'"), "{e}");
}

#[tokio::test]
async fn topic_permissions_and_the_user_id_are_checked_on_publish() {
    let b = broker().await;
    let (_bc, bob) = open(&b, "bob", BOB, "orders").await.expect("bob");
    publish(&bob, "amq.topic", "orders.bob.created", BasicProperties::default()).await.expect("his own keys");
    let e = publish(&bob, "amq.topic", "orders.alice.created", BasicProperties::default())
        .await
        .expect_err("topic");
    let (c, text) = refusal(&e);
    assert_eq!(c, Some(403), "{text}");
    assert!(
        text.contains("access to topic 'orders.alice.created' in exchange 'amq.topic' in vhost 'orders' refused for user 'bob'"),
        "{text}"
    );
    let (_bc, bob) = open(&b, "bob", BOB, "orders").await.expect("bob");
    bob.queue_declare("audit".into(), queue_opts(), FieldTable::default()).await.expect("audit");
    let bind = |key: &'static str| {
        let bob = bob.clone();
        async move {
            bob.queue_bind(
                "audit".into(),
                "amq.topic".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    bind("orders.#").await.expect("read topic");
    let e = bind("billing.#").await.expect_err("binding key outside the read pattern");
    assert!(refusal(&e).1.contains("access to topic 'billing.#' in exchange 'amq.topic'"), "{e}");

    // bob is an impersonator; alice is not.
    let (_bc, bob) = open(&b, "bob", BOB, "orders").await.expect("bob");
    let as_alice = BasicProperties::default().with_user_id("alice".into());
    publish(&bob, "", "audit", as_alice.clone()).await.expect("an impersonator may");
    let (_ac, alice) = open(&b, "alice", "alice-secret", "orders").await.expect("alice");
    let own = BasicProperties::default().with_user_id("alice".into());
    alice.queue_declare("orders.q".into(), queue_opts(), FieldTable::default()).await.expect("declare");
    publish(&alice, "", "orders.q", own).await.expect("her own name");
    let as_bob = BasicProperties::default().with_user_id("bob".into());
    let e = publish(&alice, "", "orders.q", as_bob).await.expect_err("user-id");
    let (c, text) = refusal(&e);
    assert_eq!(c, Some(406), "{text}");
    assert!(text.contains("user_id property set to 'bob' but authenticated user was 'alice'"), "{text}");
}

/// An HTTP request to the management API as `user:password`.
async fn api(b: &TestBroker, user: &str, password: &str, method: &str, path: &str) -> (u16, String) {
    use base64::Engine;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let auth = format!("Authorization: Basic {creds}\r\n");
    let (status, _, body) = http_raw(b.management.expect("management"), method, path, &auth).await;
    (status, body)
}

#[tokio::test]
async fn direct_reply_to_needs_no_permission_and_the_api_shows_each_user_its_vhosts() {
    let b = broker().await;
    // On / alice may read `logs` only; direct reply-to is no queue and needs nothing.
    let (_ac, alice) = open(&b, "alice", "alice-secret", "/").await.expect("alice on /");
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    alice
        .basic_consume("amq.rabbitmq.reply-to".into(), "".into(), opts, FieldTable::default())
        .await
        .expect("direct reply-to");

    let (_bc, bob) = open(&b, "bob", BOB, "orders").await.expect("bob");
    bob.queue_declare("orders.listed".into(), queue_opts(), FieldTable::default()).await.expect("declare");
    let (_gc, guest) = open(&b, "guest", "guest", "/").await.expect("guest");
    guest.queue_declare("root.listed".into(), queue_opts(), FieldTable::default()).await.expect("declare");
    let names = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        v.as_array()
            .into_iter()
            .flatten()
            .map(|q| format!("{}:{}", q["vhost"].as_str().unwrap_or(""), q["name"].as_str().unwrap_or("")))
            .collect()
    };
    // carol (management, no permissions) sees nothing; bob (monitoring) sees every vhost.
    let (status, body) = api(&b, "carol", "carol", "GET", "/api/queues").await;
    assert_eq!((status, names(&body)), (200, Vec::<String>::new()), "{body}");
    let (status, body) = api(&b, "bob", "b0b pass, with spaces ü", "GET", "/api/queues").await;
    assert_eq!(status, 200, "{body}");
    let seen = names(&body);
    assert!(
        seen.contains(&"orders:orders.listed".to_string()) && seen.contains(&"/:root.listed".to_string()),
        "{seen:?}"
    );
    // guest is an administrator without permissions on `orders`: no change there.
    let (status, body) = http(&b, "POST", "/api/queues/orders/orders.listed/replay").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no permissions on vhost 'orders'"), "{body}");
}

/// `x-death` is a header any publisher can write: a replay moves a message only to a queue
/// whose dead letters reach the dead-letter queue, not to whatever queue the header names.
#[tokio::test]
async fn a_replay_does_not_follow_a_forged_x_death() {
    let b = broker().await;
    let (_gc, guest) = open(&b, "guest", "guest", "/").await.expect("guest");
    for q in ["dlq", "payments"] {
        guest.queue_declare(q.into(), queue_opts(), FieldTable::default()).await.expect("declare");
    }
    let death = {
        let mut t = FieldTable::default();
        t.insert("queue".into(), s("payments"));
        t.insert("reason".into(), s("rejected"));
        t
    };
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        lapin::types::AMQPValue::FieldArray(vec![lapin::types::AMQPValue::FieldTable(death)].into()),
    );
    publish(&guest, "", "dlq", BasicProperties::default().with_headers(headers)).await.expect("forged");
    assert!(eventually(|| b.counts("dlq") == Some((1, 0, 0))).await);
    let (status, body) = http(&b, "POST", "/api/queues/%2F/dlq/replay").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"skipped\":1") && body.contains("\"moved\":0"), "{body}");
    assert_eq!((b.counts("dlq"), b.counts("payments")), (Some((1, 0, 0)), Some((0, 0, 0))));
}

/// RabbitMQ's vhost limits (`set_vhost_limits`) and user limits (`set_user_limits`), with its
/// words (taken from RabbitMQ 3.10): a vhost's connections and queues, a user's connections
/// and channels over all its connections; a slot comes back when its holder goes.
#[tokio::test]
async fn vhost_and_user_limits_refuse_as_rabbitmq_and_give_slots_back() {
    let b = TestBroker::start_with(|s| {
        s.vhosts = vec!["orders".into()];
        let limits = warren_core::broker::VHostLimits { max_connections: Some(1), max_queues: Some(1) };
        s.vhost_limits.insert("orders".into(), limits);
        let mut lim = User {
            name: "lim".into(),
            password: Password::plain("lim"),
            loopback_only: false,
            tags: Vec::new(),
            limits: Default::default(),
        };
        lim.limits = warren_core::auth::UserLimits { max_connections: Some(1), max_channels: Some(1) };
        s.users = vec![User::guest(), lim];
    })
    .await;
    let (first, ch) = open(&b, "guest", "guest", "orders").await.expect("the one connection orders takes");
    let e = open(&b, "guest", "guest", "orders").await.expect_err("a second");
    let (c, text) = refusal(&e);
    assert_eq!(c, Some(530), "{text}");
    assert!(
        text.contains("access to vhost 'orders' refused for user 'guest': connection limit (1) is reached"),
        "{text}"
    );
    ch.queue_declare("one".into(), queue_opts(), FieldTable::default()).await.expect("one queue");
    let e = ch.queue_declare("two".into(), queue_opts(), FieldTable::default()).await.expect_err("two");
    assert!(
        refusal(&e).1.contains("cannot declare queue 'two': queue limit in vhost 'orders' (1) is reached"),
        "{e}"
    );
    first.close(200, "bye".into()).await.expect("close");
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = open(&b, "guest", "guest", "orders").await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the slot came back");

    let (lim, _ch) = open(&b, "lim", "lim", "/").await.expect("lim's one connection, with one channel");
    let e = open(&b, "lim", "lim", "/").await.expect_err("a second connection");
    assert!(
        refusal(&e).1.contains("connection refused for user 'lim': user connection limit (1) is reached"),
        "{e}"
    );
    let e = lim.create_channel().await.expect_err("a second channel");
    let (c, text) = refusal(&e);
    assert_eq!(c, Some(530), "{text}");
    assert!(
        text.contains(
            "number of channels opened for user 'lim' has reached the maximum allowed user limit of (1)"
        ),
        "{text}"
    );
    // That closed lim's connection: its connection and channel are free again.
    let mut back = None;
    for _ in 0..50 {
        if let Ok(c) = open(&b, "lim", "lim", "/").await {
            back = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(back.is_some(), "lim's slots came back");
}
