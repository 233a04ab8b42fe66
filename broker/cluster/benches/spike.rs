//! The openraft spike DESIGN.md asks for before anything is built on it: many idle Raft groups
//! of 3 nodes in one process (openraft's in-memory store, [`warren_cluster::local`] as the
//! network), with openraft's default timing, with quiet heartbeats, and with neither
//! heartbeats nor elections of a group's own (a node-level failure detector tells survivors
//! to elect; the detector's own delay is not counted). Prints what forming them costs, the
//! CPU and memory they take while idle, and how long a group takes to elect a new leader when
//! its leader is cut off.
//!
//! `cargo bench -p warren-cluster --bench spike` runs the three timings, each in a process of its
//! own (so one's memory does not hide in the other's figures); `SPIKE_GROUPS` (1000) and
//! `SPIKE_IDLE_SECS` (10) change the size and the idle window.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Config, Raft};
use openraft_memstore::{MemStateMachine, TypeConfig, new_mem_store};
use warren_cluster::local::LocalRouter;

type Router = LocalRouter<TypeConfig, Arc<MemStateMachine>>;

const NODES: u64 = 3;
/// Groups whose leader is cut off at once to measure failover.
const FAILOVERS: u64 = 20;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// User plus system CPU seconds this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn config(mode: &str) -> Arc<Config> {
    let base = Config { cluster_name: "spike".into(), ..Default::default() };
    let c = match mode {
        // One heartbeat a second, elections after 3 to 6 s without one.
        "quiet" => Config {
            heartbeat_interval: 1000,
            election_timeout_min: 3000,
            election_timeout_max: 6000,
            ..base
        },
        // No heartbeats and no elections of a group's own: a node-level failure detector (here
        // simulated) tells the survivors to elect, as #19 asks for many groups.
        "node-driven" => Config { enable_heartbeat: false, enable_elect: false, enable_tick: false, ..base },
        _ => base,
    };
    Arc::new(c.validate().expect("a valid openraft config"))
}

async fn leader_of(router: &Router, group: u64, not: Option<u64>, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for n in 0..NODES {
            if Some(n) == not {
                continue;
            }
            if let Some(raft) = router.get(group, &n) {
                let leader = raft.current_leader().await;
                if leader.is_some() && leader != not {
                    return leader;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn run(mode: &str) {
    let groups = env("SPIKE_GROUPS", 1000);
    let idle = env("SPIKE_IDLE_SECS", 10);
    let config = config(mode);
    let router = Arc::new(Router::default());
    let (rss0, started) = (rss_mib(), Instant::now());
    for g in 0..groups {
        for n in 0..NODES {
            let (log, sm) = new_mem_store();
            let raft = Raft::new(n, config.clone(), router.network(g), log, sm).await.expect("raft");
            router.register(g, n, raft);
        }
        let members: BTreeSet<u64> = (0..NODES).collect();
        router.get(g, &0).expect("node 0").initialize(members).await.expect("initialize");
    }
    let timeout = Duration::from_millis(config.election_timeout_max * 20).max(Duration::from_secs(30));
    for g in 0..groups {
        leader_of(&router, g, None, timeout).await.expect("every group elects a leader");
    }
    let formed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let cpu = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_mib() - rss0;

    // Cut off the leaders of some groups at once; time each group's next leader.
    let mut waits = Vec::new();
    for g in 0..FAILOVERS.min(groups) {
        let old = leader_of(&router, g, None, timeout).await.expect("a leader");
        let cut = router.cut(g, &old).expect("the leader is registered");
        let r = router.clone();
        let driven = !config.enable_elect;
        waits.push(tokio::spawn(async move {
            let at = Instant::now();
            let _ = cut.shutdown().await;
            if driven {
                // The detector's verdict reaches a survivor: it stands for election now.
                let survivor = (0..NODES).find(|n| *n != old).and_then(|n| r.get(g, &n));
                if let Some(s) = survivor {
                    let _ = s.trigger().elect(false).await;
                }
            }
            let new = leader_of(&r, g, Some(old), timeout).await;
            new.map(|_| at.elapsed())
        }));
    }
    let mut failovers: Vec<Duration> = Vec::new();
    for w in waits {
        failovers.push(w.await.expect("join").expect("a new leader"));
    }
    failovers.sort();
    let median = failovers[failovers.len() / 2];
    let max = failovers[failovers.len() - 1];
    let timing = if config.enable_heartbeat {
        format!(
            "heartbeat {} ms, election {}-{} ms",
            config.heartbeat_interval, config.election_timeout_min, config.election_timeout_max
        )
    } else {
        "no heartbeats, elections on a detector's word".to_string()
    };
    println!(
        "{mode:>11}: {groups} groups x {NODES} nodes ({timing}): formed in {:.1} s; idle {cpu:.1}% of one core, \
         +{rss:.0} MiB RSS ({:.1} KiB a node); failover of {} leaders: median {} ms, max {} ms",
        formed.as_secs_f64(),
        rss * 1024.0 / (groups * NODES) as f64,
        failovers.len(),
        median.as_millis(),
        max.as_millis(),
    );
    for g in 0..groups {
        for n in 0..NODES {
            if let Some(raft) = router.cut(g, &n) {
                let _ = raft.shutdown().await;
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--mode") {
        let mode = args.get(i + 1).cloned().unwrap_or_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(&mode));
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("openraft 0.10.0-alpha.37 spike on {cores} cores");
    let me = std::env::current_exe().expect("own path");
    for mode in ["default", "quiet", "node-driven"] {
        let status = std::process::Command::new(&me).args(["--mode", mode]).status().expect("run a mode");
        assert!(status.success(), "{mode} failed");
    }
}
