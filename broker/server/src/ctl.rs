//! `warren ctl`: what an operator does daily, over the management HTTP API (so it works
//! against any node it can reach, and against RabbitMQ's API too): list queues, exchanges,
//! bindings, connections, channels, consumers, users, vhosts and permissions; declare,
//! delete and purge; replay a dead-letter queue; close a connection; add and delete users
//! and vhosts, set and clear permissions; export and import definitions.
//! Tables for people, `--json` for scripts.
//!
//! The HTTP client is a few lines of HTTP/1.1 over a blocking socket: one request per
//! connection, a deadline on every read and write, and a bound on what is read back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use serde_json::Value;

/// How long one read or write may make no progress.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a response that is read (a definitions export of a big node fits).
const MAX_RESPONSE: u64 = 256 << 20;

/// The tool's options and what it is asked to do.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The management API: `http://HOST:PORT`.
    #[arg(long, env = "WARREN_URL", default_value = "http://127.0.0.1:15672")]
    pub url: String,
    /// The user to log in as.
    #[arg(long, env = "WARREN_USER", default_value = "guest")]
    pub user: String,
    /// Its password.
    #[arg(long, env = "WARREN_PASSWORD", default_value = "guest", hide_env_values = true)]
    pub password: crate::config::Secret,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// What `warren ctl` does.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List objects of one kind.
    List {
        /// queues, exchanges, bindings, connections, channels, consumers, users, vhosts,
        /// permissions or replays.
        kind: String,
        /// Only this vhost's (queues, exchanges, bindings).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Declare a durable queue.
    DeclareQueue {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// Declare a durable exchange.
    DeclareExchange {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
        /// Its type.
        #[arg(long = "type", default_value = "direct")]
        kind: String,
    },
    /// Delete a queue.
    DeleteQueue {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// Delete an exchange.
    DeleteExchange {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// Drop a queue's ready messages.
    Purge {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// Move a dead-letter queue's messages back to the queues they died in.
    Replay {
        /// Its vhost.
        vhost: String,
        /// The dead-letter queue.
        name: String,
        /// At most this many.
        #[arg(long)]
        count: Option<usize>,
        /// Run it as a background task (listed by `list replays`, stopped by `cancel-replay`).
        #[arg(long)]
        background: bool,
        /// Messages a second, for a background task (1000 unless given).
        #[arg(long, requires = "background")]
        rate: Option<u32>,
    },
    /// Cancel a background replay; it stops after its current batch.
    CancelReplay {
        /// Its id, as `list replays` shows it.
        id: u64,
    },
    /// Close a connection (320 CONNECTION_FORCED).
    CloseConnection {
        /// Its name, as `list connections` shows it.
        name: String,
        /// The reason the client is told.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print the definitions (users with password hashes, vhosts, permissions, policies,
    /// durable topology) in RabbitMQ's format.
    ExportDefinitions,
    /// Load a definitions file (RabbitMQ's format, as `export-definitions` prints it or
    /// RabbitMQ exports it).
    ImportDefinitions {
        /// The file; `-` for stdin.
        file: std::path::PathBuf,
    },
    /// Add a user, or change its password and tags. The password comes from
    /// `WARREN_NEW_PASSWORD` or, without it, the first line of stdin: never the command line.
    AddUser {
        /// Its name.
        name: String,
        /// Its tags, comma separated (administrator, monitoring, policymaker, management,
        /// impersonator).
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// Delete a user: its permissions go, its connections are closed.
    DeleteUser {
        /// Its name.
        name: String,
    },
    /// Add a vhost (you get every permission on it).
    AddVhost {
        /// Its name.
        name: String,
    },
    /// Delete a vhost with its queues, messages and exchanges; its connections are closed.
    DeleteVhost {
        /// Its name.
        name: String,
    },
    /// Set a user's configure, write and read patterns on a vhost.
    SetPermissions {
        /// The user.
        user: String,
        /// Names it may declare and delete.
        configure: String,
        /// Names it may publish to and bind to.
        write: String,
        /// Names it may consume from and bind from.
        read: String,
        /// The vhost.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Clear a user's permissions on a vhost.
    ClearPermissions {
        /// The user.
        user: String,
        /// The vhost.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

/// Bytes of a definitions file `import-definitions` sends at most (the API's own bound).
const MAX_DEFINITIONS: u64 = 64 << 20;

/// The new user's password: `WARREN_NEW_PASSWORD`, else stdin's first line.
fn new_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("WARREN_NEW_PASSWORD") {
        // An empty one is likely a variable that expanded to nothing: it would disable the login.
        if p.is_empty() {
            bail!("WARREN_NEW_PASSWORD is empty");
        }
        return Ok(p);
    }
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(std::io::stdin().take(64 << 10)), &mut line)?;
    if line.len() >= 64 << 10 && !line.ends_with('\n') {
        bail!("the password on stdin is over 64 KiB");
    }
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        bail!("no password: set WARREN_NEW_PASSWORD or give it on stdin");
    }
    Ok(p)
}

/// A path segment percent-encoded (all but RFC 3986's unreserved characters).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One HTTP exchange with the API.
struct Api {
    host: String,
    auth: String,
}

impl Api {
    fn new(args: &CtlArgs) -> anyhow::Result<Api> {
        Api::at(&args.url, &args.user, &args.password.0)
    }

    fn at(url: &str, user: &str, password: &str) -> anyhow::Result<Api> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must be http://HOST:PORT (HTTPS is not supported by warren ctl; use a tunnel)");
        };
        let host = rest.trim_end_matches('/').to_string();
        if host.is_empty() || host.contains('/') {
            bail!("--url must be http://HOST:PORT, got {url}");
        }
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Api { host, auth })
    }

    /// Sends `method path` with `body`; the status and the body, parsed as JSON when it is.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&self.host)
            .with_context(|| format!("cannot resolve {}", self.host))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", self.host))?;
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("cannot reach {}", self.host))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} /api/{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.host,
            self.auth,
            body.len()
        );
        for (k, v) in headers {
            if v.chars().any(char::is_control) {
                bail!("{k} must not hold control characters");
            }
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw).context("reading the response")?;
        let split =
            raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("no HTTP response"))?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut payload = raw[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status"))?;
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
        };
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            payload = dechunk(&payload)?;
        } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok())
            && payload.len() < len
        {
            bail!("the response was cut short: {} of {len} octets", payload.len());
        }
        let value = if payload.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&payload) {
                Ok(v) => v,
                // A success must be whole JSON; an error's body is shown as it came.
                Err(e) if (200..300).contains(&status) => bail!("the response is not JSON: {e}"),
                Err(_) => Value::String(String::from_utf8_lossy(&payload).into()),
            }
        };
        Ok((status, value))
    }

    /// [`Api::call`], failing on anything but 2xx with the API's reason.
    fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method, path, body, headers)?;
        if !(200..300).contains(&status) {
            let reason = value
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{method} /api/{path}: {status}: {reason}");
        }
        Ok(value)
    }
}

