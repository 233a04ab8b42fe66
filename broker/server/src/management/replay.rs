//! Dead-letter replay: messages of a dead-letter queue moved back, oldest first, to the queue
//! each last died in (see [`warren_core::Broker::replay_dead_letters`]), in batches with the
//! broker lock released between them.
//!
//! - `POST /api/queues/{vhost}/{queue}/replay[?count=N]` runs it to the end and answers with
//!   what it did.
//! - `POST /api/replays` with `{"vhost", "queue", "count"?, "rate"?}` starts it as a background
//!   task at `rate` messages a second (SQS's `StartMessageMoveTask`); `GET /api/replays` lists
//!   the tasks with their progress, `GET`/`DELETE /api/replays/{id}` shows or cancels one.
//!   One task runs per queue at a time, [`MAX_RUNNING`] in all; the last [`KEEP_FINISHED`]
//!   finished ones stay listed. A task ends when it has looked at every message that was in
//!   the queue when it started, moved `count`, or was cancelled; a cancel takes effect
//!   between two batches, so nothing is moved halfway.
//!
//! All of it needs `administrator` and permissions on the vhost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use warren_core::broker::ReplayReport;

use super::Viewer;
use crate::node::NodeRef;
use crate::shared::lock;

/// Messages a replay looks at per turn of the broker lock.
const BATCH: usize = 1000;
/// Tasks running at once.
pub(super) const MAX_RUNNING: usize = 16;
/// Finished tasks kept for listing.
pub(super) const KEEP_FINISHED: usize = 100;
/// A task's rate unless it names one, and the most it may name, in messages a second.
pub(super) const DEFAULT_RATE: u32 = 1000;
/// See [`DEFAULT_RATE`].
pub(super) const MAX_RATE: u32 = 100_000;

type ApiError = (StatusCode, Json<Value>);

fn refuse(status: StatusCode, error: &str, reason: impl Into<String>) -> ApiError {
    (status, Json(json!({"error": error, "reason": reason.into()})))
}

/// What a task has done so far, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Progress {
    id: u64,
    vhost: String,
    queue: String,
    /// `running`, `completed`, `cancelled` or `failed`.
    status: &'static str,
    moved: usize,
    skipped: usize,
    refused: usize,
    /// Messages a second.
    rate: u32,
    /// Most it moves, when limited.
    count: Option<usize>,
    /// Why it failed, when it did.
    reason: Option<String>,
}

struct Task {
    progress: Progress,
    cancel: Arc<AtomicBool>,
}

/// The node's replay tasks.
#[derive(Default)]
pub struct Replays {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    running: Vec<Task>,
    finished: VecDeque<Progress>,
    /// The tasks themselves, for [`Replays::stop`]; finished ones are dropped at each start.
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Replays {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Progress)) {
        if let Some(t) = self.lock().running.iter_mut().find(|t| t.progress.id == id) {
            f(&mut t.progress);
        }
    }

    fn finish(&self, id: u64, status: &'static str, reason: Option<String>) {
        let mut inner = self.lock();
        if let Some(i) = inner.running.iter().position(|t| t.progress.id == id) {
            let mut p = inner.running.remove(i).progress;
            p.status = status;
            p.reason = reason;
            inner.finished.push_back(p);
            while inner.finished.len() > KEEP_FINISHED {
                inner.finished.pop_front();
            }
        }
    }

    /// Cancels every running task and waits (up to 10 s) for each to end its batch: at a
    /// server's stop, before the queue index is written.
    pub async fn stop(&self) {
        let handles = {
            let mut inner = self.lock();
            for t in &inner.running {
                t.cancel.store(true, Ordering::Release);
            }
            std::mem::take(&mut inner.handles)
        };
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }

    fn all(&self) -> Vec<Progress> {
        let inner = self.lock();
        inner.running.iter().map(|t| t.progress.clone()).chain(inner.finished.iter().cloned()).collect()
    }
}

fn admin(viewer: &Viewer) -> Result<(), ApiError> {
    if viewer.user.has_tag("administrator") {
        return Ok(());
    }
    let reason = format!("user '{}' may not replay dead letters", viewer.user.name);
    Err(refuse(StatusCode::FORBIDDEN, "not_authorised", reason))
}

