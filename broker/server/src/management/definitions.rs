//! `GET /api/definitions`: the node's definitions in RabbitMQ's format (users with their
//! password hashes, vhosts, permissions, topic permissions, policies, and the durable
//! exchanges, queues and bindings), which `rabbitmqctl import_definitions` and RabbitMQ's
//! management API load. Only an administrator may take it: it is the one place password
//! hashes leave the broker. A password configured in clear is exported as RabbitMQ's hash of
//! it under a fresh salt.

use std::io::Read;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warren_core::exchange::Destination;
use warren_core::password::SALT_LEN;
use warren_core::permissions::Access;

use super::Viewer;
use super::api::table_json;
use crate::node::NodeRef;
use crate::shared::lock;

/// A fresh salt from the OS.
fn salt() -> std::io::Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// `GET /api/definitions` (administrators).
pub(super) async fn export(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    if !viewer.user.has_tag("administrator") {
        let reason = "administrator tag needed";
        return Err((StatusCode::FORBIDDEN, Json(json!({"error": "not_authorised", "reason": reason}))));
    }
    let internal = |e: std::io::Error| {
        let reason = format!("no salt for a password hash: {e}");
        (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "internal_error", "reason": reason})))
    };
    let (users, access, policies) = {
        let s = lock(node.default_broker());
        (s.broker.users().to_vec(), s.broker.access().clone(), s.broker.policies().to_vec())
    };
    let mut user_list = Vec::new();
    for u in &users {
        let (algorithm, hash) = u.password.exported(salt().map_err(internal)?);
        user_list.push(json!({
            "name": u.name, "password_hash": hash, "hashing_algorithm": algorithm.name(),
            "tags": u.tags, "limits": super::api::user_limits_json(&u.limits),
        }));
    }
    let mut vhosts = Vec::new();
    let mut parameters = Vec::new();
    let (mut exchanges, mut queues, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for (_, shared) in node.brokers() {
        let s = lock(shared);
        let own = s.broker.vhost_limits();
        for (id, v) in s.broker.vhosts().iter() {
            let vhost = &*v.name;
            // The broker's limits are its own vhost's (the first); closed ones have none.
            let mut limits = serde_json::Map::new();
            if id == warren_core::broker::VHostId::DEFAULT {
                if let Some(n) = own.max_connections {
                    limits.insert("max-connections".into(), json!(n));
                }
                if let Some(n) = own.max_queues {
                    limits.insert("max-queues".into(), json!(n));
                }
            }
            // RabbitMQ exports a vhost's limits as a `vhost-limits` parameter.
            if !limits.is_empty() {
                parameters.push(
                    json!({"vhost": vhost, "component": "vhost-limits", "name": "limits", "value": limits}),
                );
            }
            vhosts.push(json!({"name": vhost, "limits": [], "metadata": {"description": "", "tags": []}}));
            for (name, x) in v.exchanges().filter(|(n, x)| x.durable && !n.starts_with("amq.")) {
                exchanges.push(json!({
                    "name": name, "vhost": vhost, "type": x.kind, "durable": true,
                    "auto_delete": x.auto_delete, "internal": x.internal, "arguments": table_json(&x.arguments),
                }));
            }
            for q in v.queues().filter(|q| q.spec.durable && q.spec.exclusive_owner.is_none()) {
                queues.push(json!({
                    "name": &*q.name, "vhost": vhost, "durable": true,
                    "auto_delete": q.spec.auto_delete, "arguments": table_json(&q.spec.arguments),
                }));
            }
            for (source, x) in v.exchanges().filter(|(_, x)| x.durable) {
                for b in x.bindings() {
                    let (destination, kind, durable) = match &b.destination {
                        Destination::Queue(q) => (&**q, "queue", v.queue(q).is_some_and(|q| q.spec.durable)),
                        Destination::Exchange(e) => {
                            (&**e, "exchange", v.exchange(e).is_some_and(|x| x.durable))
                        }
                    };
                    if durable {
                        bindings.push(json!({
                            "source": source, "vhost": vhost, "destination": destination,
                            "destination_type": kind, "routing_key": b.key,
                            "arguments": table_json(&b.arguments),
                        }));
                    }
                }
            }
        }
    }
    let vhost_names: Vec<String> =
        vhosts.iter().filter_map(|v| v["name"].as_str().map(str::to_string)).collect();
    let (permissions, topic_permissions) = match &*access {
        // Without configured permissions every user may do everything everywhere: exported as
        // that, so RabbitMQ grants the same.
        Access::Unrestricted => {
            let all: Vec<Value> = users
                .iter()
                .flat_map(|u| vhost_names.iter().map(move |v| json!({"user": u.name, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"})))
                .collect();
            (all, Vec::new())
        }
        Access::Rules { permissions, topics } => (
            permissions
                .iter()
                .map(|p| json!({"user": p.user, "vhost": p.vhost, "configure": p.configure.as_str(), "write": p.write.as_str(), "read": p.read.as_str()}))
                .collect(),
            topics
                .iter()
                .map(|t| json!({"user": t.user, "vhost": t.vhost, "exchange": t.exchange, "write": t.write_template, "read": t.read_template}))
                .collect::<Vec<_>>(),
        ),
    };
    let policies: Vec<Value> = policies.iter().map(super::api::policy_json).collect();
    Ok(Json(json!({
        "rabbit_version": "3.10.8",
        "rabbitmq_version": "3.10.8",
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": user_list,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": parameters,
        "global_parameters": [],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })))
}
