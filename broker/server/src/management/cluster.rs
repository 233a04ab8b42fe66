//! The cluster's part of the API: `GET /api/cluster` (Warren's: what `warren cluster status`
//! prints), the members in `GET /api/nodes`, and RabbitMQ's `node-is-quorum-critical` check
//! for the metadata group.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use warren_cluster::Status;

type ApiError = (StatusCode, Json<Value>);
use crate::node::NodeRef;

/// `GET /api/cluster`: the members, their state, the metadata leader; 404 on a single node.
pub(super) async fn status(State(node): State<NodeRef>) -> Result<Json<Status>, ApiError> {
    match node.cluster() {
        Some(c) => Ok(Json(c.status())),
        None => Err((
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": "not_found", "reason": "this node is not a cluster member ([cluster] is not configured)"}),
            ),
        )),
    }
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
