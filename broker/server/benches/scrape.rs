//! Scrape cost with 10 000 queues: `cargo bench -p warren --bench scrape`.
//! Prints the time of a whole `/metrics` render and the part of it that holds the broker lock.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use warren::config::Settings;
use warren::metrics::{BrokerCollector, registry, render};
use warren::server::{Server, lock};
use warren_codec::{BasicProperties, FieldTable, FieldValue, Method, QueueBind, QueueDeclare};
use warren_core::broker::ConnectionInfo;

const QUEUES: usize = 10_000;

#[tokio::main]
async fn main() {
    let settings = Settings {
        amqp_listen: Some("127.0.0.1:0".parse().expect("addr")),
        management_listen: None,
        metrics_listen: None,
        ..Settings::default()
    };
    let server = Server::bind(&settings).await.expect("bind");
    let shared = server.shared();
    {
        let mut s = lock(&shared);
        let b = &mut s.broker;
        let conn = b.connect(ConnectionInfo::default());
        b.open_channel(conn, 1);
        // Every tenth queue dead-letters into amq.fanout, which feeds one DLQ per hundred.
        for i in 0..QUEUES {
            let mut arguments = FieldTable::new();
            if i % 10 == 0 {
                arguments.insert("x-dead-letter-exchange".into(), FieldValue::str("amq.fanout"));
            }
            let decl = QueueDeclare { queue: format!("q{i}"), arguments, ..Default::default() };
            b.handle_method(conn, 1, Method::QueueDeclare(decl)).expect("declare");
            if i % 100 == 0 {
                let bind =
                    QueueBind { queue: format!("q{i}"), exchange: "amq.fanout".into(), ..Default::default() };
                b.handle_method(conn, 1, Method::QueueBind(bind)).expect("bind");
            }
            let publish = warren_codec::BasicPublish { routing_key: format!("q{i}"), ..Default::default() };
            b.publish(conn, 1, publish, BasicProperties::default(), Bytes::from_static(b"payload"))
                .expect("publish");
        }
        let mut drained = Vec::new();
        let _ = b.take_outbound(conn, &mut drained);
    }
    let reg = registry(server.node(), server.services());
    let collector = BrokerCollector::new(server.node());
    let runs = 20;
    let mut total = Duration::ZERO;
    let mut size = 0;
    for _ in 0..runs {
        let started = Instant::now();
        size = render(&reg).len();
        total += started.elapsed();
    }
    let held: Duration = (0..runs).map(|_| collector.lock_hold()).sum();
    println!("queues: {QUEUES}, exposition: {} KiB", size / 1024);
    println!("scrape (render /metrics): {:.1} ms", total.as_secs_f64() * 1000.0 / runs as f64);
    println!("broker lock held per scrape: {:.2} ms", held.as_secs_f64() * 1000.0 / runs as f64);
}
