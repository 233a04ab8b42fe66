//! The management HTTP API: what an operator asks of a running broker.
//!
//! - RabbitMQ's read routes (`api`): overview, whoami, vhosts, users, permissions, topic
//!   permissions, exchanges, bindings, queues (with Warren's dead-letter counts by reason,
//!   retry-delayed messages, and whether a queue receives dead letters), health checks.
//! - Dead-letter replay (`replay`): `POST /api/queues/{vhost}/{queue}/replay[?count=N]` moves
//!   up to N (default all) messages from a dead-letter queue back to the queue each last died
//!   in and answers when done; `/api/replays` runs the same as a rate-limited background
//!   task that can be listed and cancelled, in the manner of SQS's message move tasks.
//! - The directory's changes (`access`): users, vhosts, permissions, limits, policies, and
//!   the definitions import (`definitions`).
//! - The web UI (`ui`): `/` and its two files, embedded.
//! - The cluster (`cluster`): `/api/cluster`, the members in `/api/nodes`, the
//!   `node-is-quorum-critical` check.
//!
//! Every route needs HTTP basic auth as one of the broker's users, as RabbitMQ's does, with
//! one of the tags `administrator`, `monitoring`, `policymaker` or `management`; a
//! loopback-only user (guest) only from loopback. Declaring, deleting, binding, purging,
//! getting and publishing (`ops`) run as the user's own session, so its permissions decide
//! them as they decide a client's; a replay needs `administrator`. Users other
//! than `administrator` and `monitoring` see only the vhosts they have permissions on, and a
//! change in a vhost needs permissions there whatever the tags. A request
//! whose `Origin` is not the host it was sent to is refused, so a web page elsewhere cannot
//! use a browser's stored credentials (CSRF); one whose `Host` is a name other than
//! `localhost` is refused too, so a page that rebinds its DNS name to this machine cannot
//! reach the API at all (address it by IP, or put a proxy in front for a DNS name).

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;
use warren_core::auth::User;

use crate::node::NodeRef;

mod access;
mod api;
mod cluster;
mod definitions;
mod listing;
mod ops;
mod replay;

pub use replay::Replays;
use std::sync::Arc;
mod ui;

/// The API's routes over the shared broker state; `hosts` are the names it answers to
/// besides IP addresses and `localhost` (`management-hosts`).
pub fn router(node: NodeRef, hosts: Vec<String>, listeners: Vec<Listener>, replays: Arc<Replays>) -> Router {
    let gate = Gate { node: node.clone(), hosts: std::sync::Arc::from(hosts) };
    let listeners = axum::Extension(std::sync::Arc::new(listeners));
    let replays = axum::Extension(replays);
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/api/overview", get(api::overview))
        .route("/api/whoami", get(api::whoami))
        .route(
            "/api/definitions",
            get(definitions::export)
                .post(definitions::import)
                .layer(axum::extract::DefaultBodyLimit::max(definitions::MAX_IMPORT_BYTES)),
        )
        .route("/api/vhosts", get(api::vhosts))
        .route("/api/vhosts/{vhost}", get(api::vhost).put(access::put_vhost).delete(access::delete_vhost))
        .route("/api/vhosts/{vhost}/permissions", get(api::vhost_permissions))
        .route("/api/users", get(api::users))
        .route("/api/users/{user}", get(api::one_user).put(access::put_user).delete(access::delete_user))
        .route("/api/users/{user}/permissions", get(api::user_permissions))
        .route("/api/permissions", get(api::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(api::permission).put(access::put_permission).delete(access::delete_permission),
        )
        .route("/api/topic-permissions", get(api::topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(api::user_topic_permissions)
                .put(access::put_topic_permission)
                .delete(access::delete_topic_permissions),
        )
        .route(
            "/api/user-limits/{user}/{name}",
            axum::routing::put(|s, v, p, b| access::put_limit(s, v, p, b, access::Owner::User))
                .delete(|s, v, p| access::delete_limit(s, v, p, access::Owner::User)),
        )
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            axum::routing::put(|s, v, p, b| access::put_limit(s, v, p, b, access::Owner::VHost))
                .delete(|s, v, p| access::delete_limit(s, v, p, access::Owner::VHost)),
        )
        .route("/api/exchanges", get(|s, v| api::all(s, v, api::exchanges_of)))
        .route("/api/exchanges/{vhost}", get(|s, v, p| api::in_vhost(s, v, p, api::exchanges_of)))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(api::exchange).put(ops::declare_exchange).delete(ops::delete_exchange),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(ops::publish))
        .route("/api/exchanges/{vhost}/{name}/bindings/{end}", get(api::exchange_bindings))
        .route("/api/bindings", get(|s, v| api::all(s, v, api::bindings_of)))
        .route("/api/bindings/{vhost}", get(|s, v, p| api::in_vhost(s, v, p, api::bindings_of)))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}", post(ops::bind))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", delete(ops::unbind))
        .route("/api/queues", get(|s, v| api::all(s, v, api::queues_of)))
        .route("/api/queues/{vhost}", get(|s, v, p| api::in_vhost(s, v, p, api::queues_of)))
        .route(
            "/api/queues/{vhost}/{queue}",
            get(api::queue).put(ops::declare_queue).delete(ops::delete_queue),
        )
        .route("/api/queues/{vhost}/{queue}/contents", delete(ops::purge_queue))
        .route("/api/queues/{vhost}/{queue}/get", post(ops::get))
        .route("/api/queues/{vhost}/{queue}/bindings", get(api::queue_bindings))
        .route("/api/queues/{vhost}/{queue}/replay", post(replay::replay_now))
        .route("/api/replays", get(replay::list).post(replay::start))
        .route("/api/replays/{id}", get(replay::one).delete(replay::cancel))
        .route("/api/connections", get(api::connections))
        .route("/api/connections/{name}", get(api::connection).delete(api::close_connection))
        .route("/api/channels", get(api::channels))
        .route("/api/consumers", get(api::consumers))
        .route("/api/policies", get(api::policies))
        .route("/api/policies/{vhost}", get(api::vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(api::one_policy).put(access::put_policy).delete(access::delete_policy),
        )
        .route("/api/nodes", get(api::nodes))
        .route("/api/cluster", get(cluster::status))
        .route("/api/cluster/join", post(cluster::join))
        .route("/api/cluster/leave", post(cluster::leave))
        .route("/api/cluster/forget", post(cluster::forget))
        .route("/api/health/checks/port-listener/{port}", get(api::port_listener))
        .route("/api/health/checks/protocol-listener/{protocol}", get(api::protocol_listener))
        .route("/api/health/checks/alarms", get(api::alarms))
        .route("/api/health/checks/local-alarms", get(api::alarms))
        .route("/api/health/checks/virtual-hosts", get(api::vhosts_health))
        .route("/api/health/checks/node-is-quorum-critical", get(cluster::quorum_critical))
        .layer(listeners)
        .layer(replays)
        .layer(axum::middleware::from_fn(listing::shape))
        .layer(axum::middleware::from_fn_with_state(gate, authorize))
        .with_state(node)
}

