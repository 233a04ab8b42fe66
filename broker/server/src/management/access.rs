//! Changes to the directory through the API, as RabbitMQ's management API makes them (all
//! need `administrator`): users (`PUT`/`DELETE /api/users/{user}`), vhosts
//! (`/api/vhosts/{vhost}`; the creator gets every permission on a vhost it creates),
//! permissions and topic permissions (`/api/permissions/{vhost}/{user}`,
//! `/api/topic-permissions/{vhost}/{user}`), user and vhost limits (`/api/user-limits/...`,
//! `/api/vhost-limits/...`). Each takes effect once it is on disk ([`crate::directory_file`]);
//! 201 when it made something, 204 when it changed or deleted something.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use warren_core::directory::{Change, DirectoryError, UserLimit, VHostLimit};
use warren_core::password::{HashAlgorithm, Password};

use super::Viewer;
use super::api::not_found;
use super::ops::{bad_request, body_object};
use crate::definitions::{PermissionDef, TopicPermissionDef};
use crate::node::{ChangeError, NodeRef};
use crate::shared::lock;

type ApiError = (StatusCode, Json<Value>);

pub(super) fn admin(viewer: &Viewer) -> Result<(), ApiError> {
    if viewer.user.has_tag("administrator") {
        return Ok(());
    }
    let reason = "administrator tag needed";
    Err((StatusCode::FORBIDDEN, Json(json!({"error": "not_authorised", "reason": reason}))))
}

/// A refused or failed change as RabbitMQ's API reports it: a missing object is 404 when it
/// is the one the path names (`subject`), else 400; a change that could not be stored 500.
fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::Refused(DirectoryError::NoPermission { .. }) => not_found(),
        ChangeError::Refused(e @ (DirectoryError::NoUser(_) | DirectoryError::NoVHost(_))) => {
            bad_request(e.to_string())
        }
        ChangeError::Refused(e) => bad_request(e.to_string()),
        e @ ChangeError::Storage(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "internal_error", "reason": e.to_string()})),
        ),
        ChangeError::Unsupported(why) => {
            (StatusCode::NOT_IMPLEMENTED, Json(json!({"error": "not_implemented", "reason": why})))
        }
        ChangeError::Unavailable(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "unavailable", "reason": why})))
        }
    }
}

fn string<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_request(format!("{key} must be a string"))),
    }
}

fn made(new: bool) -> Response {
    if new { StatusCode::CREATED.into_response() } else { StatusCode::NO_CONTENT.into_response() }
}

/// Tags as RabbitMQ's API takes them: a comma-separated string, or a list.
fn tags(o: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    match o.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            Ok(Some(s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()))
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or_else(|| bad_request("tags must be strings")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad_request("tags must be a string or a list")),
    }
}

/// `PUT /api/users/{user}`: `password` (hashed here with RabbitMQ's default), or
/// `password_hash` with `hashing_algorithm` (`""` for no password), and `tags`.
pub(super) async fn put_user(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    let o = body_object(&body)?;
    let existed = node.directory().load().user(&name).is_some();
    let password = match (string(&o, "password")?, string(&o, "password_hash")?) {
        // RabbitMQ's blank password: the user cannot log in with one.
        (Some(""), None) => Some(Password::Disabled),
        (Some(p), None) => {
            let salt = crate::definitions::fresh_salt().map_err(|e| bad_request(e.to_string()))?;
            let hash = warren_core::password::hash(HashAlgorithm::default(), salt, p);
            Some(
                Password::from_hash(HashAlgorithm::default(), &hash)
                    .map_err(|e| bad_request(e.to_string()))?,
            )
        }
        (None, Some(h)) => {
            let algorithm = match string(&o, "hashing_algorithm")? {
                Some(a) => HashAlgorithm::from_name(a).map_err(|e| bad_request(e.to_string()))?,
                None => HashAlgorithm::default(),
            };
            Some(Password::from_hash(algorithm, h).map_err(|e| bad_request(e.to_string()))?)
        }
        (Some(_), Some(_)) => return Err(bad_request("give password or password_hash, not both")),
        (None, None) => None,
    };
    // Merged in the directory, under its writer: what it does not name (limits, whether the
    // user is loopback-only) stays as it is, whatever else changes meanwhile.
    let change = Change::UpdateUser { name, password, tags: tags(&o)? };
    node.change_directory(vec![change]).await.map_err(change_error)?;
    Ok(made(!existed))
}

