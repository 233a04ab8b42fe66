//! `[cluster]`: this node's name, where it listens for its peers, and the initial members.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Members a cluster may list.
pub const MAX_PEERS: usize = 32;
/// Bytes a node name may have.
pub const MAX_NODE_NAME: usize = 64;

/// `[cluster]` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// This node's name.
    pub node: String,
    /// The inter-node listener.
    pub listen: SocketAddr,
    /// Every initial member as `name@ip:port`; a node not listed is a new node that joins a
    /// running cluster (`warren cluster join`).
    pub peers: Vec<String>,
    /// Allows peers off loopback over plain TCP when `[tls]` is not configured.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The cluster's CA (PEM): with `[tls]`, every member's certificate must chain to it; by
    /// default `[tls] ca`.
    pub ca: Option<std::path::PathBuf>,
    /// How long a metadata change waits for a majority, in milliseconds (default 5000).
    pub propose_timeout_ms: Option<u64>,
    /// A file holding the cluster's cookie, the secret every member proves it holds (RabbitMQ's
    /// Erlang cookie): 16 to 1024 octets, readable by its owner only. Without it or `cookie`,
    /// `~/.warren.cookie`, made on first use.
    pub cookie_file: Option<std::path::PathBuf>,
    /// The cookie itself, when not in a file.
    pub cookie: Option<String>,
}

/// The cluster settings, checked.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's name.
    pub node: String,
    /// The inter-node listener.
    pub listen: SocketAddr,
    /// Every initial member: name and address.
    pub peers: Vec<(String, SocketAddr)>,
    /// How long a metadata change waits for a majority.
    pub propose_timeout: Duration,
    /// The cluster's CA, when `[cluster] ca` names one.
    pub ca: Option<std::path::PathBuf>,
    /// Whether some address is off loopback.
    pub off_loopback: bool,
    /// Plain TCP off loopback is allowed.
    pub insecure_plaintext: bool,
    /// The secret every member holds; `None`: the user's home file ([`ClusterSettings::cookie`]).
    pub cookie: Option<warren_cluster::cookie::Cookie>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NODE_NAME
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ClusterConfig {
    /// Checks the section.
    pub fn build(self) -> Result<ClusterSettings, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("[cluster]: {why}"));
        if !valid_name(&self.node) {
            return Err(bad(format!(
                "node '{}' must be 1 to {MAX_NODE_NAME} letters, digits, '-', '_' or '.'",
                self.node
            )));
        }
        if self.peers.is_empty() || self.peers.len() > MAX_PEERS {
            return Err(bad(format!("peers must list 1 to {MAX_PEERS} nodes, this one included")));
        }
        let mut peers = Vec::new();
        for p in &self.peers {
            let Some((name, addr)) = p.split_once('@') else {
                return Err(bad(format!("peer '{p}' is not name@ip:port")));
            };
            if !valid_name(name) {
                return Err(bad(format!("peer '{p}': '{name}' is not a node name")));
            }
            let addr: SocketAddr =
                addr.parse().map_err(|_| bad(format!("peer '{p}': '{addr}' is not ip:port")))?;
            if peers.iter().any(|(n, _): &(String, SocketAddr)| n == name) {
                return Err(bad(format!("peer '{name}' is listed twice")));
            }
            peers.push((name.to_string(), addr));
        }
        match peers.iter().find(|(n, _)| *n == self.node) {
            Some((_, me)) if me.port() != self.listen.port() => {
                return Err(bad(format!(
                    "this node listens on port {} but peers gives it {me}",
                    self.listen.port()
                )));
            }
            Some(_) => {}
            // A new node: `warren cluster join` gives the members its listen address to dial.
            None if self.listen.ip().is_unspecified() => {
                return Err(bad(format!(
                    "node '{}' is not in peers, so it joins later, and its peers dial its listen address: \
                     give listen a specific IP, not {}",
                    self.node, self.listen
                )));
            }
            None => {}
        }
        let off_loopback =
            !self.listen.ip().is_loopback() || peers.iter().any(|(_, a)| !a.ip().is_loopback());
        let propose_timeout = match self.propose_timeout_ms {
            Some(0) => return Err(bad("propose-timeout-ms must be above 0".into())),
            Some(ms) if ms > 600_000 => return Err(bad("propose-timeout-ms must be at most 600000".into())),
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(5),
        };
        let cookie = match (&self.cookie_file, &self.cookie) {
            (Some(_), Some(_)) => return Err(bad("give cookie-file or cookie, not both".into())),
            // As Erlang's ~/.erlang.cookie: the user's own file, made on first use, so nodes
            // the same user runs on one machine share it (copy it to other machines).
            // The home file is read (or made) when the node starts, not by every tool that
            // reads the configuration.
            (None, None) => None,
            (None, Some(c)) => Some(c.as_bytes().to_vec()),
            (Some(path), None) => Some(read_cookie(path).map_err(bad)?),
        };
        let cookie = cookie.map(|c| warren_cluster::cookie::Cookie::new(&c)).transpose().map_err(bad)?;
        Ok(ClusterSettings {
            cookie,
            node: self.node,
            listen: self.listen,
            peers,
            propose_timeout,
            ca: self.ca,
            off_loopback,
            insecure_plaintext: self.insecure_plaintext,
        })
    }
}

