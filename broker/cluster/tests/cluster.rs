//! Three members over real loopback sockets, each with its own data dir: proposals on any
//! member, a leader stopped and replaced, a member restarted from its files.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warren_cluster::{Cluster, ClusterConfig, Member, MetaMachine, ProposeError};

/// A list of words; "bad" is refused, so a refusal is tested too.
#[derive(Default)]
struct Words(Mutex<Vec<String>>);

impl MetaMachine for Words {
    fn apply(&self, _index: u64, body: &str, _live: bool) -> Result<String, String> {
        if body == "bad" {
            return Err("bad is refused".into());
        }
        let mut w = self.0.lock().expect("lock");
        w.push(body.to_string());
        Ok(w.len().to_string())
    }
    fn snapshot(&self) -> Result<String, String> {
        Ok(self.0.lock().expect("lock").join(","))
    }
    fn restore(&self, data: &str) -> Result<(), String> {
        *self.0.lock().expect("lock") =
            data.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
        Ok(())
    }
    fn reset(&self) {
        self.0.lock().expect("lock").clear();
    }
    fn serve(
        &self,
        body: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>> {
        let n = self.0.lock().expect("lock").len();
        Box::pin(async move {
            if body == "bad" { Err("bad is refused".into()) } else { Ok(format!("{body} {n}")) }
        })
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn start(name: &str, peers: &[Member], dir: &Path, words: Arc<Words>) -> Arc<Cluster> {
    let me = peers.iter().find(|m| m.name == name).expect("listed");
    let config = ClusterConfig {
        node: name.into(),
        listen: me.addr.parse().expect("addr"),
        peers: peers.to_vec(),
        dir: dir.join(name),
        propose_timeout: Duration::from_secs(3),
        tls: None,
        cookie: warren_cluster::cookie::Cookie::new(b"a test cluster's cookie").expect("cookie"),
    };
    Cluster::start(config, words).await.expect("start")
}

/// The leader every one of `nodes` knows, once they agree on one that is not `not`.
async fn leader(nodes: &[&Arc<Cluster>], not: Option<&str>) -> String {
    for _ in 0..200 {
        let seen: Vec<Option<String>> = nodes.iter().map(|n| n.status().leader).collect();
        if let Some(Some(l)) = seen.first()
            && seen.iter().all(|s| s.as_ref() == Some(l))
            && Some(l.as_str()) != not
        {
            return l.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_propose_fail_over_and_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let peers: Vec<Member> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Member { name: n.to_string(), addr: format!("127.0.0.1:{}", free_port()) })
        .collect();
    let words: Vec<Arc<Words>> = (0..3).map(|_| Arc::default()).collect();
    let mut nodes = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        nodes.push(start(name, &peers, dir.path(), words[i].clone()).await);
    }
    let first = leader(&nodes.iter().collect::<Vec<_>>(), None).await;
    // On every member, leader or not: applied here when the answer comes.
    for (i, n) in nodes.iter().enumerate() {
        let answer = n.propose(format!("w{i}")).await.expect("propose");
        assert_eq!(answer, (i + 1).to_string());
        assert_eq!(
            words[i].0.lock().expect("lock").len(),
            i + 1,
            "applied on the proposer before the answer"
        );
    }
    // A request of the machine's own, to a named member, answered by its machine.
    let answer = nodes[0].call("n3", "hello".into(), Duration::from_secs(2)).await.expect("call");
    assert_eq!(answer, "hello 3");
    assert!(
        nodes[1].call("n1", "bad".into(), Duration::from_secs(2)).await.is_err_and(|e| e.contains("bad"))
    );
    assert!(
        nodes[1]
            .call("n9", "x".into(), Duration::from_secs(2))
            .await
            .is_err_and(|e| e.contains("not a member"))
    );
    let huge =
        nodes[0].propose("x".repeat(warren_cluster::cluster::MAX_PROPOSAL + 1)).await.expect_err("too big");
    assert!(matches!(huge, ProposeError::Refused(ref w) if w.contains("make it in parts")), "{huge}");
    let refused = nodes[1].propose("bad".into()).await.expect_err("refused");
    assert!(matches!(refused, ProposeError::Refused(ref w) if w.contains("bad is refused")), "{refused}");
    // The leader stops; the other two elect one and go on.
    let at = nodes.iter().position(|n| n.status().node == first).expect("leader is a member");
    nodes[at].shutdown().await;
    let rest: Vec<&Arc<Cluster>> =
        nodes.iter().enumerate().filter(|(i, _)| *i != at).map(|(_, n)| n).collect();
    let second = leader(&rest, Some(&first)).await;
    assert_ne!(first, second, "a new leader");
    rest[0].propose("after".into()).await.expect("the majority goes on");
    // The stopped member comes back from its files and catches up.
    let back = start(&first, &peers, dir.path(), Arc::new(Words::default())).await;
    assert!(back.caught_up(Duration::from_secs(10)).await, "the restarted member catches up");
    let answer = back.propose("last".into()).await.expect("propose on the restarted member");
    assert_eq!(answer, "5");
    // Two of three down: no quorum, and a proposal says so within its bound.
    for n in &rest {
        n.shutdown().await;
    }
    // The first may be sent to the leader that just stopped, and then it cannot be known
    // whether it was made; either way the answer is an error within the bound.
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let e = back.propose("alone".into()).await.expect_err("no quorum");
        assert!(t.elapsed() < Duration::from_secs(6), "bounded: {:?}", t.elapsed());
        if matches!(e, ProposeError::NoQuorum(_)) {
            back.shutdown().await;
            return;
        }
        assert!(e.to_string().contains("may or may not"), "{e}");
    }
    panic!("never told there is no quorum");
}
