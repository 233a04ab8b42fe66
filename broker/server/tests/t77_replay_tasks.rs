//! Dead-letter replay as a background task (`/api/replays`): paced, listed with its progress,
//! one per queue, cancelled between batches without losing or duplicating a message.

mod common;

use common::{TestBroker, http_body, s, table};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;

const N: usize = 300;

async fn get(b: &TestBroker, path: &str) -> Value {
    let (status, body) = common::http(b, "GET", path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_task_is_paced_listed_cancelled_and_loses_nothing() {
    let b = TestBroker::start().await;
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("work.dlq".into(), QueueDeclareOptions::default(), Default::default())
        .await
        .expect("dlq");
    let args = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("work.dlq"))]);
    ch.queue_declare("work".into(), QueueDeclareOptions::default(), args).await.expect("work");
    // Each expires at once into the dead-letter queue (which drops the expiration, as RabbitMQ).
    for i in 0..N {
        let props = BasicProperties::default().with_expiration("0".into());
        ch.basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            props,
        )
        .await
        .expect("publish");
    }
    assert!(common::eventually(|| b.counts("work.dlq").is_some_and(|c| c.0 == N)).await, "all dead-lettered");

    // Paced at 100 a second: still running a moment later, with some moved.
    let (status, body) =
        http_body(&b, "POST", "/api/replays", r#"{"vhost": "/", "queue": "work.dlq", "rate": 100}"#).await;
    assert_eq!(status, 201, "{body}");
    let task: Value = serde_json::from_str(&body).expect("json");
    let id = task["id"].as_u64().expect("id");
    assert_eq!(task["status"], "running");
    let (status, body) =
        http_body(&b, "POST", "/api/replays", r#"{"vhost": "/", "queue": "work.dlq"}"#).await;
    assert_eq!(status, 409, "one task per queue: {body}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let listed = get(&b, "/api/replays").await;
    let running = listed.as_array().and_then(|a| a.iter().find(|t| t["id"] == id)).expect("listed").clone();
    let moved = running["moved"].as_u64().expect("moved") as usize;
    assert_eq!(running["status"], "running", "{running}");
    assert!(moved > 0 && moved < N, "paced: {moved} of {N} after 0.5 s at 100/s");

    // Cancelled: it stops after its batch; every message is in exactly one of the queues.
    let (status, _) = common::http(&b, "DELETE", &format!("/api/replays/{id}")).await;
    assert_eq!(status, 204);
    let mut done = Value::Null;
    for _ in 0..50 {
        done = get(&b, &format!("/api/replays/{id}")).await;
        if done["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "cancelled", "{done}");
    let moved = done["moved"].as_u64().expect("moved") as usize;
    assert!(moved < N, "{done}");
    let (work, dlq) = (b.counts("work").expect("work").0, b.counts("work.dlq").expect("dlq").0);
    assert_eq!((work, dlq), (moved, N - moved), "nothing lost or doubled");

    // Run again at the default rate: it completes with the rest.
    let (status, body) =
        http_body(&b, "POST", "/api/replays", r#"{"vhost": "/", "queue": "work.dlq"}"#).await;
    assert_eq!(status, 201, "{body}");
    let id2 = serde_json::from_str::<Value>(&body).expect("json")["id"].as_u64().expect("id");
    assert!(common::eventually(|| b.counts("work").is_some_and(|c| c.0 == N)).await, "all back");
    let mut finished = Value::Null;
    for _ in 0..50 {
        finished = get(&b, &format!("/api/replays/{id2}")).await;
        if finished["status"] == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (finished["status"].as_str(), finished["moved"].as_u64()),
        (Some("completed"), Some((N - moved) as u64))
    );
    assert_eq!(b.counts("work.dlq").expect("dlq").0, 0);

    // Bounds and refusals.
    let (status, _) =
        http_body(&b, "POST", "/api/replays", r#"{"vhost": "/", "queue": "work.dlq", "rate": 0}"#).await;
    assert_eq!(status, 400);
    let (status, _) = http_body(&b, "POST", "/api/replays", r#"{"vhost": "/", "queue": "nope"}"#).await;
    assert_eq!(status, 404);
    let (status, _) = common::http(&b, "DELETE", "/api/replays/999").await;
    assert_eq!(status, 404);
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_replay_stops_with_the_server_and_nothing_is_lost_across_the_restart() {
    let data = tempfile::tempdir().expect("data");
    let dir = data.path().to_path_buf();
    let b = TestBroker::start_with(|s| s.data_dir = dir.clone()).await;
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("keep.dlq".into(), durable, Default::default()).await.expect("dlq");
    let args = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("keep.dlq"))]);
    ch.queue_declare("keep".into(), durable, args).await.expect("keep");
    for i in 0..50 {
        let props = BasicProperties::default().with_expiration("0".into()).with_delivery_mode(2);
        ch.basic_publish(
            "".into(),
            "keep".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            props,
        )
        .await
        .expect("publish");
    }
    assert!(common::eventually(|| b.counts("keep.dlq").is_some_and(|c| c.0 == 50)).await);
    let (status, body) =
        http_body(&b, "POST", "/api/replays", r#"{"vhost": "/", "queue": "keep.dlq", "rate": 5}"#).await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    conn.close(200, "bye".into()).await.expect("close");
    // The stop cancels the task and waits for it before the queue index is written.
    tokio::time::timeout(std::time::Duration::from_secs(20), b.stop()).await.expect("stopped in time");
    let b = TestBroker::start_with(|s| s.data_dir = dir.clone()).await;
    let (keep, dlq) = (b.counts("keep").expect("keep").0, b.counts("keep.dlq").expect("dlq").0);
    assert_eq!(keep + dlq, 50, "every message in exactly one queue: {keep} + {dlq}");
    assert!(keep > 0 && keep < 50, "the replay had begun and was stopped: {keep}");
    b.stop().await;
}
