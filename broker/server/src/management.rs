//! The management HTTP API: what an operator asks of a running broker.
//!
//! - `GET /api/queues`: every queue with its depth, consumers, dead-letter counts by reason,
//!   retry-delayed messages, and whether it receives dead letters.
//! - `POST /api/queues/{vhost}/{queue}/replay[?count=N]`: moves up to N (default all)
//!   messages from a dead-letter queue back to the queue each last died in.
//!
//! Every route needs HTTP basic auth as one of the broker's users, as RabbitMQ's does: a
//! read needs one of the tags `administrator`, `monitoring`, `policymaker` or `management`, a
//! change needs `administrator`; a loopback-only user (guest) only from loopback. Users other
//! than `administrator` and `monitoring` see only the vhosts they have permissions on, and a
//! change in a vhost needs permissions there whatever the tags. A request
//! whose `Origin` is not the host it was sent to is refused, so a web page elsewhere cannot
//! use a browser's stored credentials (CSRF); one whose `Host` is a name other than
//! `localhost` is refused too, so a page that rebinds its DNS name to this machine cannot
//! reach the API at all (address it by IP, or put a proxy in front for a DNS name).

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use warren_core::auth::User;
use warren_core::broker::ReplayReport;
use warren_core::deadletter::Reason;

use crate::node::NodeRef;
use crate::shared::lock;

/// The API's routes over the shared broker state; `hosts` are the names it answers to
/// besides IP addresses and `localhost` (`management-hosts`).
pub fn router(node: NodeRef, hosts: Vec<String>) -> Router {
    let gate = Gate { node: node.clone(), hosts: std::sync::Arc::from(hosts) };
    Router::new()
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{vhost}/{queue}/replay", post(replay))
        .layer(axum::middleware::from_fn_with_state(gate, authorize))
        .with_state(node)
}

/// What [`authorize`] checks requests against.
#[derive(Clone)]
struct Gate {
    node: NodeRef,
    hosts: std::sync::Arc<[String]>,
}

/// RabbitMQ's realm, so its tools' prompts read the same.
const CHALLENGE: &str = "Basic realm=\"RabbitMQ Management\"";

/// Lets a request through only from an allowed user, and never cross-origin.
async fn authorize(
    State(gate): State<Gate>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let node = gate.node;
    if !same_origin(req.headers()) {
        return refuse(StatusCode::FORBIDDEN, "cross-origin requests are refused");
    }
    if !host_allowed(req.headers(), &gate.hosts) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the Host header must be an IP address, localhost, or a name listed in management-hosts",
        );
    }
    let Some((name, password)) = basic_credentials(req.headers()) else {
        return challenge();
    };
    let user = {
        let s = lock(node.default_broker());
        warren_core::auth::check_password(s.broker.users(), &name, &password, is_loopback(peer.ip())).cloned()
    };
    let user = match user {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "management API login refused");
            return challenge();
        }
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let allowed = if reads {
        ["administrator", "monitoring", "policymaker", "management"].iter().any(|t| user.has_tag(t))
    } else {
        user.has_tag("administrator")
    };
    if !allowed {
        return refuse(StatusCode::FORBIDDEN, &format!("user '{}' may not {} this", user.name, req.method()));
    }
    // The handlers scope what they show and do by who asked.
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// Whether `user` may see vhost `vhost`: `administrator` and `monitoring` see every vhost,
/// as in RabbitMQ; other tags only those they have permissions on.
fn sees(node: &NodeRef, user: &User, vhost: &str) -> bool {
    user.has_tag("administrator")
        || user.has_tag("monitoring")
        || lock(node.default_broker()).broker.access().may_open(&user.name, vhost)
}

fn challenge() -> Response {
    let body = Json(json!({"error": "not_authorised", "reason": "Login failed"}));
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, CHALLENGE)], body).into_response()
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({"error": "not_authorised", "reason": reason}))).into_response()
}