/// `DELETE /api/users/{user}`: its permissions go with it and its connections are closed.
pub(super) async fn delete_user(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    node.change_directory(vec![Change::DeleteUser(name.clone())]).await.map_err(|e| match e {
        ChangeError::Refused(DirectoryError::NoUser(_)) => not_found(),
        e => change_error(e),
    })?;
    for (_, shared) in &node.brokers() {
        let mut s = lock(shared);
        s.broker.close_connections_of(&name, &format!("user '{name}' was deleted"));
        s.wake_all();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/vhosts/{vhost}`: a vhost with a broker of its own; its creator gets every
/// permission on it, as RabbitMQ's API gives.
pub(super) async fn put_vhost(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    body_object(&body)?;
    if node.directory().load().vhosts.contains_key(&name) {
        return Ok(made(false));
    }
    let everything = PermissionDef {
        user: viewer.user.name.clone(),
        vhost: name.clone(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    };
    let grant = everything.permission().map_err(bad_request)?;
    // Without rules (a node built without a directory file) everyone may use it already, and
    // a first rule would take every other vhost from everyone else.
    let then = if node.directory().load().access.is_unrestricted() {
        Vec::new()
    } else {
        vec![Change::SetPermission(grant)]
    };
    node.add_vhost(&name, then).await.map_err(change_error)?;
    tracing::info!(vhost = %name, by = %viewer.user.name, "vhost created");
    Ok(made(true))
}

/// `DELETE /api/vhosts/{vhost}`: its connections closed, its queues, messages and exchanges
/// deleted, its permissions cleared.
pub(super) async fn delete_vhost(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    node.remove_vhost(&name).await.map_err(|e| match e {
        ChangeError::Refused(DirectoryError::NoVHost(_)) => not_found(),
        e => change_error(e),
    })?;
    tracing::info!(vhost = %name, by = %viewer.user.name, "vhost deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/permissions/{vhost}/{user}`: `configure`, `write`, `read`.
pub(super) async fn put_permission(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    let o = body_object(&body)?;
    let field = |k: &str| Ok::<_, ApiError>(string(&o, k)?.unwrap_or_default().to_string());
    let def = PermissionDef {
        configure: field("configure")?,
        write: field("write")?,
        read: field("read")?,
        user: user.clone(),
        vhost: vhost.clone(),
    };
    let new = !node.directory().load().access.may_open(&user, &vhost);
    let p = def.permission().map_err(bad_request)?;
    node.change_directory(vec![Change::SetPermission(p)]).await.map_err(change_error)?;
    Ok(made(new))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub(super) async fn delete_permission(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    node.change_directory(vec![Change::ClearPermission { user, vhost }]).await.map_err(change_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/topic-permissions/{vhost}/{user}`: `exchange`, `write`, `read`.
pub(super) async fn put_topic_permission(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    let o = body_object(&body)?;
    let exchange = string(&o, "exchange")?.ok_or_else(|| bad_request("exchange is required"))?;
    let field = |k: &str| Ok::<_, ApiError>(string(&o, k)?.unwrap_or_default().to_string());
    let def = TopicPermissionDef {
        exchange: exchange.to_string(),
        write: field("write")?,
        read: field("read")?,
        user: user.clone(),
        vhost: vhost.clone(),
    };
    let new = !node
        .directory()
        .load()
        .access
        .topic_permissions()
        .iter()
        .any(|t| t.user == user && t.vhost == vhost && t.exchange == exchange);
    let t = def.permission().map_err(bad_request)?;
    node.change_directory(vec![Change::SetTopicPermission(t)]).await.map_err(change_error)?;
    Ok(made(new))
}

/// `DELETE /api/topic-permissions/{vhost}/{user}`: on every exchange.
pub(super) async fn delete_topic_permissions(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    let change = Change::ClearTopicPermissions { user, vhost, exchange: None };
    node.change_directory(vec![change]).await.map_err(change_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A limit's `value` from a `{"value": N}` body; negative is none, as in RabbitMQ.
fn limit_value(body: &[u8]) -> Result<Option<usize>, ApiError> {
    let o = body_object(body)?;
    match o.get("value").and_then(Value::as_i64) {
        Some(n) if n < 0 => Ok(None),
        Some(n) => Ok(Some(n as usize)),
        None => Err(bad_request("value must be an integer")),
    }
}

/// Whose limits a limits route is about.
#[derive(Debug, Clone, Copy)]
pub(super) enum Owner {
    /// `/api/user-limits/{user}/{name}`.
    User,
    /// `/api/vhost-limits/{vhost}/{name}`.
    VHost,
}

/// Sets (`Some`) or clears limit `name` of `who`; 204, or 404 for a user or vhost that
/// does not exist.
async fn set_limit(
    node: &NodeRef,
    owner: Owner,
    who: String,
    name: &str,
    value: Option<usize>,
) -> Result<Response, ApiError> {
    let unknown = || bad_request(format!("unknown limit '{name}'"));
    let change = match owner {
        Owner::User => {
            Change::SetUserLimit { user: who, limit: UserLimit::from_name(name).ok_or_else(unknown)?, value }
        }
        Owner::VHost => Change::SetVHostLimit {
            vhost: who,
            limit: VHostLimit::from_name(name).ok_or_else(unknown)?,
            value,
        },
    };
    node.change_directory(vec![change]).await.map_err(|e| match e {
        ChangeError::Refused(DirectoryError::NoUser(_) | DirectoryError::NoVHost(_)) => not_found(),
        e => change_error(e),
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/user-limits/{user}/{name}` and `/api/vhost-limits/{vhost}/{name}` with
/// `{"value": N}` (negative: no limit, as in RabbitMQ).
pub(super) async fn put_limit(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((who, name)): Path<(String, String)>,
    body: Bytes,
    owner: Owner,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    set_limit(&node, owner, who, &name, limit_value(&body)?).await
}

/// `DELETE` of the same: the limit is gone.
pub(super) async fn delete_limit(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((who, name)): Path<(String, String)>,
    owner: Owner,
) -> Result<Response, ApiError> {
    admin(&viewer)?;
    set_limit(&node, owner, who, &name, None).await
}

/// A policy change needs `administrator` or `policymaker`, and permissions on the vhost.
fn policymaker(viewer: &Viewer, vhost: &str) -> Result<(), ApiError> {
    let tagged = viewer.user.has_tag("administrator") || viewer.user.has_tag("policymaker");
    if tagged && viewer.may_change(vhost) {
        return Ok(());
    }
    let reason = format!("user '{}' may not change the policies of vhost '{vhost}'", viewer.user.name);
    Err((StatusCode::FORBIDDEN, Json(json!({"error": "not_authorised", "reason": reason}))))
}

/// `PUT /api/policies/{vhost}/{name}`: `pattern`, `definition`, `priority`, `apply-to`. It
/// applies to queues declared from then on, as Warren's policies are read at declare.
pub(super) async fn put_policy(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    policymaker(&viewer, &vhost)?;
    let mut o = body_object(&body)?;
    o.insert("vhost".into(), json!(vhost));
    o.insert("name".into(), json!(name));
    let def: crate::definitions::PolicyDef =
        serde_json::from_value(Value::Object(o)).map_err(|e| bad_request(format!("not a policy: {e}")))?;
    let policy = def.policy().map_err(bad_request)?;
    let new = !node.directory().load().policies.iter().any(|p| p.vhost == vhost && p.name == name);
    node.change_directory(vec![Change::PutPolicy(policy)]).await.map_err(change_error)?;
    Ok(made(new))
}

/// `DELETE /api/policies/{vhost}/{name}`.
pub(super) async fn delete_policy(
    State(node): State<NodeRef>,
    Extension(viewer): Extension<Viewer>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    policymaker(&viewer, &vhost)?;
    node.change_directory(vec![Change::DeletePolicy { vhost, name }]).await.map_err(|e| match e {
        ChangeError::Refused(DirectoryError::NoPolicy { .. }) => not_found(),
        e => change_error(e),
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