/// The cookie file in the user's home a cluster uses when its config names none.
pub const HOME_COOKIE: &str = ".warren.cookie";

/// The cookie in `path`, made there first (32 random octets, hex, mode 600) when there is
/// none: written whole to a file of its own, then linked into place, so nodes starting at
/// once all read the one that won.
fn home_cookie(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !path.exists() {
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))
            .map_err(|e| format!("no random cookie: {e}"))?;
        let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_extension(format!("new.{}", std::process::id()));
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot make the cookie file {}: {e}", path.display()));
        }
        // Another node may have linked its own first: then that one is the cookie.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        if let Err(e) = linked
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(format!("cannot make the cookie file {}: {e}", path.display()));
        }
        tracing::info!(file = %path.display(), "made the cluster cookie file; copy it to the other members' machines");
    }
    read_cookie(path)
}

/// The cookie in `path`, its trailing whitespace left out; a file others may read is refused,
/// as Erlang refuses such a cookie.
fn read_cookie(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let named = |e: std::io::Error| format!("cookie-file {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(named)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("cookie-file {}: others may read it; chmod 600 it", path.display()));
    }
    if meta.len() > 4096 {
        return Err(format!("cookie-file {}: {} octets, too long for a cookie", path.display(), meta.len()));
    }
    let mut bytes = std::fs::read(path).map_err(named)?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    Ok(bytes)
}

impl ClusterSettings {
    /// The cookie: as configured, else the user's `~/.warren.cookie` (made on first use, as
    /// Erlang makes `~/.erlang.cookie`, so members one user runs on one machine share it).
    pub fn cookie(&self) -> Result<warren_cluster::cookie::Cookie, String> {
        if let Some(c) = &self.cookie {
            return Ok(c.clone());
        }
        let home = std::env::var_os("HOME").ok_or_else(|| {
            "[cluster]: no cookie-file, no cookie and no HOME for ~/.warren.cookie: give cookie-file = \"PATH\"".to_string()
        })?;
        let bytes = home_cookie(&std::path::Path::new(&home).join(HOME_COOKIE))?;
        warren_cluster::cookie::Cookie::new(&bytes)
    }