/// Checks that the viewer may replay in `vhost` and that the vhost exists.
fn allowed(node: &NodeRef, viewer: &Viewer, vhost: &str) -> Result<(), ApiError> {
    admin(viewer)?;
    if !super::api::vhost_names(node).iter().any(|(v, _)| v == vhost) {
        return Err(refuse(StatusCode::NOT_FOUND, "not_found", format!("no vhost '{vhost}'")));
    }
    // An administrator too needs permissions on the vhost it changes, as in RabbitMQ.
    if !viewer.may_change(vhost) {
        let reason = format!("user '{}' has no permissions on vhost '{vhost}'", viewer.user.name);
        return Err(refuse(StatusCode::FORBIDDEN, "not_authorised", reason));
    }
    Ok(())
}

/// Runs a replay of `queue` in `vhost` batch by batch until it is done, `limit` messages
/// have moved, or `cancel` is set; `rate` paces it (none: as fast as batches go), and
/// `progress` hears each batch's totals.
async fn run(
    node: &NodeRef,
    vhost: &str,
    queue: &str,
    limit: usize,
    rate: Option<u32>,
    cancel: &AtomicBool,
    mut progress: impl FnMut(&ReplayReport),
) -> Result<ReplayReport, ApiError> {
    // A vhost the configuration dropped is kept, closed, by the broker of `/`.
    let shared = node.broker(vhost).unwrap_or_else(|| node.default_broker().clone());
    let Some(vh) = lock(&shared).broker.vhosts().id(vhost) else {
        return Err(refuse(StatusCode::NOT_FOUND, "not_found", format!("no vhost '{vhost}'")));
    };
    let batch = rate.map_or(BATCH, |r| (r as usize / 10).clamp(1, BATCH));
    let mut total = ReplayReport::default();
    loop {
        // Checked before each batch, after the pause: a cancel moves nothing more.
        if cancel.load(Ordering::Acquire) {
            return Ok(total);
        }
        let started = tokio::time::Instant::now();
        let result = {
            let mut s = lock(&shared);
            let r =
                s.broker.replay_dead_letters(vh, queue, batch, limit - total.moved, total.next, total.end);
            s.wake_all();
            r
        };
        let r = result.map_err(|e| refuse(StatusCode::NOT_FOUND, "not_found", e.text))?;
        let looked = (r.moved + r.skipped + r.refused) as u64;
        total.moved += r.moved;
        total.skipped += r.skipped;
        total.refused += r.refused;
        total.next = r.next;
        total.end = r.end;
        progress(&total);
        if total.next.is_none() || total.moved >= limit {
            return Ok(total);
        }
        match rate {
            // Paced: the batch took its share of a second at `per_second`.
            Some(per_second) => {
                let due = Duration::from_millis(looked.max(1) * 1000 / u64::from(per_second.max(1)));
                tokio::time::sleep_until(started + due).await;
            }
            // Other connections get the lock between batches.
            None => tokio::task::yield_now().await,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ReplayQuery {
    count: Option<usize>,
}

/// `POST /api/queues/{vhost}/{queue}/replay[?count=N]`: the whole replay, then its totals.
pub(super) async fn replay_now(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, queue)): Path<(String, String)>,
    Query(q): Query<ReplayQuery>,
) -> Result<Json<Value>, ApiError> {
    allowed(&node, &viewer, &vhost)?;
    let never = AtomicBool::new(false);
    let total = run(&node, &vhost, &queue, q.count.unwrap_or(usize::MAX), None, &never, |_| {}).await?;
    let ReplayReport { moved, skipped, refused, .. } = total;
    tracing::info!(%vhost, %queue, moved, skipped, refused, "dead-letter queue replayed");
    Ok(Json(json!({"moved": moved, "skipped": skipped, "refused": refused})))
}

/// `POST /api/replays`: starts a task; 201 with it.
pub(super) async fn start(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Extension(replays): Extension<Arc<Replays>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&viewer)?;
    let o = super::ops::body_object(&body)?;
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(vhost), Some(queue)) = (text("vhost"), text("queue")) else {
        return Err(super::ops::bad_request("vhost and queue are required"));
    };
    allowed(&node, &viewer, &vhost)?;
    let count = match o.get("count") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(v.as_u64().ok_or_else(|| super::ops::bad_request("count must be a positive integer"))?
                as usize)
        }
    };
    let rate = match o.get("rate") {
        None | Some(Value::Null) => DEFAULT_RATE,
        Some(v) => match v.as_u64() {
            Some(r) if (1..=u64::from(MAX_RATE)).contains(&r) => r as u32,
            _ => {
                return Err(super::ops::bad_request(format!(
                    "rate must be 1 to {MAX_RATE} messages a second"
                )));
            }
        },
    };
    // Whether the queue is there, before a task is made for it.
    let shared = node.broker(&vhost).unwrap_or_else(|| node.default_broker().clone());
    let exists = {
        let s = lock(&shared);
        s.broker.vhosts().id(&vhost).is_some_and(|vh| s.broker.vhosts()[vh].queue(&queue).is_some())
    };
    if !exists {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no queue '{queue}' in vhost '{vhost}'"),
        ));
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let progress = {
        let mut inner = replays.lock();
        if inner.running.iter().any(|t| t.progress.vhost == vhost && t.progress.queue == queue) {
            return Err(refuse(
                StatusCode::CONFLICT,
                "conflict",
                format!("a replay of '{queue}' is running already"),
            ));
        }
        if inner.running.len() >= MAX_RUNNING {
            let reason = format!("{MAX_RUNNING} replays are running: wait for one or cancel one");
            return Err(refuse(StatusCode::TOO_MANY_REQUESTS, "too_many", reason));
        }
        inner.next_id += 1;
        let progress = Progress {
            id: inner.next_id,
            vhost: vhost.clone(),
            queue: queue.clone(),
            status: "running",
            moved: 0,
            skipped: 0,
            refused: 0,
            rate,
            count,
            reason: None,
        };
        inner.running.push(Task { progress: progress.clone(), cancel: cancel.clone() });
        progress
    };
    let id = progress.id;
    let replays_handles = replays.clone();
    tracing::info!(id, %vhost, %queue, rate, by = %viewer.user.name, "dead-letter replay started");
    let task = tokio::spawn(async move {
        let r = run(&node, &vhost, &queue, count.unwrap_or(usize::MAX), Some(rate), &cancel, |t| {
            replays.update(id, |p| (p.moved, p.skipped, p.refused) = (t.moved, t.skipped, t.refused));
        })
        .await;
        match r {
            Ok(t) => {
                // Cancelled only if it stopped with work left.
                let left = t.next.is_some() && t.moved < count.unwrap_or(usize::MAX);
                let status = if left { "cancelled" } else { "completed" };
                tracing::info!(id, %vhost, %queue, moved = t.moved, status, "dead-letter replay ended");
                replays.finish(id, status, None);
            }
            Err((_, Json(body))) => {
                let reason = body.get("reason").and_then(Value::as_str).map(str::to_string);
                replays.finish(id, "failed", reason);
            }
        }
    });
    {
        let mut inner = replays_handles.lock();
        inner.handles.retain(|h| !h.is_finished());
        inner.handles.push(task);
    }
    Ok((StatusCode::CREATED, Json(json!(progress))))
}

