//! A server assembled from its parts (`Server::new`), as a test or an embedder builds one:
//! here a broker on the in-memory store, no file store, one plain listener. Durable queues
//! and persistent messages outlive the server because they live in the store it was given.

mod common;

use std::sync::Arc;

use common::lapin_client::connect_uri;
use common::publish_confirmed;
use lapin::BasicProperties;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::net::TcpListener;
use warren::config::Settings;
use warren::server::{Parts, Server, Services, SystemClock};
use warren_core::broker::ConfirmPolicy;
use warren_core::storage::MemoryStore;
use warren_core::{Broker, BrokerConfig};

/// A server on `store`, serving until the returned sender is dropped.
async fn serve(
    store: &MemoryStore,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut broker = Broker::new(BrokerConfig::default(), std::time::Instant::now());
    // No syncer: what the store holds is taken as kept once written.
    broker.attach_storage(Box::new(store.clone()), ConfirmPolicy::AfterWrite).expect("restore");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let parts = Parts {
        listener: Some(listener),
        quic: None,
        amqps: None,
        management: None,
        metrics: None,
        broker,
        vhost_brokers: Vec::new(),
        clock: Arc::new(SystemClock),
        storage: None,
        services: Services {
            alarms: Arc::default(),
            storage_metrics: None,
            memory_metrics: Default::default(),
            plugins: None,
        },
        hangup: None,
        data_lock: None,
        vhost_maker: None,
        directory_file: None,
        adapters: Vec::new(),
    };
    let server = Server::new(parts, &Settings::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server.run(async { drop(stopped.await) }).await.expect("run");
    });
    (format!("amqp://guest:guest@{addr}/%2f"), stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_parts_runs_on_the_store_it_was_given() {
    let store = MemoryStore::new();
    let (uri, stop, task) = serve(&store).await;
    let conn = connect_uri(&uri).await;
    let ch = conn.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("kept".into(), durable, FieldTable::default()).await.expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let bodies = vec!["persistent".to_string(); 3];
    publish_confirmed(&ch, "", "kept", &bodies, BasicProperties::default().with_delivery_mode(2)).await;
    conn.close(200, "bye".into()).await.expect("close");
    drop(stop);
    task.await.expect("stopped");

    // Another server on the same store: the queue and its messages are back.
    let (uri, _stop, _task) = serve(&store).await;
    let conn = connect_uri(&uri).await;
    let ch = conn.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = ch.queue_declare("kept".into(), passive, FieldTable::default()).await.expect("still declared");
    assert_eq!(q.message_count(), 3);
}