    /// Checks the transport against `[tls]`: with it, the nodes speak mutual TLS and need the
    /// cluster's CA; without it, plain TCP stays on loopback unless `insecure-plaintext`.
    pub fn check_transport(&self, tls: Option<&crate::tls::TlsConfig>) -> Result<(), ConfigError> {
        match tls {
            Some(t) if self.ca.is_none() && t.ca.is_none() => Err(ConfigError::Invalid(
                "[cluster] with [tls]: the nodes authenticate each other with a CA; set [cluster] ca (or [tls] ca)".into(),
            )),
            Some(_) => Ok(()),
            None if self.off_loopback && !self.insecure_plaintext => Err(ConfigError::Invalid(
                "[cluster]: inter-node traffic off loopback would be plain TCP: configure [tls] (with a CA) for \
                 mutual TLS between the nodes, or set insecure-plaintext = true on a network you trust"
                    .into(),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterSettings, String> {
        let c: ClusterConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.build().map_err(|e| e.to_string())
    }

    fn config(node: &str, listen: &str, peers: &str) -> String {
        format!(
            "node = \"{node}\"\nlisten = \"{listen}\"\npeers = [{peers}]\ncookie = \"sixteen octets or more\"\n"
        )
    }

    #[test]
    fn a_loopback_cluster_and_each_mistake_named() {
        let two = r#""n1@127.0.0.1:25700", "n2@127.0.0.1:25701""#;
        let ok = parse(&config("n1", "127.0.0.1:25700", two)).expect("valid");
        assert_eq!(ok.peers.len(), 2);
        assert!(ok.check_transport(None).is_ok(), "loopback needs no TLS");
        let new = parse(&config("n3", "127.0.0.1:25702", two)).expect("a new node, to be joined");
        assert_eq!(new.peers.len(), 2);
        let e = parse(&config("n3", "0.0.0.0:25702", two)).expect_err("a new node must be dialable");
        assert!(e.contains("specific IP"), "{e}");
        let e = parse(&config("n1", "127.0.0.1:25700", r#""n1@127.0.0.1:25700", "n1@127.0.0.1:25701""#))
            .expect_err("twice");
        assert!(e.contains("twice"), "{e}");
        let e = parse(&config("n 1", "127.0.0.1:25700", two)).expect_err("name");
        assert!(e.contains("node 'n 1'"), "{e}");
        let e = parse(&config("n1", "127.0.0.1:25700", r#""n1@localhost:25700""#)).expect_err("not an ip");
        assert!(e.contains("not ip:port"), "{e}");
        let e =
            parse(&format!("{}colour = \"red\"\n", config("n1", "127.0.0.1:25700", two))).expect_err("key");
        assert!(e.contains("colour"), "{e}");
        let e = parse(&config("n1", "127.0.0.1:25709", two)).expect_err("port");
        assert!(e.contains("port 25709"), "{e}");
    }

    #[test]
    fn the_cookie_is_required_and_kept_private() {
        let bare = "node = \"n1\"\nlisten = \"127.0.0.1:25700\"\npeers = [\"n1@127.0.0.1:25700\"]\n";
        // No cookie named: the home file, made once and shared by every later reader.
        let home = tempfile::tempdir().expect("home");
        let file = home.path().join(HOME_COOKIE);
        let first = home_cookie(&file).expect("made");
        assert_eq!(first.len(), 64);
        assert_eq!(home_cookie(&file).expect("read"), first, "the same cookie the second time");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777, 0o600);
        let e = parse(&format!("{bare}cookie = \"short\"\n")).expect_err("short");
        assert!(e.contains("16 to 1024"), "{e}");
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("cookie");
        std::fs::write(&file, "a cookie of enough octets\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let with_file = format!("{bare}cookie-file = \"{}\"\n", file.display());
        let e = parse(&with_file).expect_err("readable by others");
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let ok = parse(&with_file).expect("a private cookie file");
        assert!(!format!("{ok:?}").contains("enough octets"), "the cookie never shows in Debug");
    }

    #[test]
    fn off_loopback_needs_tls_with_a_ca_or_an_explicit_plaintext() {
        let off = parse(&config("n1", "0.0.0.0:25700", r#""n1@10.0.0.1:25700""#)).expect("parsed");
        let e = off.check_transport(None).expect_err("plaintext off loopback").to_string();
        assert!(e.contains("insecure-plaintext"), "{e}");
        let tls = crate::tls::TlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            ca: None,
            fail_if_no_peer_cert: false,
        };
        let e = off.check_transport(Some(&tls)).expect_err("TLS without a CA").to_string();
        assert!(e.contains("[cluster] ca"), "{e}");
        let with_ca = crate::tls::TlsConfig { ca: Some("ca.pem".into()), ..tls };
        assert!(off.check_transport(Some(&with_ca)).is_ok());
        let allowed = parse(&format!(
            "{}insecure-plaintext = true\n",
            config("n1", "0.0.0.0:25700", r#""n1@10.0.0.1:25700""#)
        ))
        .expect("parsed");
        assert!(allowed.check_transport(None).is_ok());
    }
}
