//! RabbitMQ's management API, the changing half: declare and delete exchanges and queues,
//! bind and unbind, purge, get messages, publish.
//!
//! Each request runs as a session of the requesting user on its vhost's broker and goes
//! through the same door as a client's channel ([`warren_core::Broker::apply`]): permissions,
//! limits, argument checks and durability apply exactly as they do to AMQP clients. A change
//! is answered once its -ok has come, which for a durable one is after the store's sync: a
//! 201 is never sent for what a crash could undo.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes as Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};
use warren_codec::reply_code::{ACCESS_REFUSED, NOT_ALLOWED, NOT_FOUND};
use warren_codec::{
    BasicGet, BasicProperties, BasicPublish, ConfirmSelect, ExchangeBind, ExchangeDeclare, ExchangeDelete,
    ExchangeUnbind, FieldTable, FieldValue, Method, QueueBind, QueueDeclare, QueueDelete, QueuePurge,
    QueueUnbind,
};
use warren_core::broker::ConnectionInfo;
use warren_core::command::{Command, Publish};
use warren_core::message::Outgoing;
use warren_core::{AmqpError, ConnId};

use super::Viewer;
use super::api::{not_found, properties_key, table_json};
use crate::node::NodeRef;
use crate::shared::{SharedRef, lock};

/// How long a change may wait for its -ok (a durable one waits for the store's sync).
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// Messages one `get` request takes at most.
pub(super) const MAX_GET: usize = 1000;

/// Payload octets one `get` response shows at most (later messages stay in the queue; a
/// message past the bound is cut, as `truncate` cuts).
pub(super) const MAX_GET_BYTES: usize = 16 << 20;

/// A path segment percent-encoded (all but RFC 3986's unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An API error: a status and RabbitMQ's error object.
type ApiError = (StatusCode, Json<Value>);

/// An AMQP error as RabbitMQ's API reports it.
fn api_error(e: AmqpError) -> ApiError {
    let (status, error) = match e.code {
        NOT_FOUND => (StatusCode::NOT_FOUND, "not_found"),
        ACCESS_REFUSED | NOT_ALLOWED => (StatusCode::FORBIDDEN, "not_authorised"),
        c if c < 500 => (StatusCode::BAD_REQUEST, "bad_request"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    };
    (status, Json(json!({"error": error, "reason": e.text})))
}

pub(super) fn bad_request(reason: impl Into<String>) -> ApiError {
    (StatusCode::BAD_REQUEST, Json(json!({"error": "bad_request", "reason": reason.into()})))
}

/// A session of the requesting user on one vhost's broker, with channel 1 open; released
/// (its unacked messages requeued, as at a client's disconnect) when dropped.
struct ApiSession {
    shared: SharedRef,
    conn: ConnId,
    /// Woken when the broker queues something for the session, as a connection's task is.
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl ApiSession {
    fn open(node: &NodeRef, viewer: &Viewer, vhost: &str) -> Result<ApiSession, ApiError> {
        Self::open_as(node, Some(viewer), vhost)
    }

    /// A session of `viewer`, or of the node itself (`None`: a definitions import, where no
    /// permission is checked).
    fn open_as(node: &NodeRef, viewer: Option<&Viewer>, vhost: &str) -> Result<ApiSession, ApiError> {
        let shared = node.broker(vhost).ok_or_else(not_found)?.clone();
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        let conn = {
            let mut s = lock(&shared);
            let info = ConnectionInfo {
                user: viewer.map_or_else(String::new, |v| v.user.name.clone()),
                vhost: vhost.to_string(),
                ..Default::default()
            };
            // No connection: it takes no slot a client could use.
            let conn = match viewer {
                Some(_) => s.broker.open_operator_session(info),
                None => s.broker.open_system_session(info),
            }
            .map_err(api_error)?;
            let opened = s.broker.apply(conn, 1, Command::OpenChannel);
            let mut drained = Vec::new();
            let _ = s.broker.take_outbound(conn, &mut drained);
            if let Err(e) = opened {
                s.broker.disconnect(conn);
                return Err(api_error(e));
            }
            s.register(conn, notify.clone());
            conn
        };
        Ok(ApiSession { shared, conn, notify })
    }

    /// Applies `cmd` and waits until what the session was sent satisfies `done` (nothing is
    /// waited for when `done` is `None`); returns what it was sent.
    async fn call(
        &self,
        cmd: Command,
        done: Option<fn(&[Outgoing]) -> bool>,
    ) -> Result<Vec<Outgoing>, ApiError> {
        {
            let mut s = lock(&self.shared);
            s.broker.apply(self.conn, 1, cmd).map_err(api_error)?;
            s.wake_all();
        }
        let started = tokio::time::Instant::now();
        let mut sent = Vec::new();
        loop {
            let errors = {
                let mut s = lock(&self.shared);
                let _ = s.broker.take_outbound(self.conn, &mut sent);
                s.broker.take_errors(self.conn)
            };
            // An error raised later (a record that could not be made durable) ends the call.
            if let Some((_, e)) = errors.into_iter().next() {
                return Err(api_error(e));
            }
            if done.is_none_or(|d| d(&sent)) {
                return Ok(sent);
            }
            let Some(left) = REPLY_WAIT.checked_sub(started.elapsed()) else {
                let reason = "the change was made but not confirmed durable in time";
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": "timeout", "reason": reason})),
                ));
            };
            // Woken when the broker queues something for the session (the sync's -ok).
            let _ = tokio::time::timeout(left, self.notify.notified()).await;
        }
    }
}

