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
    /// Allows peers off loopback over plain TCP (the cluster's mutual TLS is not built yet).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// How long a metadata change waits for a majority, in milliseconds (default 5000).
    pub propose_timeout_ms: Option<u64>,
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
        if off_loopback && !self.insecure_plaintext {
            return Err(bad(
                "inter-node traffic off loopback would be plain TCP (the cluster's mutual TLS is not built yet): \
                 keep listen and peers on loopback, or set insecure-plaintext = true on a network you trust"
                    .into(),
            ));
        }
        let propose_timeout = match self.propose_timeout_ms {
            Some(0) => return Err(bad("propose-timeout-ms must be above 0".into())),
            Some(ms) if ms > 600_000 => return Err(bad("propose-timeout-ms must be at most 600000".into())),
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(5),
        };
        Ok(ClusterSettings { node: self.node, listen: self.listen, peers, propose_timeout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterSettings, String> {
        let c: ClusterConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.build().map_err(|e| e.to_string())
    }

    #[test]
    fn a_loopback_cluster_and_each_mistake_named() {
        let ok = parse(
            r#"node = "n1"
               listen = "127.0.0.1:25700"
               peers = ["n1@127.0.0.1:25700", "n2@127.0.0.1:25701"]"#,
        )
        .expect("valid");
        assert_eq!(ok.peers.len(), 2);
        let e = parse(
            r#"node = "n3"
               listen = "127.0.0.1:25700"
               peers = ["n1@127.0.0.1:25700"]"#,
        )
        .expect_err("not listed");
        assert!(e.contains("must list this node"), "{e}");
        let e = parse(
            r#"node = "n1"
               listen = "0.0.0.0:25700"
               peers = ["n1@10.0.0.1:25700"]"#,
        )
        .expect_err("plaintext off loopback");
        assert!(e.contains("insecure-plaintext"), "{e}");
        let e = parse(
            r#"node = "n1"
               listen = "127.0.0.1:25700"
               peers = ["n1@127.0.0.1:25700", "n1@127.0.0.1:25701"]"#,
        )
        .expect_err("twice");
        assert!(e.contains("twice"), "{e}");
        let e = parse(
            r#"node = "n 1"
               listen = "127.0.0.1:25700"
               peers = ["n1@127.0.0.1:25700"]"#,
        )
        .expect_err("name");
        assert!(e.contains("node 'n 1'"), "{e}");
        let e = parse(
            r#"node = "n1"
               listen = "127.0.0.1:25700"
               peers = ["n1@localhost:25700"]"#,
        )
        .expect_err("not an ip");
        assert!(e.contains("not ip:port"), "{e}");
        let e = parse(
            r#"node = "n1"
               listen = "127.0.0.1:25700"
               peers = ["n1@127.0.0.1:25700"]
               colour = "red""#,
        )
        .expect_err("unknown key");
        assert!(e.contains("colour"), "{e}");
    }
}