/// The user and password of a `Basic` Authorization header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// No `Origin` (a tool, not a browser page), or one naming the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let origin = origin.to_str().unwrap_or_default();
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// A `Host` that is an IP address, `localhost` or one of `names`, with or without a port. A
/// page that rebinds its own DNS name to this machine sends that name, and is refused with it,
/// even before a password is tried.
fn host_allowed(headers: &HeaderMap, names: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::Ipv4Addr>().is_ok()
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Loopback, including IPv4 loopback on a dual-stack socket (`::ffff:127.0.0.1`).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

async fn list_queues(State(node): State<NodeRef>, Extension(user): Extension<User>) -> Json<Value> {
    let mut snapshots = Vec::new();
    for (_, shared) in node.brokers() {
        let queues = crate::metrics::queue_snapshots(&lock(shared).broker);
        snapshots.extend(queues.into_iter().filter(|q| sees(&node, &user, &q.vhost)));
    }
    let mut queues: Vec<Value> = snapshots
        .iter()
        .map(|q| {
            let dead: serde_json::Map<String, Value> = Reason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), json!(q.dead_lettered[*r as usize])))
                .collect();
            json!({
                "vhost": q.vhost,
                "name": q.name,
                "durable": q.durable,
                "messages_ready": q.ready,
                "messages_unacknowledged": q.unacked,
                "message_bytes_ready": q.bytes,
                "consumers": q.consumers,
                "retry_delayed": q.delayed,
                "dead_lettered": dead,
                "dead_letter_target": q.dead_letter_target,
            })
        })
        .collect();
    queues.sort_by(|a, b| {
        (a["vhost"].as_str(), a["name"].as_str()).cmp(&(b["vhost"].as_str(), b["name"].as_str()))
    });
    Json(Value::Array(queues))
}

#[derive(Debug, Deserialize)]
struct ReplayQuery {
    count: Option<usize>,
}

async fn replay(
    State(node): State<NodeRef>,
    Extension(user): Extension<User>,
    Path((vhost, queue)): Path<(String, String)>,
    Query(q): Query<ReplayQuery>,
) -> (StatusCode, Json<Value>) {
    // An administrator too needs permissions on the vhost it changes, as in RabbitMQ.
    if !lock(node.default_broker()).broker.access().may_open(&user.name, &vhost) {
        let reason = format!("user '{}' has no permissions on vhost '{vhost}'", user.name);
        return (StatusCode::FORBIDDEN, Json(json!({"error": "not_authorised", "reason": reason})));
    }
    // A vhost the configuration dropped is kept, closed, by the broker of `/`.
    let shared = node.broker(&vhost).unwrap_or(node.default_broker()).clone();
    let Some(vh) = lock(&shared).broker.vhosts().id(&vhost) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": format!("no vhost '{vhost}'")})));
    };
    let limit = q.count.unwrap_or(usize::MAX);
    let mut total = ReplayReport::default();
    loop {
        let result = {
            let mut s = lock(&shared);
            let r = s.broker.replay_dead_letters(
                vh,
                &queue,
                REPLAY_BATCH,
                limit - total.moved,
                total.next,
                total.end,
            );
            s.wake_all();
            r
        };
        match result {
            Ok(r) => {
                total.moved += r.moved;
                total.skipped += r.skipped;
                total.refused += r.refused;
                total.next = r.next;
                total.end = r.end;
            }
            Err(e) => return (StatusCode::NOT_FOUND, Json(json!({"error": e.text}))),
        }
        if total.next.is_none() || total.moved >= limit {
            break;
        }
        // Other connections get the lock between batches.
        tokio::task::yield_now().await;
    }
    let ReplayReport { moved, skipped, refused, .. } = total;
    tracing::info!(%vhost, %queue, moved, skipped, refused, "dead-letter queue replayed");
    (StatusCode::OK, Json(json!({"moved": moved, "skipped": skipped, "refused": refused})))
}

/// Messages a replay looks at per turn of the broker lock.
const REPLAY_BATCH: usize = 1000;
