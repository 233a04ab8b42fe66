//! The lapin calls most tests make, with their failures as panics.

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::TestBroker;

pub async fn connect(b: &TestBroker) -> Connection {
    connect_uri(&b.uri()).await
}

pub async fn connect_uri(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default()).await.expect("connect")
}

pub async fn declare(ch: &Channel, name: &str) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
}

pub async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
}

pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack }).await.expect("get")
}
