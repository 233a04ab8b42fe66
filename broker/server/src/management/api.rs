//! RabbitMQ's management API, the reading half: the paths, JSON shapes and status codes its
//! tools rely on (checked with the RabbitMQ team's own client, `rabbitmq_http_client`).
//!
//! Each handler copies what it shows out of one broker at a time, under that broker's lock,
//! and builds the JSON after. What a user sees is scoped as in RabbitMQ: `administrator` and
//! `monitoring` see every vhost, other users the vhosts they have permissions on; users and
//! permissions are an administrator's to read, and password hashes are never shown here.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warren_codec::{FieldTable, FieldValue};
use warren_core::auth::User;
use warren_core::deadletter::Reason;
use warren_core::exchange::Destination;
use warren_core::permissions::Access;

use super::Viewer;
use crate::node::NodeRef;
use crate::shared::lock;

/// A handler's answer: JSON, or RabbitMQ's error object with its status.
pub(super) type Reply = Result<Json<Value>, (StatusCode, Json<Value>)>;

/// RabbitMQ's 404 body.
pub(super) fn not_found() -> (StatusCode, Json<Value>) {
    (StatusCode::NOT_FOUND, Json(json!({"error": "Object Not Found", "reason": "Not Found"})))
}

fn forbidden(reason: &str) -> (StatusCode, Json<Value>) {
    (StatusCode::FORBIDDEN, Json(json!({"error": "not_authorised", "reason": reason})))
}

/// The node's name as the API shows it (`warren@HOST`, as RabbitMQ's `rabbit@HOST`).
pub(super) fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("warren@{}", if host.is_empty() { "localhost" } else { host })
}

/// A field value as RabbitMQ's API renders arguments.
pub(super) fn field_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::I8(n) => json!(n),
        FieldValue::U8(n) => json!(n),
        FieldValue::I16(n) => json!(n),
        FieldValue::U16(n) => json!(n),
        FieldValue::I32(n) => json!(n),
        FieldValue::U32(n) => json!(n),
        FieldValue::I64(n) => json!(n),
        FieldValue::F32(n) => json!(n),
        FieldValue::F64(n) => json!(n),
        FieldValue::Timestamp(n) => json!(n),
        FieldValue::Decimal(d) => json!(format!("{d:?}")),
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => json!(String::from_utf8_lossy(b)),
        FieldValue::Array(a) => Value::Array(a.iter().map(field_json).collect()),
        FieldValue::Table(t) => table_json(t),
        FieldValue::Void => Value::Null,
    }
}

/// A field table as a JSON object.
pub(super) fn table_json(t: &FieldTable) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.clone(), field_json(v))).collect())
}

/// A binding's `properties_key`, which names it in RabbitMQ's paths, built as RabbitMQ builds
/// it: the routing key with `%` and `~` escaped (`~` alone for an empty key without
/// arguments), then `~` and a digest of the arguments' wire form when it has any, so no two
/// bindings of a source and destination share one.
pub(super) fn properties_key(key: &str, args: &FieldTable) -> String {
    use std::hash::{Hash, Hasher};
    if key.is_empty() && args.is_empty() {
        return "~".to_string();
    }
    let quoted = key.replace('%', "%25").replace('~', "%7E");
    if args.is_empty() {
        return quoted;
    }
    // The wire form tells types apart (a 32-bit from a 64-bit integer), as RabbitMQ's
    // digest of the Erlang term does; a fixed-key hasher gives the same name every time.
    let mut wire = bytes::BytesMut::new();
    warren_codec::field::encode_table(&mut warren_codec::wire::Writer::new(&mut wire), args);
    let mut h = std::hash::DefaultHasher::new();
    wire.hash(&mut h);
    format!("{quoted}~{:016x}", h.finish())
}

/// What lists one kind of object of the vhosts a viewer sees (one vhost when given).
pub(super) type Lister = fn(&NodeRef, &Viewer, Option<&str>) -> Vec<Value>;

/// `GET /api/{kind}`: every visible vhost's.
pub(super) async fn all(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    of: Lister,
) -> Json<Value> {
    Json(Value::Array(of(&node, &viewer, None)))
}

