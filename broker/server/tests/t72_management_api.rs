//! RabbitMQ's management API as the RabbitMQ team's own client (`rabbitmq_http_client`) reads
//! it: every response below parses into that client's types, so tools built on the same
//! shapes (rabbitmqadmin v2, exporters, operators) read Warren as they read RabbitMQ.

mod common;

use common::TestBroker;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use rabbitmq_http_client::api::Client;
use warren_core::auth::User;
use warren_core::password::Password;
use warren_core::permissions::{Access, Pattern, Permission};

fn client(
    b: &TestBroker,
    user: &'static str,
    password: &'static str,
) -> Client<String, &'static str, &'static str> {
    let endpoint = format!("http://{}/api", b.management.expect("management"));
    Client::new(endpoint, user, password)
}

async fn broker() -> TestBroker {
    TestBroker::start_with(|s| {
        s.vhosts = vec!["orders".into()];
        let user = |name: &str, tags: &[&str]| User {
            name: name.into(),
            password: Password::plain(name),
            loopback_only: false,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            limits: Default::default(),
        };
        s.users = vec![User::guest(), user("clerk", &["management"]), user("watcher", &["monitoring"])];
        let all = |u: &str, v: &str| Permission {
            user: u.into(),
            vhost: v.into(),
            configure: Pattern::new(".*").expect("p"),
            write: Pattern::new(".*").expect("p"),
            read: Pattern::new(".*").expect("p"),
        };
        s.access = std::sync::Arc::new(Access::rules(
            vec![all("guest", "/"), all("guest", "orders"), all("clerk", "orders")],
            Vec::new(),
        ));
    })
    .await
}

