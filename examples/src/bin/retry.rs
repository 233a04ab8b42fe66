//! The broker retries with backoff: the consumer only says "not now".

use std::time::Instant;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let conn = Connection::connect(&warren_examples::url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    for (k, v) in [
        ("x-retry-policy", AMQPValue::LongString("exponential".into())),
        ("x-retry-delay-ms", AMQPValue::LongInt(200)),
        ("x-retry-max-attempts", AMQPValue::LongInt(5)),
    ] {
        args.insert(ShortString::from(k), v);
    }
    ch.queue_declare(
        "example.jobs".into(),
        QueueDeclareOptions { auto_delete: true, ..Default::default() },
        args,
    )
    .await?;
    let mut jobs = ch
        .basic_consume(
            "example.jobs".into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    ch.basic_publish(
        "".into(),
        "example.jobs".into(),
        BasicPublishOptions::default(),
        b"flaky job",
        BasicProperties::default(),
    )
    .await?;
    let started = Instant::now();
    while let Some(d) = jobs.next().await {
        let d = d?;
        let attempt = d.properties.headers().as_ref().and_then(|h| h.inner().get("x-retry-count").cloned());
        println!("{:>5} ms  attempt {attempt:?}", started.elapsed().as_millis());
        if attempt.is_none() || matches!(attempt, Some(AMQPValue::LongLongInt(1))) {
            d.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
            continue;
        }
        d.ack(BasicAckOptions::default()).await?;
        println!("done after the broker retried twice (200 ms, then 400 ms)");
        break;
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}