/// A chunked body, joined.
fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow!("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or_else(|| anyhow!("short chunk"))?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or_else(|| anyhow!("short chunk"))?;
    }
}

/// The columns a table of `kind` shows: header and JSON field.
fn columns(kind: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match kind {
        "queues" => &[
            ("vhost", "vhost"),
            ("name", "name"),
            ("type", "type"),
            ("durable", "durable"),
            ("ready", "messages_ready"),
            ("unacked", "messages_unacknowledged"),
            ("consumers", "consumers"),
            ("dead-letter target", "dead_letter_target"),
        ],
        "exchanges" => &[
            ("vhost", "vhost"),
            ("name", "name"),
            ("type", "type"),
            ("durable", "durable"),
            ("auto-delete", "auto_delete"),
            ("internal", "internal"),
        ],
        "bindings" => &[
            ("vhost", "vhost"),
            ("source", "source"),
            ("destination", "destination"),
            ("to", "destination_type"),
            ("routing key", "routing_key"),
        ],
        "connections" => &[
            ("name", "name"),
            ("user", "user"),
            ("vhost", "vhost"),
            ("channels", "channels"),
            ("protocol", "protocol"),
        ],
        "channels" => &[
            ("name", "name"),
            ("user", "user"),
            ("vhost", "vhost"),
            ("consumers", "consumer_count"),
            ("unacked", "messages_unacknowledged"),
            ("prefetch", "prefetch_count"),
            ("confirm", "confirm"),
        ],
        "consumers" => &[
            ("tag", "consumer_tag"),
            ("queue", "queue.name"),
            ("vhost", "queue.vhost"),
            ("ack", "ack_required"),
            ("prefetch", "prefetch_count"),
            ("channel", "channel_details.name"),
        ],
        "users" => &[("name", "name"), ("tags", "tags")],
        "vhosts" => &[("name", "name"), ("open", "open")],
        "replays" => &[
            ("id", "id"),
            ("vhost", "vhost"),
            ("queue", "queue"),
            ("status", "status"),
            ("moved", "moved"),
            ("skipped", "skipped"),
            ("refused", "refused"),
            ("rate", "rate"),
        ],
        "permissions" => &[
            ("user", "user"),
            ("vhost", "vhost"),
            ("configure", "configure"),
            ("write", "write"),
            ("read", "read"),
        ],
        _ => return None,
    })
}

