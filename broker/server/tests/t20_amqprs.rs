//! The same broker through amqprs, an independent client implementation, logging in with
//! AMQPLAIN (lapin uses PLAIN).

mod common;

use std::sync::{Arc, Mutex};

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicGetArguments, BasicNackArguments, BasicPublishArguments,
    BasicQosArguments, Channel, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use common::{TestBroker, eventually};

async fn open(b: &TestBroker) -> Connection {
    let args = OpenConnectionArguments::new("127.0.0.1", b.addr.port(), "guest", "guest")
        .credentials(SecurityCredentials::new_amqplain("guest", "guest"))
        .finish();
    Connection::open(&args).await.expect("open")
}

/// Records the reply code of a server-sent channel.close.
#[derive(Clone, Default)]
struct CloseCode(Arc<Mutex<Option<u16>>>);

impl CloseCode {
    fn get(&self) -> Option<u16> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl ChannelCallback for CloseCode {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(close.reply_code());
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: Ack) {}
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {}
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

async fn publish(ch: &Channel, queue: &str, body: &str) {
    ch.basic_publish(
        BasicProperties::default(),
        body.as_bytes().to_vec(),
        BasicPublishArguments::new("", queue),
    )
    .await
    .expect("publish");
}

#[tokio::test(flavor = "multi_thread")]
async fn consume_with_manual_acks_in_publish_order() {
    let b = TestBroker::start().await;
    let conn = open(&b).await;
    let ch = conn.open_channel(None).await.expect("channel");
    ch.queue_declare(QueueDeclareArguments::new("orders")).await.expect("declare");
    for i in 0..50 {
        publish(&ch, "orders", &format!("m{i}")).await;
    }
    let (_tag, mut rx) =
        ch.basic_consume_rx(BasicConsumeArguments::new("orders", "amqprs")).await.expect("consume");
    for i in 0..50u64 {
        let m = rx.recv().await.expect("message");
        let deliver = m.deliver.expect("deliver");
        assert_eq!(m.content.as_deref(), Some(format!("m{i}").as_bytes()));
        assert_eq!(deliver.delivery_tag(), i + 1);
        assert_eq!(deliver.consumer_tag(), "amqprs");
        ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false)).await.expect("ack");
    }
    assert!(eventually(|| b.counts("orders") == Some((0, 0, 1))).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_nack_requeue_then_redelivered() {
    let b = TestBroker::start().await;
    let conn = open(&b).await;
    let ch = conn.open_channel(None).await.expect("channel");
    ch.queue_declare(QueueDeclareArguments::new("n")).await.expect("declare");
    publish(&ch, "n", "first").await;
    publish(&ch, "n", "second").await;
    let (ok, _props, body) = ch.basic_get(BasicGetArguments::new("n")).await.expect("get").expect("message");
    assert_eq!((body.as_slice(), ok.redelivered(), ok.message_count()), (&b"first"[..], false, 1));
    ch.basic_nack(BasicNackArguments::new(ok.delivery_tag(), false, true)).await.expect("nack");
    let (again, _, body) = ch.basic_get(BasicGetArguments::new("n")).await.expect("get").expect("message");
    assert_eq!((body.as_slice(), again.redelivered()), (&b"first"[..], true));
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_one_holds_back_the_second_message() {
    let b = TestBroker::start().await;
    let conn = open(&b).await;
    let ch = conn.open_channel(None).await.expect("channel");
    ch.queue_declare(QueueDeclareArguments::new("one")).await.expect("declare");
    publish(&ch, "one", "a").await;
    publish(&ch, "one", "b").await;
    ch.basic_qos(BasicQosArguments::new(0, 1, false)).await.expect("qos");
    let (_t, mut rx) = ch.basic_consume_rx(BasicConsumeArguments::new("one", "")).await.expect("consume");
    let first = rx.recv().await.expect("a");
    assert!(eventually(|| b.counts("one") == Some((1, 1, 1))).await);
    let tag = first.deliver.expect("deliver").delivery_tag();
    ch.basic_ack(BasicAckArguments::new(tag, false)).await.expect("ack");
    let second = rx.recv().await.expect("b");
    assert_eq!(second.content.as_deref(), Some(&b"b"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_errors_arrive_as_channel_close_with_the_code() {
    let b = TestBroker::start().await;
    let conn = open(&b).await;
    let ch = conn.open_channel(None).await.expect("channel");
    let code = CloseCode::default();
    ch.register_callback(code.clone()).await.expect("callback");
    let missing = QueueDeclareArguments::new("missing").passive(true).finish();
    assert!(ch.queue_declare(missing).await.is_err());
    assert!(eventually(|| code.get() == Some(404)).await, "got {:?}", code.get());

    let owner = conn.open_channel(None).await.expect("channel");
    owner
        .queue_declare(QueueDeclareArguments::new("locked").exclusive(true).finish())
        .await
        .expect("declare");
    let other_conn = open(&b).await;
    let other = other_conn.open_channel(None).await.expect("channel");
    let code = CloseCode::default();
    other.register_callback(code.clone()).await.expect("callback");
    assert!(other.basic_get(BasicGetArguments::new("locked")).await.is_err() || code.get().is_some());
    assert!(eventually(|| code.get() == Some(405)).await, "got {:?}", code.get());
}