impl Drop for ApiSession {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.broker.disconnect(self.conn);
        s.unregister(self.conn);
        s.wake_all();
    }
}

/// Whether a method reply (not a delivery or a return) has come.
fn replied(sent: &[Outgoing]) -> bool {
    sent.iter().any(|o| match o {
        Outgoing::Method { method, .. } => !matches!(method, Method::BasicReturn(_)),
        Outgoing::Content { method, .. } => !matches!(method, Method::BasicReturn(_)),
        Outgoing::Deliver { .. } => false,
    })
}

/// A JSON value as an AMQP field value, as RabbitMQ's API reads arguments.
fn json_field(v: &Value) -> FieldValue {
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => FieldValue::LongString(s.clone().into()),
        Value::Array(a) => FieldValue::Array(a.iter().map(json_field).collect()),
        Value::Object(o) => FieldValue::Table(json_table(o)),
    }
}

fn json_table(o: &Map<String, Value>) -> FieldTable {
    o.iter().map(|(k, v)| (k.clone(), json_field(v))).collect()
}

/// A request body as a JSON object; an empty body is an empty object.
pub(super) fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(e) => Err(bad_request(format!("the body is not JSON: {e}"))),
    }
}

/// An exchange.declare from a request's (or a definitions entry's) fields, as RabbitMQ reads them.
fn exchange_declare(
    exchange: String,
    kind: String,
    o: &Map<String, Value>,
) -> Result<ExchangeDeclare, ApiError> {
    Ok(ExchangeDeclare {
        exchange,
        kind,
        durable: flag(o, "durable", true),
        auto_delete: flag(o, "auto_delete", false),
        internal: flag(o, "internal", false),
        arguments: arguments(o)?,
        ..Default::default()
    })
}

/// A queue.declare from a request's (or a definitions entry's) fields.
fn queue_declare(queue: String, o: &Map<String, Value>) -> Result<QueueDeclare, ApiError> {
    Ok(QueueDeclare {
        queue,
        durable: flag(o, "durable", true),
        auto_delete: flag(o, "auto_delete", false),
        arguments: arguments(o)?,
        ..Default::default()
    })
}

/// The bind command of `destination` (a queue, or an exchange) to `source`.
fn bind_command(
    to_queue: bool,
    source: String,
    destination: String,
    key: String,
    args: FieldTable,
) -> Command {
    if to_queue {
        Command::BindQueue(QueueBind {
            queue: destination,
            exchange: source,
            routing_key: key,
            arguments: args,
            ..Default::default()
        })
    } else {
        Command::BindExchange(ExchangeBind {
            destination,
            source,
            routing_key: key,
            arguments: args,
            ..Default::default()
        })
    }
}

