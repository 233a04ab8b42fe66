//! The management API is not an open door: basic auth against the broker's users with
//! RabbitMQ's tags, no cross-origin requests, and bounded HTTP connections.

mod common;

use std::time::Duration;

use common::{TestBroker, http_raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_core::auth::User;

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}\r\n")
}

/// guest, a `monitoring` user and one with no tag, each with password "pw" but guest.
fn users() -> Vec<User> {
    let user = |name: &str, tags: &[&str]| User {
        name: name.into(),
        password: warren_core::password::Password::plain("pw"),
        loopback_only: false,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        limits: Default::default(),
    };
    vec![User::guest(), user("watcher", &["monitoring"]), user("app", &[])]
}

async fn broker() -> TestBroker {
    TestBroker::start_with(|s| s.users = users()).await
}

#[tokio::test]
async fn every_route_needs_a_user_and_writes_need_an_administrator() {
    let b = broker().await;
    let api = b.management.expect("management on");
    let replay = "/api/queues/%2F/none/replay";
    // No credentials, or wrong ones: 401 with a challenge.
    for auth in
        [String::new(), basic("guest", "wrong"), basic("nobody", "pw"), "Authorization: Bearer x\r\n".into()]
    {
        let (status, head, _) = http_raw(api, "GET", "/api/queues", &auth).await;
        assert_eq!(status, 401, "{auth:?}");
        assert!(
            head.to_ascii_lowercase().contains("www-authenticate: basic realm=\"rabbitmq management\""),
            "{head}"
        );
        assert_eq!(http_raw(api, "POST", replay, &auth).await.0, 401);
    }
    // A user without a management tag may not use the API at all.
    assert_eq!(http_raw(api, "GET", "/api/queues", &basic("app", "pw")).await.0, 403);
    // monitoring reads but does not change.
    assert_eq!(http_raw(api, "GET", "/api/queues", &basic("watcher", "pw")).await.0, 200);
    assert_eq!(http_raw(api, "POST", replay, &basic("watcher", "pw")).await.0, 403);
    // guest is an administrator, from loopback.
    assert_eq!(http_raw(api, "GET", "/api/queues", &basic("guest", "guest")).await.0, 200);
    assert_eq!(
        http_raw(api, "POST", replay, &basic("guest", "guest")).await.0,
        404,
        "past auth: no such queue"
    );
}