/// A field of `v` by a dotted path, as a table cell.
fn cell(v: &Value, path: &str) -> String {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    match at {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// `rows` as a table with aligned columns.
fn table(cols: &[(&str, &str)], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| cols.iter().map(|(_, path)| cell(r, path)).collect()).collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| cells.iter().map(|r| r[i].chars().count()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let line = |items: Vec<String>| {
        let padded: Vec<String> = items.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(cols.iter().map(|(h, _)| h.to_string()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

/// Runs `warren ctl`; what it prints goes to stdout.
pub fn run(args: &CtlArgs) -> anyhow::Result<String> {
    let api = Api::new(args)?;
    let done = |what: String| if args.json { serde_json::json!({"ok": what}).to_string() } else { what };
    Ok(match &args.action {
        Action::List { kind, vhost } => {
            let cols = columns(kind).ok_or_else(|| anyhow!("cannot list '{kind}': queues, exchanges, bindings, connections, channels, consumers, users, vhosts, permissions or replays"))?;
            let path = match (kind.as_str(), vhost) {
                ("queues" | "exchanges" | "bindings", Some(v)) => format!("{kind}/{}", seg(v)),
                (_, Some(_)) => bail!("--vhost goes with queues, exchanges and bindings"),
                (_, None) => kind.clone(),
            };
            let value = api.ok("GET", &path, None, &[])?;
            if args.json {
                serde_json::to_string_pretty(&value)?
            } else {
                let rows = value.as_array().cloned().unwrap_or_default();
                table(cols, &rows)
            }
        }
        Action::DeclareQueue { vhost, name } => {
            api.ok(
                "PUT",
                &format!("queues/{}/{}", seg(vhost), seg(name)),
                Some(&serde_json::json!({"durable": true})),
                &[],
            )?;
            done(format!("queue '{name}' declared in vhost '{vhost}'"))
        }
        Action::DeclareExchange { vhost, name, kind } => {
            let body = serde_json::json!({"type": kind, "durable": true});
            api.ok("PUT", &format!("exchanges/{}/{}", seg(vhost), seg(name)), Some(&body), &[])?;
            done(format!("exchange '{name}' declared in vhost '{vhost}'"))
        }
        Action::DeleteQueue { vhost, name } => {
            api.ok("DELETE", &format!("queues/{}/{}", seg(vhost), seg(name)), None, &[])?;
            done(format!("queue '{name}' deleted from vhost '{vhost}'"))
        }
        Action::DeleteExchange { vhost, name } => {
            api.ok("DELETE", &format!("exchanges/{}/{}", seg(vhost), seg(name)), None, &[])?;
            done(format!("exchange '{name}' deleted from vhost '{vhost}'"))
        }
        Action::Purge { vhost, name } => {
            api.ok("DELETE", &format!("queues/{}/{}/contents", seg(vhost), seg(name)), None, &[])?;
            done(format!("queue '{name}' in vhost '{vhost}' purged"))
        }
        Action::Replay { vhost, name, count, background: true, rate } => {
            let body = serde_json::json!({"vhost": vhost, "queue": name, "count": count, "rate": rate});
            let task = api.ok("POST", "replays", Some(&body), &[])?;
            if args.json { task.to_string() } else { format!("replay {} started", cell(&task, "id")) }
        }
        Action::CancelReplay { id } => {
            api.ok("DELETE", &format!("replays/{id}"), None, &[])?;
            done(format!("replay {id} cancelled"))
        }
        Action::Replay { vhost, name, count, background: false, .. } => {
            let query = count.map(|c| format!("?count={c}")).unwrap_or_default();
            let value =
                api.ok("POST", &format!("queues/{}/{}/replay{query}", seg(vhost), seg(name)), None, &[])?;
            if args.json {
                value.to_string()
            } else {
                format!(
                    "moved {}, skipped {}, refused {}",
                    cell(&value, "moved"),
                    cell(&value, "skipped"),
                    cell(&value, "refused")
                )
            }
        }
        Action::CloseConnection { name, reason } => {
            let headers: Vec<(&str, &str)> = reason.as_deref().map(|r| ("X-Reason", r)).into_iter().collect();
            api.ok("DELETE", &format!("connections/{}", seg(name)), None, &headers)?;
            done(format!("connection '{name}' closed"))
        }
        Action::ExportDefinitions => {
            serde_json::to_string_pretty(&api.ok("GET", "definitions", None, &[])?)?
        }
        Action::ImportDefinitions { file } => {
            let mut text = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin().take(MAX_DEFINITIONS + 1).read_to_end(&mut text)?;
            } else {
                std::fs::File::open(file)
                    .with_context(|| format!("cannot open {}", file.display()))?
                    .take(MAX_DEFINITIONS + 1)
                    .read_to_end(&mut text)?;
            }
            if text.len() as u64 > MAX_DEFINITIONS {
                bail!(
                    "{} is over the {MAX_DEFINITIONS} bytes a definitions document may have",
                    file.display()
                );
            }
            let defs: Value = serde_json::from_slice(&text).context("the definitions are not JSON")?;
            api.ok("POST", "definitions", Some(&defs), &[])?;
            done(format!("definitions from {} imported", file.display()))
        }
        Action::AddUser { name, tags } => {
            let body = serde_json::json!({"password": new_password()?, "tags": tags});
            api.ok("PUT", &format!("users/{}", seg(name)), Some(&body), &[])?;
            done(format!("user '{name}' set"))
        }
        Action::DeleteUser { name } => {
            api.ok("DELETE", &format!("users/{}", seg(name)), None, &[])?;
            done(format!("user '{name}' deleted"))
        }
        Action::AddVhost { name } => {
            api.ok("PUT", &format!("vhosts/{}", seg(name)), Some(&serde_json::json!({})), &[])?;
            done(format!("vhost '{name}' added"))
        }
        Action::DeleteVhost { name } => {
            api.ok("DELETE", &format!("vhosts/{}", seg(name)), None, &[])?;
            done(format!("vhost '{name}' deleted"))
        }
        Action::SetPermissions { user, configure, write, read, vhost } => {
            let body = serde_json::json!({"configure": configure, "write": write, "read": read});
            api.ok("PUT", &format!("permissions/{}/{}", seg(vhost), seg(user)), Some(&body), &[])?;
            done(format!("permissions of '{user}' on vhost '{vhost}' set"))
        }
        Action::ClearPermissions { user, vhost } => {
            api.ok("DELETE", &format!("permissions/{}/{}", seg(vhost), seg(user)), None, &[])?;
            done(format!("permissions of '{user}' on vhost '{vhost}' cleared"))
        }
    })
}

/// `warren cluster ...`: asks the node the configuration (`--config`) describes, over its
/// management API.
pub fn cluster(cli: &crate::config::Cli, action: &crate::config::ClusterAction) -> anyhow::Result<String> {
    use crate::config::ClusterAction;
    let (user, password) = match action {
        ClusterAction::Status { user, password, .. }
        | ClusterAction::Join { user, password, .. }
        | ClusterAction::Leave { user, password }
        | ClusterAction::Forget { user, password, .. } => (user, password),
    };
    let settings = crate::config::Settings::load(cli)?;
    let Some(mut addr) = settings.management_listen else {
        bail!("the node's management API is off; warren cluster asks through it");
    };
    // A listener on every address is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let api = Api::at(&format!("http://{addr}"), user, &password.0)?;
    let json = match action {
        ClusterAction::Status { json, .. } => *json,
        ClusterAction::Join { peer, .. } => {
            api.ok("POST", "cluster/join", Some(&serde_json::json!({ "peer": peer })), &[])?;
            return Ok(format!("joined the cluster through {peer}"));
        }
        ClusterAction::Leave { .. } => {
            api.ok("POST", "cluster/leave", None, &[])?;
            return Ok("left the cluster: stop this node now; its name cannot be used again".into());
        }
        ClusterAction::Forget { node, .. } => {
            api.ok("POST", "cluster/forget", Some(&serde_json::json!({ "node": node })), &[])?;
            return Ok(format!("'{node}' is out of the cluster; its name cannot be used again"));
        }
    };
    let value = api.ok("GET", "cluster", None, &[])?;
    if json {
        return Ok(serde_json::to_string_pretty(&value)?);
    }
    let queues: Vec<Value> = value.get("queues").and_then(Value::as_array).cloned().unwrap_or_default();
    let truncated = value.get("queues_truncated").and_then(Value::as_bool).unwrap_or(false);
    let s: warren_cluster::Status = serde_json::from_value(value)?;
    let or_none = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut out = format!(
        "node {} ({}), term {}, metadata leader {}, committed {}, applied {}, leader changes seen {}\n",
        s.node,
        s.state,
        s.term,
        s.leader.as_deref().unwrap_or("none"),
        or_none(s.commit_index),
        or_none(s.applied_index),
        s.leader_changes
    );
    let rows: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "address": m.addr,
                "voter": if m.voter { "yes" } else { "no" },
                "state": if m.up { "up" } else { "down" },
                "last_seen": m.last_seen_ms_ago.map_or_else(|| "never".to_string(), |ms| format!("{ms} ms ago")),
                "leader": if s.leader.as_deref() == Some(m.name.as_str()) { "*" } else { "" },
            })
        })
        .collect();
    let cols = [
        ("NAME", "name"),
        ("ADDRESS", "address"),
        ("VOTER", "voter"),
        ("STATE", "state"),
        ("LAST SEEN", "last_seen"),
        ("LEADER", "leader"),
    ];
    out.push_str(&table(&cols, &rows));
    if !queues.is_empty() {
        out.push_str("\n\n");
        out.push_str(&table(
            &[("VHOST", "vhost"), ("QUEUE", "name"), ("TYPE", "type"), ("HOME", "home")],
            &queues,
        ));
        if truncated {
            out.push_str("\n(more queues not shown: GET /api/cluster lists the first 10000)");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_read_nested_fields() {
        let rows = vec![
            serde_json::json!({"consumer_tag": "c1", "queue": {"name": "q", "vhost": "/"}, "ack_required": true}),
            serde_json::json!({"consumer_tag": "a-long-tag", "queue": {"name": "orders", "vhost": "v"}, "ack_required": false}),
        ];
        let t = table(&[("tag", "consumer_tag"), ("queue", "queue.name"), ("ack", "ack_required")], &rows);
        assert_eq!(t, "tag         queue   ack\nc1          q       true\na-long-tag  orders  false");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").expect("ok"), b"abcde");
        assert!(dechunk(b"5\r\nab").is_err());
        assert_eq!(seg("/"), "%2F");
    }
}
