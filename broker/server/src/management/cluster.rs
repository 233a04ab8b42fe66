//! The cluster's part of the API: `GET /api/cluster` (Warren's: what `warren cluster status`
//! prints), `POST /api/cluster/join`, `/leave` and `/forget` (what `warren cluster join`,
//! `leave` and `forget` send; `administrator` only), the members in `GET /api/nodes`, and
//! RabbitMQ's `node-is-quorum-critical` check for the metadata group.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use warren_cluster::{ProposeError, Status};

use super::Viewer;
use super::access::admin;
use super::ops::{bad_request, body_object};

type ApiError = (StatusCode, Json<Value>);
use crate::node::NodeRef;

/// Queues `GET /api/cluster` lists at most (with `queues_truncated` past it).
pub const MAX_STATUS_QUEUES: usize = 10_000;

/// `GET /api/cluster`: the members, their state, the metadata leader, and each queue's home
/// node; 404 on a single node.
pub(super) async fn status(State(node): State<NodeRef>) -> Result<Json<Value>, ApiError> {
    match node.cluster() {
        Some(c) => {
            let status: Status = c.status();
            let mut queues = Vec::new();
            let mut truncated = false;
            'brokers: for (_, shared) in node.brokers() {
                let s = crate::shared::lock(&shared);
                for q in s.broker.queues() {
                    if queues.len() == MAX_STATUS_QUEUES {
                        truncated = true;
                        break 'brokers;
                    }
                    let home = q.home.as_deref().unwrap_or(&status.node);
                    queues.push(
                        json!({"vhost": &*q.vhost_name, "name": &*q.name, "home": home, "type": q.kind()}),
                    );
                }
            }
            let mut value = serde_json::to_value(&status).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut value {
                o.insert("queues".into(), Value::Array(queues));
                o.insert("queues_truncated".into(), Value::Bool(truncated));
            }
            Ok(Json(value))
        }
        None => Err((
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": "not_found", "reason": "this node is not a cluster member ([cluster] is not configured)"}),
            ),
        )),
    }
}

fn member_of(node: &NodeRef) -> Result<std::sync::Arc<warren_cluster::Cluster>, ApiError> {
    node.cluster().cloned().ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "reason": "this node is not a cluster member ([cluster] is not configured)"})),
        )
    })
}

fn failed(e: ProposeError) -> ApiError {
    let code = match e {
        ProposeError::Refused(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(json!({"error": "cluster", "reason": e.to_string()})))
}

fn text_field(body: &Bytes, key: &str) -> Result<String, ApiError> {
    let o = body_object(body)?;
    match o.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Ok(s.clone()),
        _ => Err(bad_request(format!("{key} must be a string of 1 to 255 bytes"))),
    }
}

/// `POST /api/cluster/join` `{"peer": "ip:port"}`: this new node asks the member whose
/// inter-node address is `peer` to add it.
pub(super) async fn join(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    admin(&viewer)?;
    let cluster = member_of(&node)?;
    let peer = text_field(&body, "peer")?;
    cluster.join(&peer).await.map_err(failed)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/cluster/leave`: this node leaves the cluster for good, its name retired.
pub(super) async fn leave(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
) -> Result<StatusCode, ApiError> {
    admin(&viewer)?;
    let cluster = member_of(&node)?;
    cluster.remove(cluster.name()).await.map_err(failed)?;
    tracing::warn!("this node left the cluster: stop it; its data dir cannot rejoin under the same name");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/cluster/forget` `{"node": "name"}`: takes a member that is down out of the
/// cluster for good, as `rabbitmqctl forget_cluster_node`.
pub(super) async fn forget(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    admin(&viewer)?;
    let cluster = member_of(&node)?;
    let name = text_field(&body, "node")?;
    if name == cluster.name() {
        return Err(bad_request("a node does not forget itself: use leave on it"));
    }
    if cluster.status().members.iter().any(|m| m.name == name && m.up) {
        return Err((
            StatusCode::CONFLICT,
            Json(
                json!({"error": "conflict", "reason": format!("node '{name}' is up: stop it first, or run leave on it")}),
            ),
        ));
    }
    cluster.remove(&name).await.map_err(failed)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The members as `GET /api/nodes` lists them (RabbitMQ's `name`, `running`, `type`), or
/// `None` on a single node.
pub(super) fn nodes(node: &NodeRef) -> Option<Vec<Value>> {
    let status = node.cluster()?.status();
    Some(
        status
            .members
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "type": "disc",
                    "running": m.up,
                    "being_drained": false,
                    "cluster_links": [],
                    "partitions": [],
                    "warren_voter": m.voter,
                    "warren_address": m.addr,
                    "warren_metadata_leader": status.leader.as_deref() == Some(m.name.as_str()),
                })
            })
            .collect(),
    )
}

/// `GET /api/health/checks/node-is-quorum-critical`: 503 when stopping this node would leave
/// the metadata group without a majority of its voters up, as RabbitMQ answers for its
/// quorum queues.
pub(super) async fn quorum_critical(State(node): State<NodeRef>) -> (StatusCode, Json<Value>) {
    let Some(c) = node.cluster() else {
        return (StatusCode::OK, Json(json!({"status": "ok"})));
    };
    let s = c.status();
    let voters = s.members.iter().filter(|m| m.voter).count();
    let up_without_me = s.members.iter().filter(|m| m.voter && m.up && m.name != s.node).count();
    if voters > 1 && up_without_me < voters / 2 + 1 {
        let reason = format!(
            "stopping this node would leave {up_without_me} of {voters} metadata voters up, under a majority"
        );
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "reason": reason})));
    }
    (StatusCode::OK, Json(json!({"status": "ok"})))
}