#[tokio::test]
async fn a_request_from_a_foreign_origin_is_refused_even_with_credentials() {
    let b = broker().await;
    let api = b.management.expect("management on");
    let guest = basic("guest", "guest");
    let foreign = format!("{guest}Origin: http://evil.example\r\n");
    assert_eq!(http_raw(api, "POST", "/api/queues/%2F/q/replay", &foreign).await.0, 403);
    assert_eq!(http_raw(api, "GET", "/api/queues", &foreign).await.0, 403);
    // The API's own origin (a page it serves) is fine.
    let own = format!("{guest}Origin: http://{api}\r\n");
    assert_eq!(http_raw(api, "GET", "/api/queues", &own).await.0, 200);
    // DNS rebinding: a page whose name now points here sends its own name as Host and
    // Origin, consistently; the name itself is refused.
    let port = api.port();
    let rebound =
        format!("{guest}Host: attacker.example:{port}\r\nOrigin: http://attacker.example:{port}\r\n");
    assert_eq!(http_raw(api, "GET", "/api/queues", &rebound).await.0, 403);
    let local = format!("{guest}Host: localhost:{port}\r\n");
    assert_eq!(http_raw(api, "GET", "/api/queues", &local).await.0, 200);
    let v6 = format!("{guest}Host: [::1]:{port}\r\n");
    assert_eq!(http_raw(api, "GET", "/api/queues", &v6).await.0, 200);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    let b = broker().await;
    let api = b.management.expect("management on");
    let mut s = tokio::net::TcpStream::connect(api).await.expect("connect");
    s.write_all(b"GET /api/queues HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    // ...and nothing more. The server closes it after the header timeout.
    let mut rest = Vec::new();
    let limit = warren::http::HEADER_TIMEOUT + Duration::from_secs(5);
    let read = tokio::time::timeout(limit, s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still open after {limit:?}");
    // Other clients were served meanwhile and still are.
    assert_eq!(http_raw(api, "GET", "/api/queues", &basic("guest", "guest")).await.0, 200);
}

#[tokio::test]
async fn names_in_management_hosts_are_answered_and_others_refused() {
    let b = TestBroker::start_with(|s| s.management_hosts = vec!["broker.example".into()]).await;
    let api = b.management.expect("management on");
    let port = api.port();
    let guest = basic("guest", "guest");
    let named = format!("{guest}Host: Broker.Example:{port}\r\n");
    assert_eq!(http_raw(api, "GET", "/api/queues", &named).await.0, 200, "a listed name");
    let other = format!("{guest}Host: other.example:{port}\r\n");
    assert_eq!(http_raw(api, "GET", "/api/queues", &other).await.0, 403, "a name not listed");
}

#[tokio::test]
async fn one_address_cannot_take_every_http_connection() {
    let b = broker().await;
    let api = b.management.expect("management on");
    let mut held = Vec::new();
    for _ in 0..warren::http::MAX_CONNECTIONS_PER_IP {
        held.push(tokio::net::TcpStream::connect(api).await.expect("connect"));
    }
    // Accepted in order: once the last held one is being served, the next is over the cap.
    held.last_mut()
        .expect("held")
        .write_all(b"GET /api/queues HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = tokio::net::TcpStream::connect(api).await.expect("connect");
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the connection over the per-address cap stays open: {closed:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http_raw(api, "GET", "/api/queues", &basic("guest", "guest")).await.0, 200, "slots come back");
}

/// Every route of the API, with a method it answers.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/overview"),
    ("GET", "/api/whoami"),
    ("GET", "/api/definitions"),
    ("POST", "/api/definitions"),
    ("GET", "/api/vhosts"),
    ("GET", "/api/vhosts/%2F"),
    ("PUT", "/api/vhosts/v"),
    ("DELETE", "/api/vhosts/v"),
    ("GET", "/api/vhosts/%2F/permissions"),
    ("GET", "/api/users"),
    ("GET", "/api/users/guest"),
    ("PUT", "/api/users/u"),
    ("DELETE", "/api/users/u"),
    ("GET", "/api/users/guest/permissions"),
    ("GET", "/api/permissions"),
    ("GET", "/api/permissions/%2F/guest"),
    ("PUT", "/api/permissions/%2F/guest"),
    ("DELETE", "/api/permissions/%2F/guest"),
    ("GET", "/api/topic-permissions"),
    ("GET", "/api/topic-permissions/%2F/guest"),
    ("PUT", "/api/topic-permissions/%2F/guest"),
    ("DELETE", "/api/topic-permissions/%2F/guest"),
    ("PUT", "/api/user-limits/guest/max-connections"),
    ("DELETE", "/api/user-limits/guest/max-connections"),
    ("PUT", "/api/vhost-limits/%2F/max-queues"),
    ("DELETE", "/api/vhost-limits/%2F/max-queues"),
    ("GET", "/api/exchanges"),
    ("GET", "/api/exchanges/%2F"),
    ("GET", "/api/exchanges/%2F/amq.direct"),
    ("PUT", "/api/exchanges/%2F/x"),
    ("DELETE", "/api/exchanges/%2F/x"),
    ("POST", "/api/exchanges/%2F/amq.direct/publish"),
    ("GET", "/api/exchanges/%2F/amq.direct/bindings/source"),
    ("GET", "/api/exchanges/%2F/amq.direct/bindings/destination"),
    ("GET", "/api/bindings"),
    ("GET", "/api/bindings/%2F"),
    ("POST", "/api/bindings/%2F/e/amq.direct/q/q"),
    ("DELETE", "/api/bindings/%2F/e/amq.direct/q/q/k"),
    ("GET", "/api/queues"),
    ("GET", "/api/queues/%2F"),
    ("GET", "/api/queues/%2F/q"),
    ("PUT", "/api/queues/%2F/q"),
    ("DELETE", "/api/queues/%2F/q"),
    ("DELETE", "/api/queues/%2F/q/contents"),
    ("POST", "/api/queues/%2F/q/get"),
    ("GET", "/api/queues/%2F/q/bindings"),
    ("POST", "/api/queues/%2F/q/replay"),
    ("GET", "/api/replays"),
    ("POST", "/api/replays"),
    ("GET", "/api/replays/1"),
    ("DELETE", "/api/replays/1"),
    ("GET", "/api/connections"),
    ("GET", "/api/connections/c"),
    ("DELETE", "/api/connections/c"),
    ("GET", "/api/channels"),
    ("GET", "/api/consumers"),
    ("GET", "/api/policies"),
    ("GET", "/api/policies/%2F"),
    ("GET", "/api/policies/%2F/p"),
    ("PUT", "/api/policies/%2F/p"),
    ("DELETE", "/api/policies/%2F/p"),
    ("GET", "/api/nodes"),
    ("GET", "/api/health/checks/alarms"),
    ("GET", "/api/health/checks/local-alarms"),
    ("GET", "/api/health/checks/virtual-hosts"),
    ("GET", "/api/health/checks/node-is-quorum-critical"),
    ("GET", "/api/health/checks/port-listener/5672"),
    ("GET", "/api/health/checks/protocol-listener/amqp"),
];

#[tokio::test]
async fn no_route_answers_without_credentials_and_monitoring_changes_nothing() {
    // Permissions for guest alone: tags open the API, permissions decide vhost changes.
    let b = TestBroker::start_with(|s| {
        s.users = users();
        let all = warren_core::permissions::Pattern::new(".*").expect("pattern");
        let guest = warren_core::permissions::Permission {
            user: "guest".into(),
            vhost: "/".into(),
            configure: all.clone(),
            write: all.clone(),
            read: all,
        };
        s.access = std::sync::Arc::new(warren_core::permissions::Access::rules(vec![guest], Vec::new()));
    })
    .await;
    let api = b.management.expect("management on");
    for (method, path) in ROUTES {
        let (status, _, _) = http_raw(api, method, path, "").await;
        assert_eq!(status, 401, "{method} {path} without credentials");
        let (status, _, _) = http_raw(api, method, path, &basic("app", "pw")).await;
        assert_eq!(status, 403, "{method} {path} as a user without a management tag");
        // Closing a connection is checked against the connection (below).
        if *method != "GET" && *path != "/api/connections/c" {
            let (status, _, body) = http_raw(api, method, path, &basic("watcher", "pw")).await;
            assert_eq!(status, 403, "{method} {path} as monitoring: {body}");
        }
    }
    // Another user's connection is an administrator's to close.
    let conn =
        lapin::Connection::connect(&b.uri(), lapin::ConnectionProperties::default()).await.expect("guest");
    let (_, _, list) = http_raw(api, "GET", "/api/connections", &basic("watcher", "pw")).await;
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let name = list[0]["name"].as_str().expect("a connection").to_string();
    let path =
        format!("/api/connections/{}", name.replace(' ', "%20").replace('>', "%3E").replace(':', "%3A"));
    let (status, _, body) = http_raw(api, "DELETE", &path, &basic("watcher", "pw")).await;
    assert_eq!(status, 403, "{body}");
    assert!(conn.status().connected());
    // Password hashes: in a definitions export for an administrator, nowhere else.
    for (method, path) in ROUTES.iter().filter(|(m, p)| *m == "GET" && *p != "/api/definitions") {
        let (_, _, body) = http_raw(api, method, path, &basic("guest", "guest")).await;
        assert!(!body.contains("password_hash"), "{path}: {body}");
    }
    let (_, _, body) = http_raw(api, "GET", "/api/definitions", &basic("guest", "guest")).await;
    assert!(body.contains("password_hash"));
    let (status, _, _) = http_raw(api, "GET", "/api/definitions", &basic("watcher", "pw")).await;
    assert_eq!(status, 403);
    // The UI's files need no login; they carry no data.
    let (status, _, body) = http_raw(api, "GET", "/", "").await;
    assert!(status == 200 && body.contains("/ui/app.js"));
}
