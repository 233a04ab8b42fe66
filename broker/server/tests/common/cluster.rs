//! A cluster of real `warren` processes on 127.0.0.1, each with its own ports, config file
//! and data dir, for the cluster tests.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http_as;

/// What `warren` logs once it serves.
const READY: &str = "listening for AMQP 0-9-1 over TCP";

/// A free port below Linux's ephemeral range (32768 and up): a port taken from that range and
/// let go can be taken again by any outgoing connection (a member dialing another) before the
/// node meant to listen on it starts. Each test process walks its own stretch of the range.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 200) * 60;
    for _ in 0..12_000 {
        let p = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        let p = p as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port below 32000");
}

/// One member.
pub struct Node {
    pub name: String,
    pub amqp: SocketAddr,
    pub management: SocketAddr,
    pub metrics: SocketAddr,
    pub cluster: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Added to the process's environment (a fault shim, say).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// The members, started.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The initial members as `peers` lists them.
    pub peers: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` members named n1.., each started and serving AMQP (not yet agreeing on a leader).
    pub fn start(n: usize) -> Cluster {
        Cluster::start_routed(n, |_, _, addr| addr)
    }

    /// As [`Cluster::start`], member `i` reaching member `j` (whose inter-node listener is at
    /// `addr`) at `route(i, j, addr)`: a proxy's address, say.
    pub fn start_routed(n: usize, route: impl FnMut(usize, usize, SocketAddr) -> SocketAddr) -> Cluster {
        Cluster::start_full(n, route, |_| String::new())
    }

    /// As [`Cluster::start_routed`], each member's config file ending with `extra(name)`
    /// (top-level keys and sections of its own, such as `[tls]`).
    pub fn start_full(
        n: usize,
        mut route: impl FnMut(usize, usize, SocketAddr) -> SocketAddr,
        extra: impl Fn(&str) -> String,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("dir");
        let mut nodes: Vec<Node> = (1..=n).map(|i| Node::new(dir.path(), &format!("n{i}"))).collect();
        let peers: Vec<String> = nodes.iter().map(|m| format!("\"{}@{}\"", m.name, m.cluster)).collect();
        for (i, node) in nodes.iter().enumerate() {
            let routed: Vec<String> = nodes
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    let addr = if i == j { m.cluster } else { route(i, j, m.cluster) };
                    format!("\"{}@{addr}\"", m.name)
                })
                .collect();
            node.write_config(&node.name, &routed.join(", "));
            // Keys before the first section go on top, sections at the end.
            let extra = extra(&node.name);
            let (top, sections) = extra.find("\n[").map_or((extra.as_str(), ""), |i| extra.split_at(i));
            let text = std::fs::read_to_string(&node.config).expect("config");
            std::fs::write(&node.config, format!("{top}\n{text}{sections}")).expect("config");
        }
        for node in &mut nodes {
            // `extra` may say `# no cookie`: then the config names none, and the members share
            // the cookie file of the home `extra` gives them.
            let text = std::fs::read_to_string(&node.config).expect("config");
            if let Some(home) = text.lines().find_map(|l| l.strip_prefix("# no cookie, home ")) {
                node.env.push(("HOME".into(), home.to_string()));
                let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("cookie = ")).collect();
                std::fs::write(&node.config, kept.join("\n") + "\n").expect("config");
            }
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_ready(0);
        }
        Cluster { nodes, peers: peers.join(", "), dir }
    }

    /// Starts a new node named `name` (in a fresh data dir under `tag`) whose `peers` list
    /// the initial members only: it waits to be joined. Its index.
    pub fn add(&mut self, name: &str, tag: &str) -> usize {
        let mut node = Node::new(&self.dir.path().join(tag), name);
        // (A new node's routes are the initial members' own addresses.)
        node.write_config(name, &self.peers);
        node.spawn();
        node.wait_ready(0);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Runs `warren cluster ARGS --config` of member `i`; its success and output.
    pub fn ctl(&self, i: usize, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("cluster")
            .args(args)
            .args(["--config", &self.nodes[i].config.display().to_string()])
            .output()
            .expect("warren cluster");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// The leader every running member names, once they all name the same one (and it is
    /// not `not`); panics after 20 s.
    pub async fn leader(&self, running: &[usize], not: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = Vec::new();
            for &i in running {
                seen.push(
                    self.nodes[i].status().await.and_then(|s| s["leader"].as_str().map(str::to_string)),
                );
            }
            if let Some(Some(l)) = seen.first()
                && seen.iter().all(|s| s.as_ref() == Some(l))
                && Some(l.as_str()) != not
            {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no agreed leader among {running:?}: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the member named `name`.
    pub fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).expect("a member")
    }
}

impl Node {
    /// A node named `name` in `parent/name`, with free ports, not started.
    fn new(parent: &Path, name: &str) -> Node {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        Node {
            amqp: port(),
            management: port(),
            metrics: port(),
            cluster: port(),
            config: dir.join("warren.toml"),
            dir,
            name: name.to_string(),
            env: Vec::new(),
            child: None,
        }
    }

    /// Writes this node's config file naming it `name` with `peers`.
    pub fn write_config(&self, name: &str, peers: &str) {
        // Top-level keys first: `extra` sections go after [cluster].
        let text = format!(
            "data-dir = \"{}\"\namqp-listen = \"{}\"\nmanagement-listen = \"{}\"\nmetrics-listen = \"{}\"\nquic-listen = \"127.0.0.1:0\"\n\n[cluster]\nnode = \"{name}\"\nlisten = \"{}\"\npeers = [{peers}]\npropose-timeout-ms = 2000\ncookie = \"the test cluster's cookie\"\n",
            self.dir.join("data").display(),
            self.amqp,
            self.management,
            self.metrics,
            self.cluster,
        );
        std::fs::write(&self.config, text).expect("config");
    }

    fn command(&self) -> Command {
        let log = std::fs::File::options().create(true).append(true).open(self.log_path()).expect("log");
        let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
        c.args(["--config", &self.config.display().to_string()]).stdout(Stdio::null()).stderr(log);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    fn spawn(&mut self) {
        self.child = Some(self.command().spawn().expect("start warren"));
    }

    fn wait_ready(&mut self, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(READY).count() == before {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited ({status}): {}", self.name, self.log());
            }
            assert!(Instant::now() < deadline, "{} did not start: {}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on its data dir.
    pub fn restart(&mut self) {
        let before = self.log().matches(READY).count();
        self.spawn();
        self.wait_ready(before);
    }

    /// Runs it with its config as is, expecting it to refuse to start; its log.
    pub fn refused_start(&self) -> String {
        let mut child = self.command().spawn().expect("start warren");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(!status.success(), "it started");
                return self.log();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} kept running: {}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for the process to exit by itself; whether it did, successfully.
    pub fn exited_within(&mut self, within: Duration) -> Option<bool> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then waits up to 30 s for it to exit; whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&self, stop: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if stop { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill").args([signal, &pid]).status().expect("kill").success();
        assert!(ok, "kill {signal} {pid}");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("warren.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `GET /api/cluster` as guest, when it answers 200.
    pub async fn status(&self) -> Option<Value> {
        let (code, body) = tokio::time::timeout(
            Duration::from_secs(2),
            http_as(self.management, ("guest", "guest"), "GET", "/api/cluster", ""),
        )
        .await
        .ok()?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// An AMQP URI for `user` on `vhost` (percent-encoded by the caller).
    pub fn uri(&self, user: &str, password: &str, vhost: &str) -> String {
        format!("amqp://{user}:{password}@{}/{vhost}", self.amqp)
    }

    /// A management request as `user`.
    pub async fn api(&self, user: (&str, &str), method: &str, path: &str, body: &str) -> (u16, String) {
        http_as(self.management, user, method, path, body).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A paused process must be resumed to die cleanly in every case.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// The data dir of a node.
pub fn data_dir(node: &Node) -> &Path {
    &node.dir
}