fn flag(o: &Map<String, Value>, key: &str, default: bool) -> bool {
    o.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn arguments(o: &Map<String, Value>) -> Result<FieldTable, ApiError> {
    match o.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(Value::Object(a)) => Ok(json_table(a)),
        Some(_) => Err(bad_request("arguments must be an object")),
    }
}

/// Refuses at once a change in a vhost the user has no permissions on (before its body is
/// read: a request it may not make learns nothing from the answer).
fn may_change(viewer: &Viewer, vhost: &str) -> Result<(), ApiError> {
    if viewer.may_change(vhost) {
        return Ok(());
    }
    let reason = format!("access to vhost '{vhost}' refused for user '{}'", viewer.user.name);
    Err((StatusCode::FORBIDDEN, Json(json!({"error": "not_authorised", "reason": reason}))))
}

/// The object a change is about.
#[derive(Clone, Copy)]
enum Target<'a> {
    Exchange(&'a str),
    Queue(&'a str),
}

/// Whether `vhost` has `target`.
fn exists(node: &NodeRef, vhost: &str, target: Target<'_>) -> bool {
    node.broker(vhost).is_some_and(|shared| {
        let s = lock(&shared);
        s.broker.vhosts().id(vhost).is_some_and(|id| {
            let v = &s.broker.vhosts()[id];
            match target {
                Target::Exchange(name) => v.exchange(name).is_some(),
                Target::Queue(name) => v.queue(name).is_some(),
            }
        })
    })
}

/// Runs `cmd` as `viewer` in `vhost` and waits for its -ok; whether `target` was there
/// before (a 404 without running it when `must_exist` and it was not). The session comes
/// first: a vhost the user has no permissions on says nothing of its contents.
async fn change(
    node: &NodeRef,
    viewer: &Viewer,
    vhost: &str,
    target: Target<'_>,
    must_exist: bool,
    cmd: Command,
) -> Result<bool, ApiError> {
    let session = ApiSession::open(node, viewer, vhost)?;
    let was_there = exists(node, vhost, target);
    if must_exist && !was_there {
        return Err(not_found());
    }
    session.call(cmd, Some(replied)).await?;
    Ok(was_there)
}

fn created(was_there: bool) -> Response {
    if was_there { StatusCode::NO_CONTENT.into_response() } else { StatusCode::CREATED.into_response() }
}

/// `PUT /api/exchanges/{vhost}/{name}`: 201 when made, 204 when it was there.
pub(super) async fn declare_exchange(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    may_change(&viewer, &vhost)?;
    let o = body_object(&body)?;
    let kind = o.get("type").and_then(Value::as_str).ok_or_else(|| bad_request("type is required"))?;
    let m = exchange_declare(name.clone(), kind.to_string(), &o)?;
    let was_there =
        change(&node, &viewer, &vhost, Target::Exchange(&name), false, Command::DeclareExchange(m)).await?;
    Ok(created(was_there))
}

/// `DELETE /api/exchanges/{vhost}/{name}[?if-unused=true]`.
pub(super) async fn delete_exchange(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    may_change(&viewer, &vhost)?;
    let m = ExchangeDelete {
        exchange: name.clone(),
        if_unused: q.get("if-unused").is_some_and(|v| v == "true"),
        ..Default::default()
    };
    change(&node, &viewer, &vhost, Target::Exchange(&name), true, Command::DeleteExchange(m)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/queues/{vhost}/{name}`: 201 when made, 204 when it was there.
pub(super) async fn declare_queue(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    may_change(&viewer, &vhost)?;
    let o = body_object(&body)?;
    if flag(&o, "exclusive", false) {
        // Owned by the request's own session, it would be gone with the response.
        return Err(bad_request("an exclusive queue cannot be declared through the API"));
    }
    let m = queue_declare(name.clone(), &o)?;
    let was_there =
        change(&node, &viewer, &vhost, Target::Queue(&name), false, Command::DeclareQueue(m)).await?;
    Ok(created(was_there))
}

/// `DELETE /api/queues/{vhost}/{name}[?if-unused=true&if-empty=true]`.
pub(super) async fn delete_queue(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    may_change(&viewer, &vhost)?;
    let yes = |k: &str| q.get(k).is_some_and(|v| v == "true");
    let m = QueueDelete {
        queue: name.clone(),
        if_unused: yes("if-unused"),
        if_empty: yes("if-empty"),
        ..Default::default()
    };
    change(&node, &viewer, &vhost, Target::Queue(&name), true, Command::DeleteQueue(m)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: purge.
pub(super) async fn purge_queue(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    may_change(&viewer, &vhost)?;
    let m = QueuePurge { queue: name, ..Default::default() };
    ApiSession::open(&node, &viewer, &vhost)?.call(Command::PurgeQueue(m), Some(replied)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`: 201 with the new binding's
/// path in `Location`, as RabbitMQ.
pub(super) async fn bind(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    may_change(&viewer, &vhost)?;
    let o = body_object(&body)?;
    let key = o.get("routing_key").and_then(Value::as_str).unwrap_or_default().to_string();
    let args = arguments(&o)?;
    let props = properties_key(&key, &args);
    let (source_name, destination_name) = (source.clone(), destination.clone());
    let cmd = match kind.as_str() {
        "q" => bind_command(true, source, destination, key, args),
        "e" => bind_command(false, source, destination, key, args),
        _ => return Err(not_found()),
    };
    ApiSession::open(&node, &viewer, &vhost)?.call(cmd, Some(replied)).await?;
    // RabbitMQ's Location: the new binding's path, each segment percent-encoded.
    let location = ["bindings", &vhost, "e", &source_name, &kind, &destination_name, &props]
        .iter()
        .map(|seg| encode_segment(seg))
        .collect::<Vec<_>>()
        .join("/");
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers).into_response())
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`: `props` is the
/// binding's `properties_key` from a listing.
pub(super) async fn unbind(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    may_change(&viewer, &vhost)?;
    let to_queue = match kind.as_str() {
        "q" => true,
        "e" => false,
        _ => return Err(not_found()),
    };
    let session = ApiSession::open(&node, &viewer, &vhost)?;
    // The key and arguments behind `props`, from the source's bindings.
    let found = node.broker(&vhost).and_then(|shared| {
        let s = lock(&shared);
        let id = s.broker.vhosts().id(&vhost)?;
        let x = s.broker.vhosts()[id].exchange(&source)?;
        x.bindings()
            .find(|b| {
                let same_dest = match &b.destination {
                    warren_core::exchange::Destination::Queue(q) => to_queue && **q == *destination,
                    warren_core::exchange::Destination::Exchange(e) => !to_queue && **e == *destination,
                };
                same_dest && properties_key(&b.key, &b.arguments) == props
            })
            .map(|b| (b.key.clone(), b.arguments.clone()))
    });
    let (key, args) = found.ok_or_else(not_found)?;
    let cmd = if to_queue {
        Command::UnbindQueue(QueueUnbind {
            queue: destination,
            exchange: source,
            routing_key: key,
            arguments: args,
            ..Default::default()
        })
    } else {
        Command::UnbindExchange(ExchangeUnbind {
            destination,
            source,
            routing_key: key,
            arguments: args,
            ..Default::default()
        })
    };
    session.call(cmd, Some(replied)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A message's properties as RabbitMQ's API shows them.
fn properties_json(p: &BasicProperties) -> Value {
    let mut o = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(k.to_string(), v);
        }
    };
    put("content_type", p.content_type.clone().map(Value::from));
    put("content_encoding", p.content_encoding.clone().map(Value::from));
    put("headers", p.headers.as_ref().map(table_json));
    put("delivery_mode", p.delivery_mode.map(Value::from));
    put("priority", p.priority.map(Value::from));
    put("correlation_id", p.correlation_id.clone().map(Value::from));
    put("reply_to", p.reply_to.clone().map(Value::from));
    put("expiration", p.expiration.clone().map(Value::from));
    put("message_id", p.message_id.clone().map(Value::from));
    put("timestamp", p.timestamp.map(Value::from));
    put("type", p.kind.clone().map(Value::from));
    put("user_id", p.user_id.clone().map(Value::from));
    put("app_id", p.app_id.clone().map(Value::from));
    Value::Object(o)
}

/// Properties from RabbitMQ's API JSON; unknown keys are refused by name.
fn properties_from_json(o: &Map<String, Value>) -> Result<BasicProperties, ApiError> {
    let mut p = BasicProperties::default();
    let text = |v: &Value, k: &str| {
        v.as_str().map(str::to_string).ok_or_else(|| bad_request(format!("{k} must be a string")))
    };
    let octet = |v: &Value, k: &str| {
        v.as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| bad_request(format!("{k} must be 0 to 255")))
    };
    for (k, v) in o {
        match k.as_str() {
            "content_type" => p.content_type = Some(text(v, k)?),
            "content_encoding" => p.content_encoding = Some(text(v, k)?),
            "headers" => match v {
                Value::Object(h) => p.headers = Some(json_table(h)),
                _ => return Err(bad_request("headers must be an object")),
            },
            "delivery_mode" => p.delivery_mode = Some(octet(v, k)?),
            "priority" => p.priority = Some(octet(v, k)?),
            "correlation_id" => p.correlation_id = Some(text(v, k)?),
            "reply_to" => p.reply_to = Some(text(v, k)?),
            "expiration" => p.expiration = Some(text(v, k)?),
            "message_id" => p.message_id = Some(text(v, k)?),
            "timestamp" => {
                p.timestamp = Some(v.as_u64().ok_or_else(|| bad_request("timestamp must be a number"))?)
            }
            "type" => p.kind = Some(text(v, k)?),
            "user_id" => p.user_id = Some(text(v, k)?),
            "app_id" => p.app_id = Some(text(v, k)?),
            other => return Err(bad_request(format!("unknown property '{other}'"))),
        }
    }
    Ok(p)
}

/// `POST /api/exchanges/{vhost}/{name}/publish`: `{"routed": bool}` once the message is
/// confirmed (after the store's sync for a persistent one); `amq.default` names the default
/// exchange.
pub(super) async fn publish(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, exchange)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    may_change(&viewer, &vhost)?;
    let o = body_object(&body)?;
    let routing_key = o.get("routing_key").and_then(Value::as_str).unwrap_or_default().to_string();
    let payload = o.get("payload").and_then(Value::as_str).unwrap_or_default();
    let payload = match o.get("payload_encoding").and_then(Value::as_str).unwrap_or("string") {
        "string" => payload.as_bytes().to_vec(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| bad_request(format!("payload is not base64: {e}")))?,
        other => return Err(bad_request(format!("unknown payload_encoding '{other}'"))),
    };
    let properties = match o.get("properties") {
        None | Some(Value::Null) => BasicProperties::default(),
        Some(Value::Object(p)) => properties_from_json(p)?,
        Some(_) => return Err(bad_request("properties must be an object")),
    };
    let exchange = if exchange == "amq.default" { String::new() } else { exchange };
    let session = ApiSession::open(&node, &viewer, &vhost)?;
    // A resource alarm blocks publishers, over HTTP as over AMQP.
    if let Some(reason) = lock(&session.shared).broker.alarm().map(str::to_string) {
        let reason = format!("publishing is blocked by a resource alarm: {reason}");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "resource_alarm", "reason": reason})),
        ));
    }
    session.call(Command::SelectConfirms(ConfirmSelect::default()), Some(replied)).await?;
    let method = BasicPublish { exchange, routing_key, mandatory: true, ..Default::default() };
    let publish = Publish { method, properties: Box::new(properties), body: payload.into() };
    let acked = |sent: &[Outgoing]| {
        sent.iter()
            .any(|o| matches!(o, Outgoing::Method { method: Method::BasicAck(_) | Method::BasicNack(_), .. }))
    };
    let sent = session.call(Command::Publish(publish), Some(acked)).await?;
    let returned = sent.iter().any(|o| matches!(o, Outgoing::Content { method: Method::BasicReturn(_), .. }));
    if sent.iter().any(|o| matches!(o, Outgoing::Method { method: Method::BasicNack(_), .. })) {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "internal_error", "reason": "the broker refused the message (nack)"})),
        ));
    }
    Ok(Json(json!({"routed": !returned})))
}

/// `POST /api/queues/{vhost}/{name}/get`: up to `count` (at most [`MAX_GET`]) messages, with
/// RabbitMQ's ack modes: `ack_requeue_true` and `reject_requeue_true` put them back (marked
/// redelivered), `ack_requeue_false` removes them, `reject_requeue_false` dead-letters them.
pub(super) async fn get(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, queue)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    may_change(&viewer, &vhost)?;
    let o = body_object(&body)?;
    let count = o.get("count").and_then(Value::as_u64).unwrap_or(1).min(MAX_GET as u64) as usize;
    let ackmode = o.get("ackmode").and_then(Value::as_str).unwrap_or("ack_requeue_true");
    if !["ack_requeue_true", "reject_requeue_true", "ack_requeue_false", "reject_requeue_false"]
        .contains(&ackmode)
    {
        return Err(bad_request(format!("unknown ackmode '{ackmode}'")));
    }
    let encoding = o.get("encoding").and_then(Value::as_str).unwrap_or("auto");
    if encoding != "auto" && encoding != "base64" {
        return Err(bad_request(format!("unknown encoding '{encoding}'")));
    }
    let truncate = o.get("truncate").and_then(Value::as_u64).map(|n| n as usize);
    let session = ApiSession::open(&node, &viewer, &vhost)?;
    let mut out = Vec::new();
    let mut tags = Vec::new();
    let mut shown_bytes = 0usize;
    for _ in 0..count {
        // What one response carries is bounded, whatever the count and the messages' sizes.
        if shown_bytes >= MAX_GET_BYTES {
            break;
        }
        let cmd = Command::Get(BasicGet { queue: queue.clone(), no_ack: false, ..Default::default() });
        let sent = session.call(cmd, Some(replied)).await?;
        let got = sent.into_iter().find_map(|o| match o {
            Outgoing::Content { method: Method::BasicGetOk(ok), message, .. } => Some((ok, message)),
            _ => None,
        });
        let Some((ok, message)) = got else {
            break;
        };
        tags.push(ok.delivery_tag);
        let body = &message.body[..];
        let limit = truncate.unwrap_or(usize::MAX).min(MAX_GET_BYTES - shown_bytes);
        let shown = &body[..limit.min(body.len())];
        shown_bytes += shown.len();
        let (payload, payload_encoding) = match std::str::from_utf8(shown) {
            Ok(s) if encoding == "auto" => (s.to_string(), "string"),
            _ => (base64::engine::general_purpose::STANDARD.encode(shown), "base64"),
        };
        out.push(json!({
            "payload_bytes": body.len(),
            "redelivered": ok.redelivered,
            "exchange": ok.exchange,
            "routing_key": ok.routing_key,
            "message_count": ok.message_count,
            "properties": properties_json(&message.properties),
            "payload": payload,
            "payload_encoding": payload_encoding,
        }));
    }
    // Requeue modes leave the deliveries unacked: the session's end puts them back.
    for tag in tags {
        let cmd = match ackmode {
            "ack_requeue_false" => Command::Ack { delivery_tag: tag, multiple: false },
            "reject_requeue_false" => Command::Reject { delivery_tag: tag, requeue: false },
            // A reject: the queue's retry policy and delivery limit apply, as RabbitMQ's.
            "reject_requeue_true" => Command::Reject { delivery_tag: tag, requeue: true },
            _ => break,
        };
        session.call(cmd, None).await?;
    }
    drop(session);
    Ok(Json(Value::Array(out)))
}

/// Declares the exchanges and queues and makes the bindings of a definitions document, in
/// that order, as the node itself; an error names the object that failed (what came before
/// it stays). How many objects it made or found.
pub(super) async fn import_topology(node: &NodeRef, defs: &Map<String, Value>) -> Result<usize, ApiError> {
    let list = |key: &str| -> Result<Vec<Map<String, Value>>, ApiError> {
        match defs.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_object().cloned().ok_or_else(|| bad_request(format!("{key} must hold objects")))
                })
                .collect(),
            Some(_) => Err(bad_request(format!("{key} must be a list"))),
        }
    };
    let text =
        |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut commands: Vec<(String, String, Command)> = Vec::new();
    for o in list("exchanges")? {
        let m = exchange_declare(text(&o, "name"), text(&o, "type"), &o)?;
        commands.push((text(&o, "vhost"), format!("exchange '{}'", m.exchange), Command::DeclareExchange(m)));
    }
    for o in list("queues")? {
        let m = queue_declare(text(&o, "name"), &o)?;
        commands.push((text(&o, "vhost"), format!("queue '{}'", m.queue), Command::DeclareQueue(m)));
    }
    for o in list("bindings")? {
        let (source, destination, key) =
            (text(&o, "source"), text(&o, "destination"), text(&o, "routing_key"));
        let what = format!("binding of '{destination}' to '{source}'");
        let to_queue = o.get("destination_type").and_then(Value::as_str) != Some("exchange");
        let cmd = bind_command(to_queue, source, destination, key, arguments(&o)?);
        commands.push((text(&o, "vhost"), what, cmd));
    }
    let count = commands.len();
    for (vhost, what, cmd) in commands {
        let failed = |(status, Json(body)): ApiError| {
            let reason = body.get("reason").and_then(Value::as_str).unwrap_or_default().to_string();
            (
                status,
                Json(
                    json!({"error": "bad_request", "reason": format!("{what} in vhost '{vhost}': {reason}")}),
                ),
            )
        };
        let session = ApiSession::open_as(node, None, &vhost).map_err(failed)?;
        session.call(cmd, Some(replied)).await.map_err(failed)?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::super::api::field_json;
    use super::*;

    #[test]
    fn json_arguments_become_the_field_values_rabbitmq_gives_them() {
        let o = json!({"x-max-length": 10, "x-ratio": 0.5, "x-dead-letter-exchange": "dlx", "x-flag": true, "x-list": [1, "a"]});
        let Value::Object(o) = o else { unreachable!("an object") };
        let t = json_table(&o);
        assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(t.get("x-ratio"), Some(&FieldValue::F64(0.5)));
        assert_eq!(t.get("x-dead-letter-exchange"), Some(&FieldValue::LongString("dlx".into())));
        assert_eq!(t.get("x-flag"), Some(&FieldValue::Bool(true)));
        assert_eq!(field_json(&t["x-list"]), json!([1, "a"]));
    }

    #[test]
    fn properties_keys_never_collide_as_rabbitmq_builds_them() {
        let none = FieldTable::new();
        assert_eq!(properties_key("", &none), "~");
        assert_eq!(properties_key("~", &none), "%7E", "a key of ~ is not the empty key");
        assert_eq!(properties_key("a%b", &none), "a%25b");
        let int = |v: FieldValue| FieldTable::from([("x".to_string(), v)]);
        let (a, b) =
            (properties_key("k", &int(FieldValue::I32(1))), properties_key("k", &int(FieldValue::I64(1))));
        assert_ne!(a, b, "arguments of other types are other bindings");
        assert!(a.starts_with("k~"));
        assert_ne!(properties_key(&a, &none), a, "a key shaped like a digest is escaped");
        assert_eq!(encode_segment("a b/%~"), "a%20b%2F%25~");
    }

    #[test]
    fn properties_round_trip_and_unknown_ones_are_named() {
        let Value::Object(o) =
            json!({"delivery_mode": 2, "headers": {"k": "v"}, "content_type": "text/plain"})
        else {
            unreachable!("an object")
        };
        let p = properties_from_json(&o).expect("properties");
        assert_eq!(properties_json(&p), Value::Object(o));
        let Value::Object(bad) = json!({"deliverymode": 2}) else { unreachable!("an object") };
        assert!(properties_from_json(&bad).is_err());
    }
}
