//! `GET /api/definitions`: the node's definitions in RabbitMQ's format (users with their
//! password hashes, vhosts, permissions, topic permissions, policies, and the durable
//! exchanges, queues and bindings), which `rabbitmqctl import_definitions` and RabbitMQ's
//! management API load. Only an administrator may take it: it is the one place password
//! hashes leave the broker. A password configured in clear is exported as RabbitMQ's hash of
//! it under a fresh salt.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warren_core::exchange::Destination;

use super::Viewer;
use super::api::table_json;
use crate::definitions::AccessDefinitions;
use crate::node::NodeRef;
use crate::shared::lock;

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
        let reason = format!("cannot export the definitions: {e}");
        (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "internal_error", "reason": reason})))
    };
    let dir = node.directory().load();
    let access = AccessDefinitions::of(&dir, crate::definitions::fresh_salt).map_err(internal)?;
    let (mut exchanges, mut queues, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for (_, shared) in &node.brokers() {
        let s = lock(shared);
        for (_, v) in s.broker.vhosts().iter() {
            let vhost = &*v.name;
            // What the directory dropped is kept, closed, but not exported.
            if !dir.vhosts.contains_key(vhost) {
                continue;
            }
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
    let mut out = json!({
        "rabbit_version": "3.10.8",
        "rabbitmq_version": "3.10.8",
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "global_parameters": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    });
    let access = serde_json::to_value(access).map_err(|e| internal(std::io::Error::other(e)))?;
    if let (Some(out), Value::Object(access)) = (out.as_object_mut(), access) {
        out.extend(access);
    }
    Ok(Json(out))
}

/// Bytes a definitions document may have (`POST /api/definitions`).
pub(super) const MAX_IMPORT_BYTES: usize = 64 << 20;

/// `POST /api/definitions` (administrators): RabbitMQ's import. Users, vhosts, limits,
/// permissions, topic permissions and policies are checked whole first and then applied at
/// once; then exchanges, queues and bindings are declared, as the node (no permission is
/// checked for them). An entry that cannot be read refuses the whole document with 400
/// naming it; a declare that fails stops there with 400 naming it, what came before applied.
pub(super) async fn import(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, (StatusCode, Json<Value>)> {
    use axum::response::IntoResponse;
    if !viewer.user.has_tag("administrator") {
        let reason = "administrator tag needed";
        return Err((StatusCode::FORBIDDEN, Json(json!({"error": "not_authorised", "reason": reason}))));
    }
    let bad =
        |reason: String| (StatusCode::BAD_REQUEST, Json(json!({"error": "bad_request", "reason": reason})));
    let doc: serde_json::Map<String, Value> =
        serde_json::from_slice(&body).map_err(|e| bad(format!("not a definitions document: {e}")))?;
    let access: AccessDefinitions =
        serde_json::from_slice(&body).map_err(|e| bad(format!("not a definitions document: {e}")))?;
    let plan = access.plan().map_err(bad)?;
    // Tried whole on a copy first: a refusal leaves nothing half made.
    let mut trial = (*node.directory().load()).clone();
    let vhosts = plan.vhosts.iter().cloned().map(warren_core::directory::Change::PutVHost);
    for change in vhosts.chain(plan.changes.iter().cloned()) {
        trial.apply(change).map_err(|e| bad(e.to_string()))?;
    }
    drop(trial);
    let refused = |e: crate::node::ChangeError| match e {
        crate::node::ChangeError::Refused(e) => bad(e.to_string()),
        e => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "internal_error", "reason": e.to_string()})),
        ),
    };
    for v in &plan.vhosts {
        node.add_vhost(v, Vec::new()).await.map_err(refused)?;
    }
    node.change_directory(plan.changes).await.map_err(refused)?;
    let declared = super::ops::import_topology(&node, &doc).await?;
    tracing::info!(
        by = %viewer.user.name,
        users = access.users.len(),
        vhosts = plan.vhosts.len(),
        declared,
        "definitions imported"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
