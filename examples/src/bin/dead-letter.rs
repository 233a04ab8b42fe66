//! A rejected message goes to the dead-letter queue with its history.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let conn = Connection::connect(&warren_examples::url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;

    // The dead-letter side: a fanout exchange and the queue behind it.
    ch.exchange_declare(
        "example.dlx".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare("example.dlq".into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    ch.queue_bind(
        "example.dlq".into(),
        "example.dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    // The work queue dead-letters into it.
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString("example.dlx".into()));
    ch.queue_declare("example.work".into(), QueueDeclareOptions::default(), args).await?;

    let props = BasicProperties::default().with_message_id("order-42".into());
    ch.basic_publish(
        "".into(),
        "example.work".into(),
        BasicPublishOptions::default(),
        b"cannot be processed",
        props,
    )
    .await?;
    let Some(m) = ch.basic_get("example.work".into(), BasicGetOptions::default()).await? else {
        anyhow::bail!("the message did not arrive in example.work");
    };
    println!("consumer: rejecting {:?}", String::from_utf8_lossy(&m.delivery.data));
    m.delivery.reject(BasicRejectOptions { requeue: false }).await?;

    // Look at it without taking it: get, print, and put it back.
    for _ in 0..50 {
        if let Some(d) = ch.basic_get("example.dlq".into(), BasicGetOptions::default()).await? {
            println!("dead-letter queue: {:?}", String::from_utf8_lossy(&d.delivery.data));
            let headers = d.delivery.properties.headers().clone().unwrap_or_default();
            if let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") {
                for death in deaths.as_slice() {
                    let AMQPValue::FieldTable(t) = death else { continue };
                    let text = |k: &str| match t.inner().get(k) {
                        Some(AMQPValue::LongString(s)) => s.to_string(),
                        Some(other) => format!("{other:?}"),
                        None => String::new(),
                    };
                    println!(
                        "x-death: queue={} reason={} count={}",
                        text("queue"),
                        text("reason"),
                        text("count")
                    );
                }
            }
            d.delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
            conn.close(200, "done".into()).await?;
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    anyhow::bail!("nothing arrived in example.dlq")
}