/// `GET /api/{kind}/{vhost}`: one vhost's, a 404 for one the viewer cannot see.
pub(super) async fn in_vhost(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(vhost): Path<String>,
    of: Lister,
) -> Reply {
    known_vhost(&node, &viewer, &vhost)?;
    Ok(Json(Value::Array(of(&node, &viewer, Some(&vhost)))))
}

/// `GET /api/whoami`.
pub(super) async fn whoami(Extension(viewer): Extension<Viewer>) -> Json<Value> {
    Json(json!({"name": viewer.user.name, "tags": viewer.user.tags}))
}

/// The vhosts of the node, `/` first: those of the directory, open, and those `/`'s broker
/// keeps closed because stored data names them.
pub(super) fn vhost_names(node: &NodeRef) -> Vec<(String, bool)> {
    let dir = node.directory().load();
    let mut names: Vec<(String, bool)> = std::iter::once("/")
        .chain(dir.vhosts.keys().map(String::as_str).filter(|v| *v != "/"))
        .map(|v| (v.to_string(), true))
        .collect();
    let s = lock(node.default_broker());
    for (_, v) in s.broker.vhosts().iter() {
        let kept = v.queues().next().is_some() || v.exchanges().any(|(n, _)| !n.starts_with("amq."));
        if !dir.vhosts.contains_key(&*v.name) && kept {
            names.push((v.name.to_string(), false));
        }
    }
    names
}

fn vhost_json(name: &str, open: bool) -> Value {
    let description = if name == "/" { "Default virtual host" } else { "" };
    json!({
        "name": name,
        "description": description,
        "tags": [],
        "default_queue_type": "classic",
        "metadata": {"description": description, "tags": [], "default_queue_type": "classic"},
        "tracing": false,
        // Warren's: a vhost the configuration dropped keeps its data but takes no connection.
        "open": open,
    })
}

/// `GET /api/vhosts`.
pub(super) async fn vhosts(State(node): State<NodeRef>, Extension(viewer): Extension<Viewer>) -> Json<Value> {
    let list = vhost_names(&node).into_iter().filter(|(n, _)| viewer.sees(n)).map(|(n, o)| vhost_json(&n, o));
    Json(Value::Array(list.collect()))
}

