//! The real `warren` binary as a process of its own, for crash and fault tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::{Channel, Connection, ConnectionProperties};

/// What `warren` logs once it serves.
const READY: &str = "listening for AMQP 0-9-1 over TCP";

/// A running `warren`; dropping it kills it.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Process {
    /// Starts `warren` on a free port with its data under `dir/data` and its log in
    /// `dir/warren.log`, with `env` added to its environment.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Process {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // The listener is bound before the store is recovered, so a connect alone can succeed
        // before the broker is ready: wait for this run's "listening" line too.
        let ready = |dir: &Path| log_of(dir).matches(READY).count();
        let before = ready(dir);
        let mut child = command(dir, &addr.to_string(), env).spawn().expect("start warren");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ready(dir) == before || TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("warren exited ({status}): {}", log_of(dir));
            }
            assert!(Instant::now() < deadline, "warren did not start: {}", log_of(dir));
            std::thread::sleep(Duration::from_millis(20));
        }
        Process { child, addr, dir: dir.to_path_buf() }
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed by the broker.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        log_of(&self.dir)
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let uri = format!("amqp://guest:guest@{}/%2f", self.addr);
        let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
    }
}

/// Runs `warren` on `dir` as [`Process::start`] would, expecting it to stop by itself within
/// 30 s (a refused start); returns whether it exited successfully.
pub fn run_to_exit(dir: &Path, env: &[(&str, &str)]) -> bool {
    let mut child = command(dir, "127.0.0.1:0", env).spawn().expect("start warren");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren kept running: {}", log_of(dir));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `warren` on `dir/data`, AMQP on `amqp`, every other listener on a free port, its log
/// appended to `dir/warren.log`.
fn command(dir: &Path, amqp: &str, env: &[(&str, &str)]) -> Command {
    let log = std::fs::File::options().create(true).append(true).open(dir.join("warren.log")).expect("log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.args(["--amqp-listen", amqp, "--data-dir", &dir.join("data").display().to_string()])
        .args(["--metrics-listen", "127.0.0.1:0", "--management-listen", "127.0.0.1:0"])
        .args(["--quic-listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log);
    c
}

/// The log of the process(es) started in `dir`.
pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("warren.log")).unwrap_or_default()
}

/// Compiles the storage fault shim (`tests/faults/shim.c`, loaded with `LD_PRELOAD`) into
/// `dir`; the C compiler is part of the Rust toolchain's needs.
pub fn shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/shim.c");
    let out = dir.join("shim.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(status.success(), "the fault shim must compile");
    out
}
