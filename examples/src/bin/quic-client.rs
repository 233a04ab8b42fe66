//! AMQP over QUIC with no AMQP library: `quic-client quic://127.0.0.1:5671 ./warren-data/quic/cert.pem`.

use warren_examples::quic::{AmqpOverQuic, connect};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "quic://localhost:5671".into());
    let ca = std::env::args().nth(2).unwrap_or_else(|| "./warren-data/quic/cert.pem".into());
    let quic = connect(&url, ca.as_ref()).await?;
    let mut amqp = AmqpOverQuic::open(&quic, "guest", "guest").await?;
    amqp.declare("example.quic").await?;
    for i in 0..3 {
        amqp.publish("example.quic", format!("hello over QUIC {i}").as_bytes()).await?;
    }
    while let Some(body) = amqp.get("example.quic").await? {
        println!("got {:?}", String::from_utf8_lossy(&body));
    }
    amqp.close().await?;
    quic.close(0u32.into(), b"done");
    Ok(())
}
