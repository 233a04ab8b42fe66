//! Storage faults injected under the real `warren` binary with an `LD_PRELOAD` shim
//! (`tests/faults/shim.c`): fsync failing with EIO, a metadata write torn by ENOSPC, and a
//! full disk when a segment is created. Whatever the disk does, nothing is confirmed that is
//! not durable, nothing is answered `-ok` that was not stored, and a restart recovers every
//! message that was confirmed.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::process::Process;
use common::process::shim;
use common::{code, publish_confirmed};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

/// A broker under the shim, with its fault switches in `dir/faults`.
struct Faulty {
    process: Process,
    faults: PathBuf,
}

impl Faulty {
    fn start(dir: &Path, config: Option<&str>) -> Faulty {
        let faults = dir.join("faults");
        std::fs::create_dir_all(&faults).expect("faults dir");
        let shim = shim(dir);
        let mut env = vec![
            ("LD_PRELOAD".to_string(), shim.display().to_string()),
            ("WARREN_FAULTS_DIR".to_string(), faults.display().to_string()),
        ];
        if let Some(c) = config {
            let path = dir.join("warren.toml");
            std::fs::write(&path, c).expect("config");
            env.push(("WARREN_CONFIG".to_string(), path.display().to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Faulty { process: Process::start(dir, &env), faults }
    }

    fn arm(&self, fault: &str) {
        std::fs::write(self.faults.join(fault), b"").expect("arm");
    }

    fn disarm(&self, fault: &str) {
        std::fs::remove_file(self.faults.join(fault)).expect("disarm");
    }

    /// How often the shim made `fault` happen.
    fn hits(&self, fault: &str) -> usize {
        std::fs::metadata(self.faults.join(format!("{fault}.hits"))).map_or(0, |m| m.len() as usize)
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

/// Publishes `bodies` without waiting, then collects each confirm within `within` overall:
/// `Some(true)` acked, `Some(false)` nacked, `None` no answer (a blocked connection).
/// lapin holds publishes back itself once told connection.blocked, so sending may not finish.
async fn publish_all(ch: &Channel, queue: &str, bodies: &[String], within: Duration) -> Vec<Option<bool>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut pending = Vec::new();
    for body in bodies {
        let publish = ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            persistent(),
        );
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(c) => pending.push(Some(c.expect("publish"))),
            Err(_) => pending.push(None),
        }
    }
    let mut out = Vec::new();
    for c in pending {
        out.push(match c {
            Some(c) => match tokio::time::timeout_at(deadline, c).await {
                Ok(Ok(confirm)) => Some(confirm.is_ack()),
                _ => None,
            },
            None => None,
        });
    }
    out
}

/// Every body in `queue`, consumed with auto-ack.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = ch.queue_declare(queue.into(), passive, FieldTable::default()).await.expect("queue is there");
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut c =
        ch.basic_consume(queue.into(), "drain".into(), opts, FieldTable::default()).await.expect("consume");
    let mut bodies = Vec::new();
    for _ in 0..q.message_count() {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next()).await.expect("delivery in time");
        let d = d.expect("delivery").expect("ok");
        bodies.push(String::from_utf8(d.data).expect("text"));
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_fsync_nothing_is_confirmed_and_a_restart_recovers_every_confirmed_message() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Faulty::start(dir.path(), None);
    let (_conn, ch) = b.process.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    ch.queue_declare("fsync".into(), durable(), FieldTable::default()).await.expect("declare");
    let confirmed: Vec<String> = (0..100).map(|i| format!("before-{i}")).collect();
    publish_confirmed(&ch, "", "fsync", &confirmed, persistent()).await;

    b.arm("fsync");
    let after: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    let outcomes = publish_all(&ch, "fsync", &after, Duration::from_secs(5)).await;
    assert!(b.hits("fsync") > 0, "the shim failed an fsync");
    assert!(!outcomes.contains(&Some(true)), "a publish was confirmed after the failed fsync: {outcomes:?}");
    assert!(outcomes.contains(&Some(false)), "the publishers are told by a nack: {outcomes:?}");
    // The fsync works again, but that proves nothing about what the failed one lost: the
    // store stays out of service until a restart.
    b.disarm("fsync");
    let log = b.process.log();
    assert!(log.contains("storage sync failed"), "{log}");
    assert!(log.contains(".seg") || log.contains("metadata.log"), "the log names the file: {log}");

    // A durable declare is refused with 541 rather than answered -ok without being stored.
    let (_c2, ch2) = b.process.channel().await;
    let e = ch2.queue_declare("fsync-2".into(), durable(), FieldTable::default()).await.expect_err("refused");
    assert_eq!(code(&e), Some(541), "{e:?}");
    // Transient work goes on.
    let (_c3, ch3) = b.process.channel().await;
    ch3.queue_declare("transient".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("a transient queue needs no disk");

    b.process.kill();
    let b = Process::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    let back = drain(&ch, "fsync").await;
    for body in &confirmed {
        assert_eq!(back.iter().filter(|b| *b == body).count(), 1, "{body} comes back once: {back:?}");
    }
    assert!(back.iter().all(|b| b.starts_with("before-") || b.starts_with("after-")), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_write_torn_by_a_full_disk_fails_the_declare_and_leaves_the_log_whole() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Faulty::start(dir.path(), None);
    let (_conn, ch) = b.process.channel().await;
    ch.queue_declare("kept".into(), durable(), FieldTable::default()).await.expect("declare");

    b.arm("write");
    let e = ch.queue_declare("torn".into(), durable(), FieldTable::default()).await.expect_err("refused");
    assert_eq!(code(&e), Some(541), "{e:?}");
    assert!(b.hits("write") > 0, "the shim tore a write");
    b.disarm("write");

    // The declare that failed did not happen; the next one lands after a whole record.
    let (_conn, ch) = b.process.channel().await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let e = ch.queue_declare("torn".into(), passive, FieldTable::default()).await.expect_err("not declared");
    assert_eq!(code(&e), Some(404), "{e:?}");
    let (_conn, ch) = b.process.channel().await;
    ch.queue_declare("after".into(), durable(), FieldTable::default()).await.expect("declare after");

    b.process.kill();
    let b = Process::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    for q in ["kept", "after"] {
        ch.queue_declare(q.into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("{q}: {e:?}"));
    }
    let e =
        ch.queue_declare("torn".into(), passive, FieldTable::default()).await.expect_err("still not there");
    assert_eq!(code(&e), Some(404), "{e:?}");
    let log = b.log();
    assert!(!log.contains("damaged") && !log.contains("torn write"), "recovery found no damage: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_segment_creation_nacks_the_publish_and_the_store_carries_on() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Faulty::start(dir.path(), Some("[storage]\nsegment-size = \"64KiB\"\n"));
    let (_conn, ch) = b.process.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    ch.queue_declare("full".into(), durable(), FieldTable::default()).await.expect("declare");
    let big = |tag: &str, i: usize| format!("{tag}-{i}-{}", "x".repeat(16 * 1024));

    b.arm("fallocate");
    // Four 16 KiB messages fill the first segment; the next needs a new one, which the full
    // disk refuses.
    let first: Vec<String> = (0..8).map(|i| big("first", i)).collect();
    let outcomes = publish_all(&ch, "full", &first, Duration::from_secs(10)).await;
    assert!(b.hits("fallocate") > 0, "a segment was refused");
    assert!(outcomes.contains(&Some(false)), "{outcomes:?}");
    assert!(!outcomes.contains(&None), "every publish is answered: {outcomes:?}");
    b.disarm("fallocate");
    let then: Vec<String> = (0..8).map(|i| big("then", i)).collect();
    publish_confirmed(&ch, "", "full", &then, persistent()).await;
    let acked: Vec<&String> =
        first.iter().zip(&outcomes).filter(|(_, o)| **o == Some(true)).map(|(b, _)| b).chain(&then).collect();

    b.process.kill();
    let b = Process::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    let back = drain(&ch, "full").await;
    for body in acked {
        assert_eq!(back.iter().filter(|b| *b == body).count(), 1, "a confirmed message comes back once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_stops_the_start_naming_it_and_salvage_skips_the_record() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Process::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    ch.queue_declare("damaged".into(), durable(), FieldTable::default()).await.expect("declare");
    let bodies: Vec<String> = (0..5).map(|i| format!("{i}").repeat(2000)).collect();
    publish_confirmed(&ch, "", "damaged", &bodies, persistent()).await;
    b.kill();
    // Once more, so the damaged segment is not the newest (where a crash leaves torn writes).
    Process::start(dir.path(), &[]).kill();

    // Bit rot in the third message's body, with intact records after it.
    let segment = dir.path().join("data/storage/segments/0000000000000001.seg");
    let mut data = std::fs::read(&segment).expect("segment");
    let third = data.windows(2000).position(|w| w.iter().all(|&x| x == b'2')).expect("third body");
    data[third + 100] ^= 0x01;
    std::fs::write(&segment, &data).expect("write");

    assert!(!common::process::run_to_exit(dir.path(), &[]), "a damaged log must stop the start");
    let log = common::process::log_of(dir.path());
    assert!(log.contains("0000000000000001.seg at offset") && log.contains("--salvage-storage"), "{log}");
    assert_eq!(std::fs::read(&segment).expect("segment"), data, "the damaged file is left as it was");

    let b = Process::start(dir.path(), &[("WARREN_SALVAGE_STORAGE", "true")]);
    let (_conn, ch) = b.channel().await;
    let mut back = drain(&ch, "damaged").await;
    back.sort();
    let want: Vec<String> = bodies.iter().filter(|b| !b.starts_with('2')).cloned().collect();
    assert_eq!(back, want, "every intact message, and only the damaged one skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_the_disk_cannot_record_does_not_happen() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Faulty::start(dir.path(), None);
    let (_conn, ch) = b.process.channel().await;
    ch.queue_declare("kept".into(), durable(), FieldTable::default()).await.expect("declare");
    b.arm("write");
    let e = ch.queue_delete("kept".into(), QueueDeleteOptions::default()).await.expect_err("refused");
    assert_eq!(code(&e), Some(541), "{e:?}");
    b.disarm("write");
    // Still there now, and after a crash: memory and disk agree.
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let (_conn, ch) = b.process.channel().await;
    ch.queue_declare("kept".into(), passive, FieldTable::default()).await.expect("not deleted");
    b.process.kill();
    let b = Process::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    ch.queue_declare("kept".into(), passive, FieldTable::default()).await.expect("still not deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_data_dir_is_refused_and_a_truncated_segment_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Process::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    ch.queue_declare("cut".into(), durable(), FieldTable::default()).await.expect("declare");
    let bodies: Vec<String> = (0..5).map(|i| format!("{i}").repeat(2000)).collect();
    publish_confirmed(&ch, "", "cut", &bodies, persistent()).await;

    // Started by mistake on the same data directory: refused, and the first one carries on.
    assert!(!common::process::run_to_exit(dir.path(), &[]), "a second broker must not start");
    let log = common::process::log_of(dir.path());
    assert!(log.contains("in use by another process"), "{log}");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = ch.queue_declare("cut".into(), passive, FieldTable::default()).await.expect("still serving");
    assert_eq!(q.message_count(), 5);
    b.kill();
    Process::start(dir.path(), &[]).kill();

    // Cut in the fourth message: the file ends inside a record it held.
    let segment = dir.path().join("data/storage/segments/0000000000000001.seg");
    let data = std::fs::read(&segment).expect("segment");
    let fourth = data.windows(2000).position(|w| w.iter().all(|&x| x == b'3')).expect("fourth body");
    let cut = &data[..fourth + 1000];
    std::fs::write(&segment, cut).expect("truncate");

    assert!(!common::process::run_to_exit(dir.path(), &[]), "a truncated segment must stop the start");
    let log = common::process::log_of(dir.path());
    assert!(log.contains("0000000000000001.seg at offset") && log.contains("truncated"), "{log}");
    assert_eq!(std::fs::read(&segment).expect("segment"), cut, "the file is left as it was");

    let b = Process::start(dir.path(), &[("WARREN_SALVAGE_STORAGE", "true")]);
    let (_conn, ch) = b.channel().await;
    let mut back = drain(&ch, "cut").await;
    back.sort();
    assert_eq!(back, bodies[..3], "what the file still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_the_disk_cannot_read_stops_the_start_with_an_error_not_a_crash() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Process::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    ch.queue_declare("eio".into(), durable(), FieldTable::default()).await.expect("declare");
    publish_confirmed(&ch, "", "eio", &["unreadable".to_string()], persistent()).await;
    b.kill();

    let faults = dir.path().join("faults");
    std::fs::create_dir_all(&faults).expect("faults dir");
    std::fs::write(faults.join("pread"), b"").expect("arm");
    let shim = shim(dir.path());
    let env =
        [("LD_PRELOAD", shim.to_str().expect("path")), ("WARREN_FAULTS_DIR", faults.to_str().expect("path"))];
    assert!(!common::process::run_to_exit(dir.path(), &env), "an unreadable segment must stop the start");
    let log = common::process::log_of(dir.path());
    assert!(log.contains(".seg at offset 0: cannot be read") && log.contains("--salvage-storage"), "{log}");
    assert!(!log.contains("SIGBUS") && !log.contains("panicked"), "{log}");

    // Readable again (the sector was remapped): everything is back.
    std::fs::remove_file(faults.join("pread")).expect("disarm");
    let b = Process::start(dir.path(), &env);
    let (_conn, ch) = b.channel().await;
    assert_eq!(drain(&ch, "eio").await, ["unreadable"]);
}

/// A quorum queue stores every message, transient ones too (its log holds them all, as
/// RabbitMQ's does): none is confirmed before its sync, a failed fsync nacks, and after a
/// kill -9 every confirmed message comes back once, in publish order, with the delivery
/// count a reject gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_confirms_only_synced_messages_and_a_kill_keeps_every_confirmed_one() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Faulty::start(dir.path(), None);
    let (_conn, ch) = b.process.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let quorum = common::table(&[("x-queue-type", common::s("quorum"))]);
    ch.queue_declare("qq".into(), durable(), quorum.clone()).await.expect("declare");
    let confirmed: Vec<String> = (0..100).map(|i| format!("before-{i}")).collect();
    // Transient: delivery-mode 1.
    publish_confirmed(&ch, "", "qq", &confirmed, BasicProperties::default().with_delivery_mode(1)).await;
    // One failed delivery: the first message, rejected back into the queue.
    let first = ch.basic_get("qq".into(), BasicGetOptions::default()).await.expect("get").expect("a message");
    assert_eq!(first.delivery.data, b"before-0");
    first.delivery.acker.reject(BasicRejectOptions { requeue: true }).await.expect("reject");
    // The reject's count is written; a durable declare's -ok waits for a sync, so it is on
    // disk before the fsync fails (else that failure, not the publishes', would come first
    // and block the publisher before it sends, which proves nothing about nacks).
    ch.queue_declare("synced".into(), durable(), FieldTable::default()).await.expect("a synced declare");

    b.arm("fsync");
    let after: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    let outcomes = publish_all(&ch, "qq", &after, Duration::from_secs(5)).await;
    assert!(b.hits("fsync") > 0, "the shim failed an fsync");
    assert!(!outcomes.contains(&Some(true)), "confirmed after the failed fsync: {outcomes:?}");
    assert!(outcomes.contains(&Some(false)), "the publishers are told by a nack: {outcomes:?}");
    b.disarm("fsync");

    b.process.kill();
    let b = Process::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    ch.queue_declare("qq".into(), durable(), quorum).await.expect("the same quorum queue, redeclared");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let n =
        ch.queue_declare("qq".into(), passive, FieldTable::default()).await.expect("there").message_count();
    let mut back = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..n {
        let m =
            ch.basic_get("qq".into(), BasicGetOptions { no_ack: true }).await.expect("get").expect("message");
        let count =
            m.delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count").cloned());
        counts.push(count);
        back.push(String::from_utf8(m.delivery.data).expect("text"));
    }
    let kept: Vec<&String> = back.iter().filter(|b| b.starts_with("before-")).collect();
    assert_eq!(kept, confirmed.iter().collect::<Vec<_>>(), "every confirmed message once, in order");
    assert!(back.iter().all(|b| b.starts_with("before-") || b.starts_with("after-")), "{back:?}");
    assert!(
        matches!(counts[0], Some(lapin::types::AMQPValue::LongLongInt(1))),
        "the reject's count survived the kill: {:?}",
        counts[0]
    );
}
