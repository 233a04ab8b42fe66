//! The management HTTP API: what an operator asks of a running broker.
//!
//! - `GET /api/queues`: every queue with its depth, consumers, dead-letter counts by reason,
//!   retry-delayed messages, and whether it receives dead letters.
//! - `POST /api/queues/{vhost}/{queue}/replay[?count=N]`: moves up to N (default all)
//!   messages from a dead-letter queue back to the queue each last died in.
//!
//! There is no authentication yet, so the default listen address is loopback only.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use warren_core::broker::ReplayReport;
use warren_core::deadletter::Reason;

use crate::server::{SharedRef, lock};

/// The API's routes over the shared broker state.
pub fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{vhost}/{queue}/replay", post(replay))
        .with_state(shared)
}

async fn list_queues(State(shared): State<SharedRef>) -> Json<Value> {
    let snapshots = crate::metrics::queue_snapshots(&lock(&shared).broker);
    let mut queues: Vec<Value> = snapshots
        .iter()
        .map(|q| {
            let dead: serde_json::Map<String, Value> = Reason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), json!(q.dead_lettered[*r as usize])))
                .collect();
            json!({
                "vhost": "/",
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
    queues.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(Value::Array(queues))
}

#[derive(Debug, Deserialize)]
struct ReplayQuery {
    count: Option<usize>,
}

async fn replay(
    State(shared): State<SharedRef>,
    Path((vhost, queue)): Path<(String, String)>,
    Query(q): Query<ReplayQuery>,
) -> (StatusCode, Json<Value>) {
    if vhost != "/" {
        return (StatusCode::NOT_FOUND, Json(json!({"error": format!("no vhost '{vhost}'")})));
    }
    let limit = q.count.unwrap_or(usize::MAX);
    let mut total = ReplayReport::default();
    loop {
        let result = {
            let mut s = lock(&shared);
            let r = s.broker.replay_dead_letters(&queue, REPLAY_BATCH, limit - total.moved, total.next);
            s.wake_all();
            r
        };
        match result {
            Ok(r) => {
                total.moved += r.moved;
                total.skipped += r.skipped;
                total.refused += r.refused;
                total.next = r.next;
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
    tracing::info!(%queue, moved, skipped, refused, "dead-letter queue replayed");
    (StatusCode::OK, Json(json!({"moved": moved, "skipped": skipped, "refused": refused})))
}

/// Messages a replay looks at per turn of the broker lock.
const REPLAY_BATCH: usize = 1000;