/// `GET /api/replays`: running tasks, then finished ones, of the vhosts the viewer sees.
pub(super) async fn list(
    Extension(viewer): Extension<Viewer>,
    Extension(replays): Extension<Arc<Replays>>,
) -> Json<Value> {
    let visible = replays.all().into_iter().filter(|p| viewer.sees(&p.vhost));
    Json(Value::Array(visible.map(|p| json!(p)).collect()))
}

/// `GET /api/replays/{id}`.
pub(super) async fn one(
    Extension(viewer): Extension<Viewer>,
    Extension(replays): Extension<Arc<Replays>>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let found = replays.all().into_iter().find(|p| p.id == id && viewer.sees(&p.vhost));
    found.map(|p| Json(json!(p))).ok_or_else(super::api::not_found)
}

/// `DELETE /api/replays/{id}`: cancels a running task (204); it stops after its current batch.
pub(super) async fn cancel(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Extension(replays): Extension<Arc<Replays>>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    admin(&viewer)?;
    let found = {
        let inner = replays.lock();
        inner
            .running
            .iter()
            .find(|t| t.progress.id == id)
            .map(|t| (t.progress.vhost.clone(), t.cancel.clone()))
    };
    let Some((vhost, flag)) = found else {
        return Err(super::api::not_found());
    };
    allowed(&node, &viewer, &vhost)?;
    flag.store(true, Ordering::Release);
    Ok(StatusCode::NO_CONTENT)
}