/// `GET /api/vhosts/{vhost}`.
pub(super) async fn vhost(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Reply {
    let found = vhost_names(&node).into_iter().find(|(n, _)| *n == name).filter(|(n, _)| viewer.sees(n));
    found.map(|(n, o)| Json(vhost_json(&n, o))).ok_or_else(not_found)
}

fn users_of(node: &NodeRef) -> (Vec<User>, Access) {
    let dir = node.directory().load();
    (dir.users.clone(), dir.access.clone())
}

fn user_json(u: &User) -> Value {
    // Never the hash: RabbitMQ's API shows it here; Warren only in a definitions export.
    json!({"name": u.name, "tags": u.tags, "limits": user_limits_json(&u.limits)})
}

/// A user's limits as RabbitMQ shows them: only those set.
pub(super) fn user_limits_json(l: &warren_core::auth::UserLimits) -> Value {
    let mut o = serde_json::Map::new();
    if let Some(n) = l.max_connections {
        o.insert("max-connections".into(), json!(n));
    }
    if let Some(n) = l.max_channels {
        o.insert("max-channels".into(), json!(n));
    }
    Value::Object(o)
}

fn admin(user: &User) -> Result<(), (StatusCode, Json<Value>)> {
    if user.has_tag("administrator") { Ok(()) } else { Err(forbidden("administrator tag needed")) }
}

/// `GET /api/users` (administrators).
pub(super) async fn users(State(node): State<NodeRef>, Extension(viewer): Extension<Viewer>) -> Reply {
    admin(&viewer.user)?;
    Ok(Json(Value::Array(users_of(&node).0.iter().map(user_json).collect())))
}

/// `GET /api/users/{user}` (administrators).
pub(super) async fn one_user(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Reply {
    admin(&viewer.user)?;
    users_of(&node).0.iter().find(|u| u.name == name).map(|u| Json(user_json(u))).ok_or_else(not_found)
}

/// Every permission entry; without configured permissions, what that means: every user may
/// do everything in every vhost.
fn permission_entries(node: &NodeRef) -> Vec<Value> {
    let (users, access) = users_of(node);
    match &access {
        Access::Unrestricted => {
            let vhosts = vhost_names(node);
            let all = |u: &User, v: &str| json!({"user": u.name, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"});
            users.iter().flat_map(|u| vhosts.iter().map(move |(v, _)| all(u, v))).collect()
        }
        Access::Rules { permissions, .. } => permissions
            .iter()
            .map(|p| {
                json!({
                    "user": p.user, "vhost": p.vhost,
                    "configure": p.configure.as_str(), "write": p.write.as_str(), "read": p.read.as_str(),
                })
            })
            .collect(),
    }
}

/// `GET /api/permissions` (administrators).
pub(super) async fn permissions(State(node): State<NodeRef>, Extension(viewer): Extension<Viewer>) -> Reply {
    admin(&viewer.user)?;
    Ok(Json(Value::Array(permission_entries(&node))))
}

/// `GET /api/permissions/{vhost}/{user}` (administrators).
pub(super) async fn permission(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
) -> Reply {
    admin(&viewer.user)?;
    let found = permission_entries(&node).into_iter().find(|p| p["vhost"] == vhost && p["user"] == name);
    found.map(Json).ok_or_else(not_found)
}

/// `GET /api/vhosts/{vhost}/permissions` (administrators).
pub(super) async fn vhost_permissions(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(vhost): Path<String>,
) -> Reply {
    admin(&viewer.user)?;
    Ok(Json(Value::Array(permission_entries(&node).into_iter().filter(|p| p["vhost"] == vhost).collect())))
}

/// `GET /api/users/{user}/permissions` (administrators).
pub(super) async fn user_permissions(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Reply {
    admin(&viewer.user)?;
    Ok(Json(Value::Array(permission_entries(&node).into_iter().filter(|p| p["user"] == name).collect())))
}

fn topic_json(t: &warren_core::permissions::TopicPermission) -> Value {
    json!({
        "user": t.user, "vhost": t.vhost, "exchange": t.exchange,
        "write": t.write_template, "read": t.read_template,
    })
}

/// `GET /api/topic-permissions/{vhost}/{user}` (administrators).
pub(super) async fn user_topic_permissions(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
) -> Reply {
    admin(&viewer.user)?;
    let dir = node.directory().load();
    let list: Vec<Value> = dir
        .access
        .topic_permissions()
        .iter()
        .filter(|t| t.vhost == vhost && t.user == name)
        .map(topic_json)
        .collect();
    if list.is_empty() {
        return Err(not_found());
    }
    Ok(Json(Value::Array(list)))
}

/// `GET /api/topic-permissions` (administrators).
pub(super) async fn topic_permissions(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
) -> Reply {
    admin(&viewer.user)?;
    let list = users_of(&node).1.topic_permissions().iter().map(topic_json).collect();
    Ok(Json(Value::Array(list)))
}

/// The exchanges of the vhosts `user` sees, `vhost` only when given, as RabbitMQ lists them
/// (the default exchange as `""` first in each vhost).
pub(super) fn exchanges_of(node: &NodeRef, viewer: &Viewer, vhost: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for (_, shared) in &node.brokers() {
        let s = lock(shared);
        for (_, v) in s.broker.vhosts().iter() {
            if vhost.is_some_and(|w| w != &*v.name) || !viewer.sees(&v.name) {
                continue;
            }
            let row =
                |name: &str, kind: &str, durable: bool, auto_delete: bool, internal: bool, args: Value| {
                    json!({
                        "name": name, "vhost": &*v.name, "type": kind, "durable": durable,
                        "auto_delete": auto_delete, "internal": internal, "arguments": args,
                        "user_who_performed_action": "",
                    })
                };
            out.push(row("", "direct", true, false, false, json!({})));
            let mut named: Vec<_> = v.exchanges().collect();
            named.sort_by_key(|(n, _)| *n);
            for (name, x) in named {
                out.push(row(name, &x.kind, x.durable, x.auto_delete, x.internal, table_json(&x.arguments)));
            }
        }
    }
    out
}

/// `GET /api/exchanges/{vhost}/{name}` (`amq.default` names the default exchange).
pub(super) async fn exchange(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
) -> Reply {
    known_vhost(&node, &viewer, &vhost)?;
    let name = if name == "amq.default" { String::new() } else { name };
    exchanges_of(&node, &viewer, Some(&vhost))
        .into_iter()
        .find(|x| x["name"] == name)
        .map(Json)
        .ok_or_else(not_found)
}

/// A vhost `user` may see, or RabbitMQ's 404.
fn known_vhost(node: &NodeRef, viewer: &Viewer, vhost: &str) -> Result<(), (StatusCode, Json<Value>)> {
    if vhost_names(node).iter().any(|(n, _)| n == vhost) && viewer.sees(vhost) {
        Ok(())
    } else {
        Err(not_found())
    }
}

/// The bindings of the vhosts `user` sees (`vhost` only when given), the default exchange's
/// implicit one to each queue first, as RabbitMQ lists them.
pub(super) fn bindings_of(node: &NodeRef, viewer: &Viewer, vhost: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for (_, shared) in &node.brokers() {
        let s = lock(shared);
        for (_, v) in s.broker.vhosts().iter() {
            if vhost.is_some_and(|w| w != &*v.name) || !viewer.sees(&v.name) {
                continue;
            }
            let row =
                |source: &str, destination: &str, to_queue: bool, key: &str, args: Value, props: String| {
                    json!({
                        "source": source, "vhost": &*v.name, "destination": destination,
                        "destination_type": if to_queue { "queue" } else { "exchange" },
                        "routing_key": key, "arguments": args, "properties_key": props,
                    })
                };
            let mut queues: Vec<&str> = v.queues().map(|q| &*q.name).collect();
            queues.sort_unstable();
            out.extend(queues.iter().map(|q| row("", q, true, q, json!({}), q.to_string())));
            let mut named: Vec<_> = v.exchanges().collect();
            named.sort_by_key(|(n, _)| *n);
            for (source, x) in named {
                for b in x.bindings() {
                    let (dest, to_queue) = match &b.destination {
                        Destination::Queue(q) => (&**q, true),
                        Destination::Exchange(e) => (&**e, false),
                    };
                    let props = properties_key(&b.key, &b.arguments);
                    out.push(row(source, dest, to_queue, &b.key, table_json(&b.arguments), props));
                }
            }
        }
    }
    out
}

/// `GET /api/queues/{vhost}/{name}/bindings`.
pub(super) async fn queue_bindings(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
) -> Reply {
    known_vhost(&node, &viewer, &vhost)?;
    let all = bindings_of(&node, &viewer, Some(&vhost));
    let mine: Vec<Value> =
        all.into_iter().filter(|b| b["destination_type"] == "queue" && b["destination"] == name).collect();
    if mine.is_empty() {
        return Err(not_found());
    }
    Ok(Json(Value::Array(mine)))
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/source` and `.../destination`: the bindings
/// with that exchange at that end (`amq.default` is the default exchange, as in RabbitMQ).
pub(super) async fn exchange_bindings(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name, end)): Path<(String, String, String)>,
) -> Reply {
    known_vhost(&node, &viewer, &vhost)?;
    let name = if name == "amq.default" { String::new() } else { name };
    let exists = name.is_empty()
        || exchanges_of(&node, &viewer, Some(&vhost)).iter().any(|x| x["name"] == name.as_str());
    if !exists || !(end == "source" || end == "destination") {
        return Err(not_found());
    }
    let list = bindings_of(&node, &viewer, Some(&vhost))
        .into_iter()
        .filter(|b| b[end.as_str()] == name.as_str())
        .filter(|b| end == "source" || b["destination_type"] == "exchange")
        .collect();
    Ok(Json(Value::Array(list)))
}

/// The queues of the vhosts `user` sees (`vhost` only when given), in RabbitMQ's shape with
/// Warren's dead-letter fields beside it.
pub(super) fn queues_of(node: &NodeRef, viewer: &Viewer, vhost: Option<&str>) -> Vec<Value> {
    let name = node_name();
    let mut snapshots = Vec::new();
    // One vhost: only its broker (or `/`'s, which keeps vhosts the configuration dropped).
    let brokers: Vec<crate::shared::SharedRef> = match vhost {
        Some(v) => vec![node.broker(v).unwrap_or_else(|| node.default_broker().clone())],
        None => node.brokers().into_iter().map(|(_, s)| s).collect(),
    };
    for shared in brokers {
        let queues = crate::metrics::queue_snapshots_with(&lock(&shared).broker, true);
        snapshots.extend(
            queues.into_iter().filter(|q| vhost.is_none_or(|v| v == q.vhost) && viewer.sees(&q.vhost)),
        );
    }
    let mut queues: Vec<Value> = snapshots
        .iter()
        .map(|q| {
            let dead: serde_json::Map<String, Value> = Reason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), json!(q.dead_lettered[*r as usize])))
                .collect();
            let (auto_delete, exclusive, arguments) = match &q.decl {
                Some(d) => (d.auto_delete, d.exclusive, table_json(&d.arguments)),
                None => (false, false, json!({})),
            };
            let mut v = json!({
                "vhost": q.vhost,
                "name": q.name,
                "type": q.kind,
                "durable": q.durable,
                "auto_delete": auto_delete,
                "exclusive": exclusive,
                "arguments": arguments,
                "node": name,
                "state": "running",
                "consumers": q.consumers,
                "messages": q.ready + q.unacked,
                "messages_ready": q.ready,
                "messages_unacknowledged": q.unacked,
                "message_bytes": q.bytes,
                "message_bytes_ready": q.bytes,
                "policy": null,
                "exclusive_consumer_tag": null,
                "message_stats": {
                    "publish": q.stats.published,
                    "deliver_get": q.stats.delivered,
                    "redeliver": q.stats.redelivered,
                },
                "retry_delayed": q.delayed,
                "dead_lettered": dead,
                "dead_letter_target": q.dead_letter_target,
            });
            if q.kind == "quorum" {
                // A one-member group on this node: RabbitMQ's fields for a quorum queue.
                v["leader"] = json!(name);
                v["members"] = json!([name]);
                v["online"] = json!([name]);
            }
            v
        })
        .collect();
    queues.sort_by(|a, b| {
        (a["vhost"].as_str(), a["name"].as_str()).cmp(&(b["vhost"].as_str(), b["name"].as_str()))
    });
    queues
}

/// `GET /api/queues/{vhost}/{name}`.
pub(super) async fn queue(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
) -> Reply {
    known_vhost(&node, &viewer, &vhost)?;
    queues_of(&node, &viewer, Some(&vhost))
        .into_iter()
        .find(|q| q["name"] == name)
        .map(Json)
        .ok_or_else(not_found)
}

/// `GET /api/overview`: totals over the vhosts `user` sees.
pub(super) async fn overview(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Extension(listeners): Extension<std::sync::Arc<Vec<super::Listener>>>,
) -> Json<Value> {
    let queues = queues_of(&node, &viewer, None);
    let sum = |k: &str| queues.iter().filter_map(|q| q[k].as_u64()).sum::<u64>();
    let (mut connections, mut channels, mut exchanges) = (0usize, 0usize, 0usize);
    let mut stats = warren_core::stats::GlobalStats::default();
    for (vhost, shared) in &node.brokers() {
        let s = lock(shared);
        // A broker's counters are its vhost's: summed over the ones the viewer sees.
        if viewer.sees(vhost) {
            stats += s.broker.stats();
        }
        let (c, ch) = s.broker.open_counts();
        connections += c;
        channels += ch;
        exchanges += s
            .broker
            .vhosts()
            .iter()
            .filter(|(_, v)| viewer.sees(&v.name))
            .map(|(_, v)| v.exchanges().count() + 1)
            .sum::<usize>();
    }
    let name = node_name();
    let version = env!("CARGO_PKG_VERSION");
    Json(json!({
        "cluster_name": name,
        "node": name,
        "product_name": "Warren",
        "product_version": version,
        // Tools read these to pick features; Warren speaks the API of RabbitMQ 3.10's.
        "rabbitmq_version": "3.10.8",
        "erlang_version": "none",
        "erlang_full_version": "none (Warren is written in Rust)",
        "management_version": "3.10.8",
        "rates_mode": "none",
        "statistics_db_event_queue": 0,
        "churn_rates": {},
        "queue_totals": {
            "messages": sum("messages"),
            "messages_ready": sum("messages_ready"),
            "messages_unacknowledged": sum("messages_unacknowledged"),
            "messages_details": {"rate": 0.0},
        },
        "object_totals": {
            "connections": connections, "channels": channels, "queues": queues.len(),
            "exchanges": exchanges, "consumers": sum("consumers"),
        },
        "message_stats": {
            "publish": stats.received,
            "confirm": stats.confirmed,
            "deliver_get": stats.delivered,
            "ack": stats.acknowledged,
            "return_unroutable": stats.unroutable_returned,
            "drop_unroutable": stats.unroutable_dropped,
        },
        "listeners": listeners.iter().map(|l| json!({"node": name, "protocol": l.protocol, "port": l.addr.port(), "ip_address": l.addr.ip().to_string()})).collect::<Vec<_>>(),
    }))
}

/// `GET /api/health/checks/alarms` and `/local-alarms`: 200 with `ok`, or 503 naming the
/// alarms in effect (a single node: the same answer).
pub(super) async fn alarms(State(node): State<NodeRef>) -> (StatusCode, Json<Value>) {
    let alarm = lock(node.default_broker()).broker.alarm().map(str::to_string);
    match alarm {
        None => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Some(reason) => {
            // RabbitMQ's resource names; Warren's storage alarm is its own.
            let resource = match reason.as_str() {
                "low on disk" => "disk",
                "low on memory" => "memory",
                _ => "storage",
            };
            let body = json!({
                "status": "failed",
                "reason": format!("resource alarm(s) in effect: {reason}"),
                "alarms": [{"node": node_name(), "resource": resource}],
            });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}

/// `GET /api/health/checks/virtual-hosts`: every vhost the configuration names is running.
pub(super) async fn vhosts_health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// One connection's details, copied out of its broker.
struct ConnectionRow {
    id: warren_core::ConnId,
    info: warren_core::broker::ConnectionInfo,
    channels: Vec<warren_core::broker::ChannelSummary>,
}

/// The connections of the vhosts `viewer` sees; a user without `administrator` or
/// `monitoring` sees its own only, as in RabbitMQ. The API's own sessions (no name) are not
/// connections.
fn connections_of(node: &NodeRef, viewer: &Viewer) -> Vec<ConnectionRow> {
    let all = viewer.user.has_tag("administrator") || viewer.user.has_tag("monitoring");
    let mut out = Vec::new();
    for (_, shared) in &node.brokers() {
        let rows = lock(shared).broker.connection_summaries();
        out.extend(
            rows.into_iter()
                .filter(|(_, info, _)| !info.name.is_empty() && (all || info.user == viewer.user.name))
                .map(|(id, info, channels)| ConnectionRow { id, info, channels }),
        );
    }
    out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    out
}

/// The peer's host and port, from a connection's name (`peer -> local`).
fn peer_of(name: &str) -> (String, u16) {
    let peer = name.split(" -> ").next().unwrap_or_default();
    match peer.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (peer.to_string(), 0),
    }
}

fn connection_json(c: &ConnectionRow, node_name: &str) -> Value {
    let (peer_host, peer_port) = peer_of(&c.info.name);
    let local = c.info.name.split(" -> ").nth(1).and_then(|l| l.parse::<std::net::SocketAddr>().ok());
    json!({
        "name": c.info.name,
        "node": node_name,
        "vhost": c.info.vhost,
        "user": c.info.user,
        "state": "running",
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "auth_mechanism": c.info.auth_mechanism,
        "connected_at": c.info.connected_at_ms,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "host": local.map(|l| l.ip().to_string()),
        "port": local.map(|l| l.port()),
        "channels": c.channels.len(),
        "channel_max": c.info.channel_max,
        "frame_max": c.info.frame_max,
        "timeout": c.info.heartbeat,
        "client_properties": table_json(&c.info.client_properties),
    })
}

/// `GET /api/connections`.
pub(super) async fn connections(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
) -> Json<Value> {
    let name = node_name();
    Json(Value::Array(connections_of(&node, &viewer).iter().map(|c| connection_json(c, &name)).collect()))
}

/// `GET /api/connections/{name}`.
pub(super) async fn connection(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Reply {
    let node_name = node_name();
    let found = connections_of(&node, &viewer).into_iter().find(|c| c.info.name == name);
    found.map(|c| Json(connection_json(&c, &node_name))).ok_or_else(not_found)
}

/// `DELETE /api/connections/{name}`: closes it with 320 CONNECTION_FORCED and the
/// `X-Reason` header's text (RabbitMQ's "Closed via management plugin" without one). An
/// administrator may close any; another user its own.
pub(super) async fn close_connection(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, (StatusCode, Json<Value>)> {
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .map(|r| r.chars().take(200).collect::<String>())
        .unwrap_or_else(|| "Closed via management plugin".into());
    for (_, shared) in &node.brokers() {
        let mut s = lock(shared);
        let found = s
            .broker
            .connection_summaries()
            .into_iter()
            .find(|(_, info, _)| info.name == name && !name.is_empty());
        if let Some((id, info, _)) = found {
            if !viewer.user.has_tag("administrator") && info.user != viewer.user.name {
                return Err(forbidden("only an administrator closes another user's connection"));
            }
            s.broker.close_connection(id, &reason);
            s.wake_all();
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    Err(not_found())
}

/// `GET /api/channels`.
pub(super) async fn channels(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
) -> Json<Value> {
    let node_name = node_name();
    let mut out = Vec::new();
    for c in connections_of(&node, &viewer) {
        let (peer_host, peer_port) = peer_of(&c.info.name);
        for ch in &c.channels {
            let name = format!("{} ({})", c.info.name, ch.number);
            out.push(json!({
                "name": name,
                "number": ch.number,
                "node": node_name,
                "vhost": c.info.vhost,
                "user": c.info.user,
                "state": "running",
                "consumer_count": ch.consumers,
                "confirm": ch.confirm,
                "transactional": ch.transactional,
                "prefetch_count": ch.prefetch_count,
                "global_prefetch_count": ch.global_prefetch_count,
                "messages_unacknowledged": ch.unacknowledged,
                "messages_unconfirmed": 0,
                "connection_details": {"name": c.info.name, "peer_host": peer_host, "peer_port": peer_port},
            }));
        }
    }
    Json(Value::Array(out))
}

/// `GET /api/consumers`.
pub(super) async fn consumers(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
) -> Json<Value> {
    let node_name = node_name();
    let names: std::collections::HashMap<warren_core::ConnId, (String, String, String)> =
        connections_of(&node, &viewer)
            .into_iter()
            .map(|c| (c.id, (c.info.name, c.info.user, c.info.vhost)))
            .collect();
    let mut out = Vec::new();
    for (_, shared) in &node.brokers() {
        for k in lock(shared).broker.consumer_summaries() {
            let Some((conn_name, user, vhost)) = names.get(&k.conn) else {
                continue;
            };
            let (peer_host, peer_port) = peer_of(conn_name);
            out.push(json!({
                "consumer_tag": k.tag,
                "active": true,
                "activity_status": "up",
                "ack_required": k.ack_required,
                "prefetch_count": k.prefetch_count,
                "exclusive": false,
                "arguments": {},
                "consumer_timeout": 0,
                "queue": {"name": k.queue, "vhost": vhost},
                "channel_details": {
                    "number": k.channel,
                    "name": format!("{conn_name} ({})", k.channel),
                    "connection_name": conn_name,
                    "node": node_name,
                    "peer_host": peer_host,
                    "peer_port": peer_port,
                    "user": user,
                },
            }));
        }
    }
    Json(Value::Array(out))
}

/// A policy as RabbitMQ's API shows it: its `x-` arguments under RabbitMQ's policy keys.
pub(super) fn policy_json(p: &warren_core::policy::Policy) -> Value {
    serde_json::to_value(crate::definitions::PolicyDef::of(p)).unwrap_or(Value::Null)
}

/// `GET /api/policies`: the policies of the vhosts `viewer` sees.
pub(super) async fn policies(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
) -> Json<Value> {
    let policies = node.directory().load().policies.clone();
    Json(Value::Array(policies.iter().filter(|p| viewer.sees(&p.vhost)).map(policy_json).collect()))
}

/// `GET /api/policies/{vhost}`.
pub(super) async fn vhost_policies(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(vhost): Path<String>,
) -> Reply {
    known_vhost(&node, &viewer, &vhost)?;
    let policies = node.directory().load().policies.clone();
    Ok(Json(Value::Array(policies.iter().filter(|p| p.vhost == vhost).map(policy_json).collect())))
}

/// `GET /api/policies/{vhost}/{name}`.
pub(super) async fn one_policy(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
) -> Reply {
    known_vhost(&node, &viewer, &vhost)?;
    let dir = node.directory().load();
    let found = dir.policies.iter().find(|p| p.vhost == vhost && p.name == name);
    found.map(|p| Json(policy_json(p))).ok_or_else(not_found)
}

/// `GET /api/nodes`: this node, or every member of its cluster.
pub(super) async fn nodes(State(node): State<NodeRef>) -> Json<Value> {
    if let Some(members) = super::cluster::nodes(&node) {
        return Json(Value::Array(members));
    }
    let alarm = lock(node.default_broker()).broker.alarm().map(str::to_string);
    let processors = std::thread::available_parallelism().map_or(1, usize::from);
    Json(json!([{
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "os_pid": std::process::id().to_string(),
        "processors": processors,
        "rates_mode": "none",
        "mem_alarm": alarm.as_deref() == Some("low on memory"),
        "disk_free_alarm": alarm.as_deref() == Some("low on disk"),
        "partitions": [],
        "enabled_plugins": [],
    }]))
}

/// `GET /api/health/checks/port-listener/{port}`: 200 when the node listens on `port`, 503
/// otherwise, RabbitMQ's shape.
pub(super) async fn port_listener(
    Extension(listeners): Extension<std::sync::Arc<Vec<super::Listener>>>,
    Path(port): Path<u16>,
) -> (StatusCode, Json<Value>) {
    let ports: Vec<u16> = listeners.iter().map(|l| l.addr.port()).collect();
    if ports.contains(&port) {
        (StatusCode::OK, Json(json!({"status": "ok", "port": port})))
    } else {
        let reason = format!("No active listener on port {port}");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": reason, "missing": port, "ports": ports})),
        )
    }
}

/// `GET /api/health/checks/protocol-listener/{protocol}`: 200 when the node serves
/// `protocol` (`amqp`, `amqp/ssl`, `amqp/quic`, `http`, `http/prometheus`), 503 otherwise.
pub(super) async fn protocol_listener(
    Extension(listeners): Extension<std::sync::Arc<Vec<super::Listener>>>,
    Path(protocol): Path<String>,
) -> (StatusCode, Json<Value>) {
    let protocols: Vec<&str> = listeners.iter().map(|l| l.protocol).collect();
    // RabbitMQ accepts the AMQP 0-9-1 names too.
    let wanted = match protocol.as_str() {
        "amqp091" | "amqp0-9-1" => "amqp",
        "amqps" => "amqp/ssl",
        other => other,
    };
    if protocols.contains(&wanted) {
        (StatusCode::OK, Json(json!({"status": "ok", "protocol": protocol})))
    } else {
        let reason = format!("No active listener for protocol {protocol}");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": reason, "missing": protocol, "protocols": protocols})),
        )
    }
}
