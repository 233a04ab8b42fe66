//! The in-process network carries a real openraft group: three nodes elect a leader, and
//! when the leader is cut off the other two elect another.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Config, Raft};
use openraft_memstore::{MemStateMachine, TypeConfig, new_mem_store};
use warren_cluster::local::LocalRouter;

type Router = LocalRouter<TypeConfig, Arc<MemStateMachine>>;

async fn leader(router: &Router, not: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for n in (0..3).filter(|n| Some(*n) != not) {
            if let Some(raft) = router.get(7, &n)
                && let Some(l) = raft.current_leader().await
                && Some(l) != not
            {
                return l;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_elects_and_fails_over_on_the_local_network() {
    let config = Arc::new(Config::default().validate().expect("config"));
    let router = Arc::new(Router::default());
    for n in 0..3 {
        let (log, sm) = new_mem_store();
        let raft = Raft::new(n, config.clone(), router.network(7), log, sm).await.expect("raft");
        router.register(7, n, raft);
    }
    let members: BTreeSet<u64> = (0..3).collect();
    router.get(7, &0).expect("node 0").initialize(members).await.expect("initialize");
    let first = leader(&router, None).await;
    let cut = router.cut(7, &first).expect("registered");
    assert!(router.get(7, &first).is_none(), "cut off");
    let _ = cut.shutdown().await;
    let second = leader(&router, Some(first)).await;
    assert_ne!(first, second);
    for n in 0..3 {
        if let Some(r) = router.cut(7, &n) {
            let _ = r.shutdown().await;
        }
    }
}