/// A listener the node serves on, for the health checks and the overview.
#[derive(Debug, Clone)]
pub struct Listener {
    /// RabbitMQ's protocol name: `amqp`, `amqp/ssl`, `amqp/quic`, `http`, `http/prometheus`.
    pub protocol: &'static str,
    /// Where it is bound.
    pub addr: std::net::SocketAddr,
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
    // The UI's files hold no data: they are served to anyone who may reach the listener,
    // and the page asks for a login before it reads anything. Only those three paths: any
    // other route needs a login, whatever it is added as.
    if ui::PUBLIC.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some((name, password)) = basic_credentials(req.headers()) else {
        return challenge();
    };
    // Copied out, and the password hashed after: no request holds `/`'s lock for a hash.
    // The directory as it is now, without a broker lock: the password is hashed after.
    let dir = node.directory().load();
    let user =
        warren_core::auth::check_password(&dir.users, &name, &password, is_loopback(peer.ip())).cloned();
    let user = match user {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "management API login refused");
            // A page's script (the web UI) says so, and gets no challenge: one would make its
            // request wait on the browser's own login prompt. Tools get RabbitMQ's answer.
            let scripted = req.headers().get("x-requested-with").is_some_and(|v| v == "XMLHttpRequest");
            if scripted {
                let body = Json(json!({"error": "not_authorised", "reason": "Login failed"}));
                return (StatusCode::UNAUTHORIZED, body).into_response();
            }
            return challenge();
        }
    };
    // Any of the management tags opens the API, as in RabbitMQ; what a request may then do
    // is its handler's to decide: vhost-scoped changes go through the user's permissions
    // (`ops`), and the rest name the tag they need.
    let allowed =
        ["administrator", "monitoring", "policymaker", "management"].iter().any(|t| user.has_tag(t));
    if !allowed {
        return refuse(StatusCode::FORBIDDEN, &format!("user '{}' may not {} this", user.name, req.method()));
    }
    // The handlers scope what they show and do by who asked.
    req.extensions_mut().insert(Viewer { user, dir });
    let mut response = next.run(req).await;
    // API answers (a definitions export holds password hashes) are never cached nor sniffed.
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, axum::http::HeaderValue::from_static("nosniff"));
    response
}

/// Who asked, with the directory as it was when it did: what a handler shows and does is
/// scoped by it, without taking a broker lock to ask.
#[derive(Clone)]
pub(super) struct Viewer {
    pub(super) user: User,
    pub(super) dir: std::sync::Arc<warren_core::directory::Directory>,
}

impl Viewer {
    /// Whether the user may see vhost `vhost`: `administrator` and `monitoring` see every
    /// vhost, as in RabbitMQ; other tags only those they have permissions on.
    pub(super) fn sees(&self, vhost: &str) -> bool {
        self.user.has_tag("administrator") || self.user.has_tag("monitoring") || self.may_change(vhost)
    }

    /// Whether the user may change things in vhost `vhost`: it has permissions there,
    /// whatever its tags (as in RabbitMQ).
    pub(super) fn may_change(&self, vhost: &str) -> bool {
        self.dir.access.may_open(&self.user.name, vhost)
    }
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
