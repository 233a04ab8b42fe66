//! Starts a real Warren broker in-process on an ephemeral port.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;

use tokio::sync::oneshot;
use warren::config::Settings;
use warren::server::{Server, SharedRef};

/// A running broker; dropping it shuts the broker down.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub shared: SharedRef,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestBroker {
        let mut settings =
            Settings { amqp_listen: "127.0.0.1:0".parse().expect("addr"), ..Settings::default() };
        tweak(&mut settings);
        let server = Server::bind(&settings).await.expect("bind");
        let addr = server.local_addr().expect("local addr");
        let shared = server.shared();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("server run");
        });
        TestBroker { addr, shared, stop: Some(tx), task: Some(task) }
    }

    /// amqp URI for the default vhost.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// (ready, unacked, consumers) of a queue, read from the broker model.
    pub fn counts(&self, queue: &str) -> Option<(usize, usize, usize)> {
        warren::server::lock(&self.shared).broker.queue_counts(queue)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `f` until it returns true or two seconds pass.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}