/// A durable exchange, a queue with arguments and a binding in `orders`, and a queue in `/`.
async fn topology(b: &TestBroker) {
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/orders", b.addr),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare("orders.x".into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .expect("x");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(10));
    let q = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("orders.q".into(), q, args).await.expect("q");
    ch.queue_bind(
        "orders.q".into(),
        "orders.x".into(),
        "new.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let root = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect /");
    let rch = root.create_channel().await.expect("channel");
    rch.queue_declare("root.q".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("q");
    // Keep the topology, close the connections.
    conn.close(200, "done".into()).await.expect("close");
    root.close(200, "done".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmqs_client_reads_overview_vhosts_users_permissions_exchanges_queues_and_bindings() {
    let b = broker().await;
    topology(&b).await;
    let admin = client(&b, "guest", "guest");

    let me = admin.current_user().await.expect("whoami");
    assert_eq!(me.name, "guest");
    let overview = admin.overview().await.expect("overview");
    assert_eq!(overview.product_name, "Warren");
    assert_eq!(overview.object_totals.queues, 2);

    let vhosts: Vec<String> =
        admin.list_vhosts().await.expect("vhosts").into_iter().map(|v| v.name).collect();
    assert_eq!(vhosts, ["/", "orders"]);
    assert_eq!(admin.get_vhost("orders").await.expect("vhost").name, "orders");
    assert!(admin.get_vhost("nowhere").await.is_err(), "404");

    let users: Vec<String> = admin.list_users().await.expect("users").into_iter().map(|u| u.name).collect();
    assert_eq!(users, ["guest", "clerk", "watcher"]);
    assert!(
        admin.list_users().await.expect("users").iter().all(|u| u.password_hash.is_none()),
        "never the hash"
    );
    let perms = admin.list_permissions_in("orders").await.expect("permissions");
    let mut who: Vec<String> = perms.iter().map(|p| p.user.clone()).collect();
    who.sort();
    assert_eq!(who, ["clerk", "guest"]);
    assert_eq!(admin.get_permissions("orders", "clerk").await.expect("one").configure, ".*");

    let exchanges = admin.list_exchanges_in("orders").await.expect("exchanges");
    let x = exchanges.iter().find(|x| x.name == "orders.x").expect("orders.x listed");
    assert_eq!((x.exchange_type.as_str(), x.durable), ("topic", true));
    assert!(exchanges.iter().any(|x| x.name.is_empty()), "the default exchange, as RabbitMQ lists it");
    assert_eq!(
        admin.get_exchange_info("orders", "amq.topic").await.expect("amq.topic").exchange_type,
        "topic"
    );

    let q = admin.get_queue_info("orders", "orders.q").await.expect("queue");
    assert_eq!(
        (q.name.as_str(), q.queue_type.as_str(), q.durable, q.exclusive),
        ("orders.q", "classic", true, false)
    );
    assert_eq!(q.arguments.0.get("x-max-length"), Some(&serde_json::json!(10)));
    let all: Vec<String> = admin.list_queues().await.expect("queues").into_iter().map(|q| q.name).collect();
    assert_eq!(all, ["root.q", "orders.q"], "by vhost then name");
    assert!(admin.get_queue_info("orders", "nope").await.is_err(), "404");

    let bindings = admin.list_queue_bindings("orders", "orders.q").await.expect("bindings");
    let keys: Vec<(String, String)> =
        bindings.iter().map(|b| (b.source.clone(), b.routing_key.clone())).collect();
    assert_eq!(keys, [("".to_string(), "orders.q".to_string()), ("orders.x".into(), "new.*".into())]);
    assert_eq!(admin.list_bindings_in("orders").await.expect("bindings").len(), 2);
    let from = admin.list_exchange_bindings_with_source("orders", "orders.x").await.expect("source");
    assert_eq!(from.iter().map(|b| b.destination.as_str()).collect::<Vec<_>>(), ["orders.q"]);
    let to = admin.list_exchange_bindings_with_destination("orders", "orders.x").await.expect("destination");
    assert!(to.is_empty(), "nothing binds to orders.x");
    assert!(admin.list_exchange_bindings_with_source("orders", "nope").await.is_err(), "404");

    admin.health_check_cluster_wide_alarms().await.expect("no alarm");
    admin.health_check_local_alarms().await.expect("no alarm");
    admin.health_check_if_node_is_quorum_critical().await.expect("no quorum queue to endanger");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_user_sees_follows_its_tags_and_permissions() {
    let b = broker().await;
    topology(&b).await;
    // clerk (management) has permissions on orders only: it sees orders, and no user list.
    let clerk = client(&b, "clerk", "clerk");
    let vhosts: Vec<String> =
        clerk.list_vhosts().await.expect("vhosts").into_iter().map(|v| v.name).collect();
    assert_eq!(vhosts, ["orders"]);
    let queues: Vec<String> =
        clerk.list_queues().await.expect("queues").into_iter().map(|q| q.name).collect();
    assert_eq!(queues, ["orders.q"]);
    assert!(clerk.get_queue_info("/", "root.q").await.is_err(), "another vhost is a 404 to it");
    assert!(clerk.list_users().await.is_err(), "users are an administrator's");
    // watcher (monitoring) sees every vhost without permissions on any.
    let watcher = client(&b, "watcher", "watcher");
    assert_eq!(watcher.list_queues().await.expect("queues").len(), 2);
    // The alarm check fails while an alarm is raised, with RabbitMQ's resource name.
    b.alarms.set(warren::alarms::Alarm::Disk, true, &b.node);
    let e = watcher.health_check_cluster_wide_alarms().await.expect_err("an alarm");
    assert!(format!("{e:?}").contains("disk"), "{e:?}");
    // It blocks publishing over HTTP as over AMQP.
    let guest = client(&b, "guest", "guest");
    let e = guest
        .publish_message("orders", "amq.default", "orders.q", "x", Default::default())
        .await
        .expect_err("blocked");
    assert!(format!("{e:?}").contains("503"), "{e:?}");
    b.alarms.set(warren::alarms::Alarm::Disk, false, &b.node);
    watcher.health_check_local_alarms().await.expect("cleared");
    guest
        .publish_message("orders", "amq.default", "orders.q", "x", Default::default())
        .await
        .expect("unblocked");
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmqs_client_declares_binds_publishes_gets_purges_and_deletes() {
    use rabbitmq_http_client::commons::{BindingDestinationType, ExchangeType};
    use rabbitmq_http_client::requests::{BindingDeletionParams, ExchangeParams, QueueParams};
    let b = broker().await;
    let admin = client(&b, "guest", "guest");
    admin
        .declare_exchange("orders", &ExchangeParams::durable("api.x", ExchangeType::Direct, None))
        .await
        .expect("x");
    let mut args = serde_json::Map::new();
    args.insert("x-max-length".into(), serde_json::json!(5));
    admin
        .declare_queue("orders", &QueueParams::new_durable_classic_queue("api.q", Some(args)))
        .await
        .expect("q");
    admin.bind_queue("orders", "api.q", "api.x", Some("k"), None).await.expect("bind");
    let info = admin.get_queue_info("orders", "api.q").await.expect("declared");
    assert_eq!(
        info.arguments.0.get("x-max-length"),
        Some(&serde_json::json!(5)),
        "arguments typed as RabbitMQ's"
    );

    let routed =
        admin.publish_message("orders", "api.x", "k", "hello", Default::default()).await.expect("publish");
    assert!(routed.routed);
    let lost =
        admin.publish_message("orders", "api.x", "nowhere", "x", Default::default()).await.expect("publish");
    assert!(!lost.routed, "unroutable, as RabbitMQ reports it");
    // Peeking puts the message back; taking removes it.
    let peeked = admin.get_messages("orders", "api.q", 5, "ack_requeue_true").await.expect("get");
    assert_eq!((peeked.len(), peeked[0].payload.as_str(), peeked[0].routing_key.as_str()), (1, "hello", "k"));
    assert!(b.node.broker("orders").is_some());
    let taken = admin.get_messages("orders", "api.q", 5, "ack_requeue_false").await.expect("get");
    assert!(taken[0].redelivered, "it was delivered once already");
    assert!(admin.get_messages("orders", "api.q", 5, "ack_requeue_false").await.expect("get").is_empty());
    admin.publish_message("orders", "api.x", "k", "again", Default::default()).await.expect("publish");
    admin.purge_queue("orders", "api.q").await.expect("purge");
    assert_eq!(admin.get_queue_info("orders", "api.q").await.expect("q").message_count, 0);

    let unbind = BindingDeletionParams {
        virtual_host: "orders",
        source: "api.x",
        destination: "api.q",
        destination_type: BindingDestinationType::Queue,
        routing_key: "k",
        arguments: None,
    };
    admin.delete_binding(&unbind, false).await.expect("unbind");
    assert_eq!(
        admin.list_queue_bindings("orders", "api.q").await.expect("bindings").len(),
        1,
        "the default one"
    );
    admin.delete_queue("orders", "api.q", false).await.expect("delete q");
    admin.delete_exchange("orders", "api.x", false).await.expect("delete x");
    assert!(admin.get_queue_info("orders", "api.q").await.is_err());

    // clerk's permissions decide what it may change, as they decide what its clients may.
    let clerk = client(&b, "clerk", "clerk");
    clerk
        .declare_queue("orders", &QueueParams::new_durable_classic_queue("clerk.q", None))
        .await
        .expect("in orders");
    let e = clerk
        .declare_queue("/", &QueueParams::new_durable_classic_queue("clerk.q", None))
        .await
        .expect_err("/");
    assert!(format!("{e:?}").contains("403"), "{e:?}");
    // A quorum queue, served as a one-member group on this single node, listed as one.
    admin.declare_quorum_queue("orders", "qq").await.expect("a quorum queue");
    let q = admin.get_queue_info("orders", "qq").await.expect("listed");
    assert_eq!(q.queue_type, "quorum");
    let (status, body) = common::http(&b, "GET", "/api/queues/orders/qq").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status, 200);
    assert_eq!(v["leader"], v["node"], "{body}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(1), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmqs_client_lists_connections_channels_and_consumers_and_closes_a_connection() {
    use lapin::options::BasicConsumeOptions;
    let b = broker().await;
    topology(&b).await;
    let props = ConnectionProperties::default().with_connection_name("orders-app".into());
    let conn =
        Connection::connect(&format!("amqp://guest:guest@{}/orders", b.addr), props).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let consumer = ch
        .basic_consume(
            "orders.q".into(),
            "watcher-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");

    let admin = client(&b, "guest", "guest");
    let conns = admin.list_connections().await.expect("connections");
    assert_eq!(conns.len(), 1, "the API's own sessions are not connections: {conns:?}");
    let c = &conns[0];
    assert_eq!((c.username.as_str(), c.protocol.as_str(), c.channel_count), ("guest", "AMQP 0-9-1", 1));
    assert_eq!(c.client_properties.connection_name, "orders-app");
    assert!(c.client_properties.capabilities.as_ref().is_some_and(|caps| caps.publisher_confirms));
    assert_eq!(c.client_hostname.as_deref(), Some("127.0.0.1"));
    let channels = admin.list_channels().await.expect("channels");
    assert_eq!((channels.len(), channels[0].consumer_count), (1, 1));
    let consumers = admin.list_consumers().await.expect("consumers");
    assert_eq!(
        (consumers[0].consumer_tag.as_str(), consumers[0].queue.name.as_str()),
        ("watcher-1", "orders.q")
    );
    // clerk (management) sees no connection of guest's, and may not close one.
    let clerk = client(&b, "clerk", "clerk");
    assert!(clerk.list_connections().await.expect("connections").is_empty());
    assert!(clerk.close_connection(&c.name, None, false).await.is_err());

    admin.close_connection(&c.name, Some("maintenance window"), false).await.expect("close");
    assert!(common::eventually(|| !conn.status().connected()).await, "the client saw its connection closed");
    drop(consumer);
    assert!(
        common::eventually(|| b.node.brokers().iter().all(|(_, s)| warren::server::lock(s)
            .broker
            .open_counts()
            .0
            == 0))
        .await
    );
    assert!(admin.list_connections().await.expect("connections").is_empty());
}

/// The API's requests are sessions, not connections: they take no slot of the connection
/// limit, so a busy API cannot lock clients out.
#[tokio::test(flavor = "multi_thread")]
async fn api_requests_take_no_connection_slot() {
    use rabbitmq_http_client::requests::QueueParams;
    let b = TestBroker::start_with(|s| s.limits.counts.max_connections = Some(1)).await;
    let only = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("the one slot");
    let admin = client(&b, "guest", "guest");
    admin
        .declare_queue("/", &QueueParams::new_durable_classic_queue("api.q", None))
        .await
        .expect("still served");
    let e =
        Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect_err("the limit holds");
    assert_eq!(common::code(&e), Some(530), "{e}");
    drop(only);
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_page_filter_sort_and_pick_columns_as_rabbitmq() {
    use rabbitmq_http_client::commons::PaginationParams;
    use rabbitmq_http_client::requests::QueueParams;
    let b = broker().await;
    let admin = client(&b, "guest", "guest");
    for i in 0..7 {
        admin
            .declare_queue("orders", &QueueParams::new_durable_classic_queue(&format!("p{i}"), None))
            .await
            .expect("q");
    }
    let page = admin.list_queues_paged(&PaginationParams::new(2, 3)).await.expect("page 2");
    let names: Vec<String> = page.into_iter().map(|q| q.name).collect();
    assert_eq!(names, ["p3", "p4", "p5"], "by vhost then name, three a page");
    let nodes = admin.list_nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1);

    let (status, body) =
        api(&b, "/api/queues?page=3&page_size=3&columns=name,vhost&name=p&sort=name&sort_reverse=true").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["total_count"].as_u64(), v["filtered_count"].as_u64(), v["page_count"].as_u64()),
        (Some(7), Some(7), Some(3))
    );
    assert_eq!(
        v["items"],
        serde_json::json!([{"name": "p0", "vhost": "orders"}]),
        "the last page, columns kept"
    );
    let (status, body) = api(&b, "/api/queues?name=%5Ep%5B12%5D%24&use_regex=true&columns=name").await;
    assert_eq!((status, body.as_str()), (200, r#"[{"name":"p1"},{"name":"p2"}]"#));
    let (status, _) = api(&b, "/api/queues?page=1&page_size=501").await;
    assert_eq!(status, 400, "RabbitMQ's page size limit");
    let (status, body) = api(&b, "/api/policies").await;
    assert_eq!((status, body.as_str()), (200, "[]"));
}

/// A GET as guest; (status, body).
async fn api(b: &TestBroker, path: &str) -> (u16, String) {
    common::http(b, "GET", path).await
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_health_checks_and_the_overview_name_what_the_node_listens_on() {
    let b = broker().await;
    let admin = client(&b, "guest", "guest");
    admin.health_check_port_listener(b.addr.port()).await.expect("the AMQP port");
    let e = admin.health_check_port_listener(1).await.expect_err("nothing on port 1");
    assert!(format!("{e:?}").contains("503"), "{e:?}");
    let (status, _) = api(&b, "/api/health/checks/protocol-listener/amqp").await;
    assert_eq!(status, 200);
    let (status, body) = api(&b, "/api/health/checks/protocol-listener/mqtt").await;
    assert_eq!(status, 503, "{body}");
    let overview = admin.overview().await.expect("overview");
    assert!(
        overview.listeners.iter().any(|l| l.protocol == "amqp" && l.port == u32::from(b.addr.port())),
        "{:?}",
        overview.listeners
    );
}
