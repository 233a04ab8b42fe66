//! RabbitMQ's listing parameters, for every route that answers a JSON array: `name` (with
//! `use_regex=true`, a regular expression; otherwise a substring), `sort` and `sort_reverse`,
//! `columns` (the fields to keep, dotted for nested ones), and `page` / `page_size`, which turn
//! the answer into RabbitMQ's page object (`items`, `page`, `page_count`, `page_size`,
//! `item_count`, `filtered_count`, `total_count`). A page holds at most
//! [`MAX_PAGE_SIZE`] items, as in RabbitMQ.
//!
//! One layer over the routes: a request without these parameters passes untouched.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Items one page holds at most (RabbitMQ's limit).
pub(super) const MAX_PAGE_SIZE: usize = 500;

/// Octets a `name` filter may have.
const MAX_NAME_FILTER: usize = 1024;

/// A listing answer's body is read back at most this large to be reshaped.
const MAX_LISTING: usize = 256 << 20;

const PARAMS: [&str; 7] = ["name", "use_regex", "sort", "sort_reverse", "columns", "page", "page_size"];

fn bad(reason: String) -> Response {
    super::ops::bad_request(reason).into_response()
}

/// The layer: reshapes a JSON array answer by the request's listing parameters.
pub(super) async fn shape(req: Request, next: Next) -> Response {
    // Listings are the API's; the UI's files pass untouched.
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let q: HashMap<String, String> = Query::try_from_uri(req.uri()).map(|Query(q)| q).unwrap_or_default();
    if !PARAMS.iter().any(|p| q.contains_key(*p)) {
        return next.run(req).await;
    }
    let number = |k: &str| -> Result<Option<usize>, String> {
        match q.get(k) {
            None => Ok(None),
            Some(v) => v.parse::<usize>().map(Some).map_err(|_| format!("{k} must be a positive integer")),
        }
    };
    let (page, page_size) = match (number("page"), number("page_size")) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    if page == Some(0) || page_size == Some(0) {
        return bad("page and page_size start at 1".into());
    }
    if page_size.is_some_and(|s| s > MAX_PAGE_SIZE) {
        return bad(format!("page_size must not exceed {MAX_PAGE_SIZE}"));
    }
    let filter = match q.get("name").filter(|n| !n.is_empty()) {
        None => None,
        Some(n) if n.len() > MAX_NAME_FILTER => {
            return bad(format!("name must not be longer than {MAX_NAME_FILTER} octets"));
        }
        // Bounded compiled size: a filter costs time linear in what it reads, never more.
        Some(n) if q.get("use_regex").is_some_and(|v| v == "true") => {
            match regex::RegexBuilder::new(n).size_limit(1 << 16).dfa_size_limit(1 << 16).build() {
                Ok(r) => Some(Filter::Regex(r)),
                Err(e) => return bad(format!("name is not a regular expression: {e}")),
            }
        }
        Some(n) => Some(Filter::Substring(n.clone())),
    };
    let response = next.run(req).await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_LISTING).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "listing too large to reshape").into_response();
    };
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&bytes) else {
        // Not a listing: as it was.
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let total = items.len();
    let mut items: Vec<Value> =
        items.into_iter().filter(|i| filter.as_ref().is_none_or(|f| f.keeps(i))).collect();
    let filtered = items.len();
    if let Some(key) = q.get("sort").filter(|k| !k.is_empty()) {
        items.sort_by(|a, b| compare(field(a, key), field(b, key)));
        if q.get("sort_reverse").is_some_and(|v| v == "true") {
            items.reverse();
        }
    }
    if let Some(columns) = q.get("columns") {
        let columns: Vec<&str> = columns.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
        items = items.iter().map(|i| keep(i, &columns)).collect();
    }
    if page.is_none() && page_size.is_none() {
        return Json(Value::Array(items)).into_response();
    }
    let size = page_size.unwrap_or(100);
    let page = page.unwrap_or(1);
    let page_count = filtered.div_ceil(size).max(1);
    let items: Vec<Value> = items.into_iter().skip((page - 1).saturating_mul(size)).take(size).collect();
    Json(json!({
        "filtered_count": filtered,
        "item_count": items.len(),
        "items": items,
        "page": page,
        "page_count": page_count,
        "page_size": size,
        "total_count": total,
    }))
    .into_response()
}

enum Filter {
    Regex(regex::Regex),
    Substring(String),
}

impl Filter {
    fn keeps(&self, item: &Value) -> bool {
        let name = item["name"].as_str().unwrap_or_default();
        match self {
            Filter::Regex(r) => r.is_match(name),
            Filter::Substring(s) => name.contains(s.as_str()),
        }
    }
}

/// A field by dotted path.
fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |at, key| &at[key])
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(0.0).total_cmp(&y.as_f64().unwrap_or(0.0))
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// `item` with only `columns` (dotted paths keep their nesting).
fn keep(item: &Value, columns: &[&str]) -> Value {
    let mut out = Map::new();
    for c in columns {
        let v = field(item, c);
        if v.is_null() {
            continue;
        }
        let mut keys = c.split('.').peekable();
        let mut at = &mut out;
        while let Some(k) = keys.next() {
            if keys.peek().is_none() {
                at.insert(k.to_string(), v.clone());
            } else {
                let next = at.entry(k.to_string()).or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(m) = next else { break };
                at = m;
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_keep_nested_fields_and_sorting_compares_numbers_as_numbers() {
        let item = json!({"name": "q", "queue": {"name": "a", "vhost": "/"}, "messages": 3});
        assert_eq!(keep(&item, &["name", "queue.vhost"]), json!({"name": "q", "queue": {"vhost": "/"}}));
        assert_eq!(compare(&json!(9), &json!(10)), std::cmp::Ordering::Less);
        assert!(Filter::Substring("rd".into()).keeps(&json!({"name": "orders"})));
    }
}
