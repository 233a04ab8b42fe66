//! The quorum queue's machine: RabbitMQ's semantics scenario by scenario, then properties
//! over random command sequences (replicas agree, snapshot plus tail equals replay,
//! nothing is lost or counted twice, ordering equals the classic queue's).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn owner(conn: u64) -> Owner {
    Owner { node: 1, conn }
}

fn consumer(conn: u64, tag: &str) -> ConsumerId {
    ConsumerId { owner: owner(conn), channel: 1, tag: tag.into() }
}

fn getter(conn: u64) -> ConsumerId {
    ConsumerId { owner: owner(conn), channel: 1, tag: String::new() }
}

/// A queue and its log position: each `apply` is the next entry, at the time set.
struct Log {
    q: QuorumQueue,
    index: u64,
    time_ms: u64,
}

impl Log {
    fn new(config: Config) -> Self {
        Log { q: QuorumQueue::new(config, 1_000), index: 0, time_ms: 1_000 }
    }

    fn apply(&mut self, c: Command) -> (Reply, Vec<Effect>) {
        self.index += 1;
        self.q.apply(Meta { index: self.index, time_ms: self.time_ms }, c)
    }

    fn publish(&mut self, size: u64) -> (Reply, Vec<Effect>) {
        self.publish_with(Header { size, priority: 0, ttl_ms: None, delivery_count: 0, delay_ms: None })
    }

    fn publish_with(&mut self, header: Header) -> (Reply, Vec<Effect>) {
        self.apply(Command::Enqueue { publish: None, header })
    }

    fn consume(&mut self, c: &ConsumerId, prefetch: u32) -> Vec<Effect> {
        self.apply(Command::Checkout { consumer: c.clone(), prefetch, priority: 0 }).1
    }
}

/// The deliveries in `fx` for `c`, as (entry index, delivery id, redelivered).
fn delivered(fx: &[Effect], c: &ConsumerId) -> Vec<(u64, u64, bool)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Deliver { consumer, deliveries } if consumer == c => Some(deliveries),
            _ => None,
        })
        .flatten()
        .map(|d| (d.msg.index, d.id, d.redelivered))
        .collect()
}

fn dead(fx: &[Effect]) -> Vec<(Reason, u64)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::DeadLetter { reason, msgs } => {
                Some(msgs.iter().map(|m| (*reason, m.index)).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_consumer_gets_messages_in_order_within_its_prefetch() {
    let mut log = Log::new(Config::default());
    for _ in 0..5 {
        assert_eq!(log.publish(10).0, Reply::Enqueued);
    }
    let a = consumer(1, "a");
    let fx = log.consume(&a, 2);
    assert_eq!(delivered(&fx, &a), [(1, 0, false), (2, 1, false)]);
    assert_eq!((log.q.ready(), log.q.ready_bytes(), log.q.unacked()), (3, 30, 2));
    let (_, fx) = log.apply(Command::Settle { consumer: a.clone(), ids: vec![0] });
    assert_eq!(delivered(&fx, &a), [(3, 2, false)], "one settled makes room for one");
    assert_eq!(log.q.live_indexes().into_iter().collect::<Vec<_>>(), [2, 3, 4, 5]);
}

#[test]
fn consumers_take_turns_and_a_higher_priority_goes_first_while_it_has_room() {
    let mut log = Log::new(Config::default());
    let (a, b, hi) = (consumer(1, "a"), consumer(2, "b"), consumer(3, "hi"));
    log.consume(&a, 0);
    log.consume(&b, 0);
    let mut fx = Vec::new();
    for _ in 0..4 {
        fx.extend(log.publish(1).1);
    }
    assert_eq!(delivered(&fx, &a).len(), 2);
    assert_eq!(delivered(&fx, &b).len(), 2);
    log.apply(Command::Checkout { consumer: hi.clone(), prefetch: 1, priority: 5 });
    let (_, fx) = log.publish(1);
    assert_eq!(delivered(&fx, &hi).len(), 1);
    let (_, fx) = log.publish(1);
    assert!(delivered(&fx, &hi).is_empty(), "hi is full: the others take it");
    assert_eq!(delivered(&fx, &a).len() + delivered(&fx, &b).len(), 1);
}

#[test]
fn a_reject_counts_towards_the_delivery_limit_and_a_nack_does_not() {
    let mut log = Log::new(Config { delivery_limit: Some(2), dead_letter: true, ..Config::default() });
    log.publish(1);
    let a = consumer(1, "a");
    let mut fx = log.consume(&a, 1);
    for round in 0..3u32 {
        let (id, index, redelivered) = {
            let d = delivered(&fx, &a);
            (d[0].1, d[0].0, d[0].2)
        };
        assert_eq!((index, redelivered), (1, round > 0));
        // A nack with requeue never counts.
        fx = log
            .apply(Command::Return { consumer: a.clone(), ids: vec![id], failed: false, delay_ms: None })
            .1;
        let id = delivered(&fx, &a)[0].1;
        fx =
            log.apply(Command::Return { consumer: a.clone(), ids: vec![id], failed: true, delay_ms: None }).1;
        if round < 2 {
            assert!(dead(&fx).is_empty());
            assert_eq!(log.q.consumers().get(&a).map(|c| c.checked_out().count()), Some(1));
        }
    }
    assert_eq!(dead(&fx), [(Reason::DeliveryLimit, 1)], "the third failed delivery is one too many");
    assert_eq!(log.q.ready() + log.q.unacked() as u64, 0);
}

#[test]
fn a_lost_consumer_returns_its_messages_as_failed_deliveries() {
    let mut log = Log::new(Config::default());
    let (a, b) = (consumer(1, "a"), consumer(2, "b"));
    log.consume(&a, 0);
    log.publish(1);
    log.publish(1);
    let fx = log.consume(&b, 0);
    assert!(delivered(&fx, &b).is_empty());
    let (_, fx) = log.apply(Command::Down { owner: owner(1) });
    assert_eq!(delivered(&fx, &b), [(2, 0, true), (3, 1, true)], "in publish order, redelivered");
    let counts: Vec<_> = log
        .q
        .consumers()
        .get(&b)
        .into_iter()
        .flat_map(|c| c.checked_out())
        .map(|(_, m)| m.delivery_count)
        .collect();
    assert_eq!(counts, [1, 1]);
    assert!(log.q.consumers().get(&a).is_none());
}

#[test]
fn an_enqueue_proposed_twice_is_answered_twice_and_enqueued_once() {
    let mut log = Log::new(Config { max_length: Some(1), reject_publish: true, ..Config::default() });
    let publisher = PublisherId { owner: owner(1), channel: 1, incarnation: 0 };
    let header = Header { size: 1, priority: 0, ttl_ms: None, delivery_count: 0, delay_ms: None };
    let enqueue = |seq, oldest_unanswered| Command::Enqueue {
        publish: Some(Publish { publisher, seq, oldest_unanswered }),
        header,
    };
    assert_eq!(log.apply(enqueue(1, 1)).0, Reply::Enqueued);
    assert_eq!(log.apply(enqueue(2, 1)).0, Reply::Rejected, "full");
    // The proposer lost both answers in a leader change and proposes them again.
    assert_eq!(log.apply(enqueue(1, 1)).0, Reply::Enqueued);
    assert_eq!(log.apply(enqueue(2, 1)).0, Reply::Rejected);
    assert_eq!(log.q.ready(), 1);
    assert_eq!(log.q.stats().duplicates, 2);
    // Once the proposer has its answers, the queue forgets the refusal.
    log.apply(Command::Purge);
    assert_eq!(log.apply(enqueue(3, 3)).0, Reply::Enqueued);
    assert!(log.q.enqueuers.values().all(|e| e.rejected.is_empty()));
    // A gap is refused: the missing enqueue is proposed first.
    assert_eq!(log.apply(enqueue(5, 3)).0, Reply::OutOfSequence { expected: 4 });
    // The same channel number opened again is another publisher, counting from 1.
    let reopened =
        Publish { publisher: PublisherId { incarnation: 1, ..publisher }, seq: 1, oldest_unanswered: 1 };
    log.apply(Command::Purge);
    assert_eq!(log.apply(Command::Enqueue { publish: Some(reopened), header }).0, Reply::Enqueued);
    assert_eq!(log.q.ready(), 1);
    // A publisher's connection going away forgets it.
    log.apply(Command::Down { owner: owner(1) });
    assert!(log.q.enqueuers.is_empty());
}

#[test]
fn refusals_past_the_memory_are_answered_as_refusals() {
    let mut log = Log::new(Config { max_length: Some(0), reject_publish: true, ..Config::default() });
    let publisher = PublisherId { owner: owner(1), channel: 1, incarnation: 0 };
    let header = Header { size: 1, priority: 0, ttl_ms: None, delivery_count: 0, delay_ms: None };
    // A proposer that never says it has its answers (oldest_unanswered stays at 1).
    let enqueue =
        |seq| Command::Enqueue { publish: Some(Publish { publisher, seq, oldest_unanswered: 1 }), header };
    let n = MAX_REMEMBERED_REFUSALS as u64 + 10;
    for seq in 1..=n {
        assert_eq!(log.apply(enqueue(seq)).0, Reply::Rejected);
    }
    assert_eq!(log.q.enqueuers[&publisher].rejected.len(), MAX_REMEMBERED_REFUSALS, "bounded");
    assert_eq!(log.apply(enqueue(1)).0, Reply::Rejected, "forgotten, still a refusal");
    assert_eq!(log.apply(enqueue(n)).0, Reply::Rejected);
}

#[test]
fn a_snapshot_that_disagrees_with_itself_is_refused() {
    let mut log = Log::new(Config::default());
    log.publish(5);
    log.publish(5);
    assert_eq!(log.q.check(), Ok(()));
    let mut bad = log.q.clone();
    bad.ready = 7;
    assert!(bad.check().is_err());
    let mut bad = log.q.clone();
    bad.ready_bytes = 0;
    assert!(bad.check().is_err());
    // The same entry held twice.
    let mut json = serde_json::to_value(&log.q).expect("serializes");
    json["lanes"]["0"]["ready"][1]["index"] = json["lanes"]["0"]["ready"][0]["index"].clone();
    let twice: QuorumQueue = serde_json::from_value(json).expect("well-formed");
    assert!(twice.check().is_err());
}

#[test]
fn a_new_leader_resends_every_unacked_delivery() {
    let mut log = Log::new(Config::default());
    let a = consumer(1, "a");
    log.consume(&a, 0);
    log.publish(1);
    log.publish(1);
    let fx = log.q.resend();
    assert_eq!(delivered(&fx, &a), [(2, 0, false), (3, 1, false)]);
}

#[test]
fn basic_get_is_refused_on_a_single_active_consumer_queue_and_a_policy_cannot_change_that() {
    let mut log = Log::new(Config { single_active_consumer: true, ..Config::default() });
    log.publish(1);
    let (reply, _) = log.apply(Command::Dequeue { consumer: getter(1), settle: true });
    assert!(matches!(reply, Reply::Unsupported(_)));
    log.apply(Command::Configure(Config { single_active_consumer: false, ..Config::default() }));
    assert!(log.q.config().single_active_consumer);
}

#[test]
fn ttl_expires_messages_at_the_head_and_asks_for_a_tick() {
    let mut log = Log::new(Config { message_ttl: Some(100), dead_letter: true, ..Config::default() });
    let (_, fx) = log.publish(1);
    assert_eq!(fx, [Effect::Timer { at_ms: 1_100 }]);
    log.time_ms = 1_050;
    let (_, fx) = log.publish_with(Header {
        size: 1,
        priority: 0,
        ttl_ms: Some(10),
        delivery_count: 0,
        delay_ms: None,
    });
    assert!(fx.is_empty(), "its own TTL is shorter, but it is not the head: no new deadline");
    log.time_ms = 1_100;
    let (_, fx) = log.apply(Command::Tick);
    // The second expired behind the first and goes as soon as it is the head.
    assert_eq!(dead(&fx), [(Reason::Expired, 1), (Reason::Expired, 2)]);
    assert_eq!(log.q.ready(), 0);
    assert_eq!(log.q.next_deadline(), None);
}

#[test]
fn a_ttl_of_zero_reaches_a_waiting_consumer_or_no_one() {
    let mut log = Log::new(Config { message_ttl: Some(0), ..Config::default() });
    let (_, fx) = log.publish(1);
    // Reported without a dead-letter exchange too: whoever holds its body lets it go.
    assert_eq!(dead(&fx), [(Reason::Expired, 1)]);
    assert_eq!((log.q.ready(), log.q.stats().dead_lettered[Reason::Expired as usize]), (0, 1));
    let a = consumer(1, "a");
    log.consume(&a, 0);
    let (_, fx) = log.publish(1);
    assert_eq!(delivered(&fx, &a).len(), 1);
}

#[test]
fn max_length_drops_the_head_or_refuses_the_publish() {
    let mut log = Log::new(Config { max_length: Some(2), dead_letter: true, ..Config::default() });
    for _ in 0..3 {
        log.publish(1);
    }
    assert_eq!(log.q.ready(), 2);
    assert_eq!(log.q.live_indexes().into_iter().collect::<Vec<_>>(), [2, 3]);
    let (_, fx) = log.publish(1);
    assert_eq!(dead(&fx), [(Reason::MaxLen, 2)]);

    let mut log = Log::new(Config { max_length_bytes: Some(10), reject_publish: true, ..Config::default() });
    assert_eq!(log.publish(6).0, Reply::Enqueued);
    assert_eq!(log.publish(5).0, Reply::Rejected);
    assert_eq!(log.publish(4).0, Reply::Enqueued);
    assert_eq!((log.q.ready(), log.q.ready_bytes(), log.q.stats().rejected), (2, 10, 1));
}

#[test]
fn higher_priorities_go_first_and_above_the_top_count_as_the_top() {
    let mut log = Log::new(Config::default());
    for p in [0, 200, 5, 31, 5] {
        log.publish_with(Header { size: 1, priority: p, ttl_ms: None, delivery_count: 0, delay_ms: None });
    }
    let a = consumer(1, "a");
    let order: Vec<_> = delivered(&log.consume(&a, 0), &a).into_iter().map(|d| d.0).collect();
    assert_eq!(order, [2, 4, 3, 5, 1]);
}

#[test]
fn a_single_active_consumer_hands_over_when_it_goes() {
    let mut log = Log::new(Config { single_active_consumer: true, ..Config::default() });
    let (a, b) = (consumer(1, "a"), consumer(2, "b"));
    log.consume(&a, 1);
    log.consume(&b, 0);
    assert_eq!(log.q.consumers().get(&b).map(|c| c.status), Some(Status::Waiting));
    let (_, fx) = log.publish(1);
    assert_eq!(delivered(&fx, &a).len(), 1);
    let (_, fx) = log.publish(1);
    assert!(fx.is_empty(), "a is full and b waits");
    let (_, fx) = log.apply(Command::Down { owner: owner(1) });
    assert_eq!(delivered(&fx, &b), [(3, 0, true), (4, 1, false)]);
    assert_eq!(log.q.consumers().get(&b).map(|c| c.status), Some(Status::Active));
}

#[test]
fn a_cancelled_consumer_keeps_its_unacked_messages_until_it_settles_them() {
    let mut log = Log::new(Config::default());
    let a = consumer(1, "a");
    log.consume(&a, 0);
    log.publish(1);
    log.apply(Command::Cancel { consumer: a.clone() });
    let (_, fx) = log.publish(1);
    assert!(fx.is_empty());
    assert_eq!(log.q.consumers().get(&a).map(|c| c.status), Some(Status::Cancelled));
    log.apply(Command::Settle { consumer: a.clone(), ids: vec![0] });
    assert!(log.q.consumers().get(&a).is_none(), "forgotten once it holds nothing");
    assert_eq!(log.apply(Command::Cancel { consumer: a }).0, Reply::NoConsumer);
}

#[test]
fn basic_get_takes_one_message_settled_or_not() {
    let mut log = Log::new(Config::default());
    for _ in 0..3 {
        log.publish(1);
    }
    let g = getter(1);
    let (reply, _) = log.apply(Command::Dequeue { consumer: g.clone(), settle: false });
    let Reply::Dequeued { delivery: Some(d), remaining: 2 } = reply else { panic!("{reply:?}") };
    assert_eq!((d.msg.index, d.id), (1, 0));
    let (reply, _) = log.apply(Command::Dequeue { consumer: g.clone(), settle: true });
    assert!(matches!(reply, Reply::Dequeued { delivery: Some(_), remaining: 1 }));
    assert_eq!(log.q.unacked(), 1);
    log.apply(Command::Return { consumer: g.clone(), ids: vec![0], failed: false, delay_ms: None });
    let (reply, _) = log.apply(Command::Dequeue { consumer: g, settle: true });
    let Reply::Dequeued { delivery: Some(d), remaining: 1 } = reply else { panic!("{reply:?}") };
    assert_eq!((d.msg.index, d.redelivered), (1, true), "back in its place");
}

#[test]
fn an_unused_queue_expires_once_and_a_consumer_keeps_it() {
    let mut log = Log::new(Config { expires: Some(500), ..Config::default() });
    let (_, fx) = log.apply(Command::Tick);
    assert_eq!(fx, [Effect::Timer { at_ms: 1_500 }]);
    let a = consumer(1, "a");
    log.time_ms = 1_400;
    let fx = log.consume(&a, 0);
    assert!(fx.is_empty(), "{fx:?}");
    log.time_ms = 5_000;
    assert!(log.apply(Command::Tick).1.is_empty(), "a consumer keeps it in use");
    let (_, fx) = log.apply(Command::Cancel { consumer: a });
    assert_eq!(fx, [Effect::Timer { at_ms: 5_500 }]);
    log.time_ms = 5_500;
    assert_eq!(log.apply(Command::Tick).1, [Effect::Expired]);
    assert_eq!(
        log.apply(Command::Tick).1,
        [Effect::Expired],
        "asked again until deleted: a leader may die first"
    );
    // A consumer lost with its connection is a use, as a cancel is.
    let mut log = Log::new(Config { expires: Some(500), ..Config::default() });
    log.consume(&consumer(1, "a"), 0);
    log.time_ms = 10_000;
    let (_, fx) = log.apply(Command::Down { owner: owner(1) });
    assert_eq!(fx, [Effect::Timer { at_ms: 10_500 }]);
}

#[test]
fn purge_takes_the_ready_messages_and_leaves_the_unacked() {
    let mut log = Log::new(Config::default());
    let a = consumer(1, "a");
    log.consume(&a, 1);
    for _ in 0..4 {
        log.publish(1);
    }
    assert_eq!(log.apply(Command::Purge).0, Reply::Purged(3));
    assert_eq!((log.q.ready(), log.q.unacked()), (0, 1));
}

// ---- properties over random command sequences ----

/// One step of a random history: a command, a publish, or the clock moving on.
#[derive(Debug, Clone)]
enum Step {
    Do(Command),
    /// A publish from connection `conn`; with confirms, `mode` 0 proposes the publisher's
    /// next sequence number, 1 proposes its last one again (a repeat after a leader change),
    /// 2 skips one (a proposal lost before it reached the log).
    Publish {
        conn: u64,
        confirm: bool,
        mode: u8,
        header: Header,
    },
    Wait(u64),
}

/// The proposers' side of a history: the log position, the leader's clock, each
/// publisher's incarnation and last sequence number, and what the queue was told to keep.
#[derive(Debug, Clone, Default)]
struct Driver {
    index: u64,
    time_ms: u64,
    publishers: BTreeMap<u64, (u64, u64)>,
    /// Publishes the queue answered `Enqueued` to the first time they were proposed.
    accepted: u64,
}

fn owner_of(conn: u64) -> Owner {
    // Two nodes, so NodeDown takes some connections and not others.
    Owner { node: 1 + conn % 2, conn }
}

fn any_consumer() -> impl Strategy<Value = ConsumerId> {
    (1..4u64, prop_oneof![Just(""), Just("a"), Just("b")]).prop_map(|(conn, tag)| ConsumerId {
        owner: owner_of(conn),
        channel: 1,
        tag: tag.into(),
    })
}

fn any_step() -> impl Strategy<Value = Step> {
    let ids = proptest::collection::vec(0..12u64, 0..4);
    prop_oneof![
        6 => (1..4u64, proptest::bool::ANY, prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)], 0..40u8, proptest::option::of(0..300u64)).prop_map(
            |(conn, confirm, mode, priority, ttl_ms)| Step::Publish {
                conn,
                confirm,
                mode,
                header: Header { size: 1 + u64::from(priority % 7), priority, ttl_ms, delivery_count: 0, delay_ms: None },
            }
        ),
        2 => (any_consumer(), 0..4u32, -1..2i64)
            .prop_map(|(consumer, prefetch, priority)| Step::Do(Command::Checkout { consumer, prefetch, priority })),
        1 => any_consumer().prop_map(|consumer| Step::Do(Command::Cancel { consumer })),
        3 => (any_consumer(), ids.clone()).prop_map(|(consumer, ids)| Step::Do(Command::Settle { consumer, ids })),
        2 => (any_consumer(), ids.clone(), proptest::bool::ANY, proptest::option::of(0..300u64))
            .prop_map(|(consumer, ids, failed, delay_ms)| Step::Do(Command::Return { consumer, ids, failed, delay_ms })),
        1 => (any_consumer(), ids).prop_map(|(consumer, ids)| Step::Do(Command::Discard { consumer, ids })),
        1 => (any_consumer(), proptest::bool::ANY)
            .prop_map(|(consumer, settle)| Step::Do(Command::Dequeue { consumer, settle })),
        1 => (1..4u64).prop_map(|conn| Step::Do(Command::Down { owner: owner_of(conn) })),
        1 => (1..3u64).prop_map(|node| Step::Do(Command::NodeDown { node })),
        1 => (1..3u64).prop_map(|node| Step::Do(Command::NodeUp { node })),
        1 => (1..3u64).prop_map(|node| Step::Do(Command::NodeRemoved { node })),
        1 => Just(Step::Do(Command::Purge)),
        1 => proptest::collection::vec(0..60u64, 0..3).prop_map(|indexes| Step::Do(Command::DeadLettered { indexes })),
        2 => Just(Step::Do(Command::Tick)),
        1 => any_config().prop_map(|c| Step::Do(Command::Configure(c))),
        2 => (0..200u64).prop_map(Step::Wait),
    ]
}

fn any_config() -> impl Strategy<Value = Config> {
    (
        (proptest::option::of(0..6u64), proptest::option::of(0..30u64), proptest::bool::ANY),
        (proptest::option::of(0..3u32), proptest::option::of(0..400u64), proptest::option::of(1..500u64)),
        (proptest::bool::ANY, proptest::bool::ANY, proptest::option::of(1..600u64), proptest::bool::ANY),
    )
        .prop_map(
            |(
                (max_length, max_length_bytes, reject_publish),
                (delivery_limit, message_ttl, expires),
                (single_active_consumer, dead_letter, consumer_timeout_ms, dead_letter_at_least_once),
            )| Config {
                max_length,
                max_length_bytes,
                reject_publish,
                delivery_limit,
                message_ttl,
                expires,
                single_active_consumer,
                dead_letter,
                consumer_timeout_ms,
                dead_letter_at_least_once,
            },
        )
}

/// One command's reply and effects.
type Applied = (Reply, Vec<Effect>);

/// Runs `steps` on `q`, the proposers' side in `d`, returning every reply and effect.
fn run(q: &mut QuorumQueue, steps: &[Step], d: &mut Driver) -> Vec<Applied> {
    let mut out = Vec::new();
    for s in steps {
        let (command, fresh) = match s {
            Step::Wait(ms) => {
                d.time_ms += ms;
                continue;
            }
            Step::Do(c) => {
                // A connection that goes comes back as new channels: new incarnations.
                let gone = |o: &Owner| match c {
                    Command::Down { owner } => o == owner,
                    Command::NodeRemoved { node } => o.node == *node,
                    _ => false,
                };
                for (conn, (incarnation, last)) in d.publishers.iter_mut() {
                    if gone(&owner_of(*conn)) {
                        *incarnation += 1;
                        *last = 0;
                    }
                }
                (c.clone(), false)
            }
            Step::Publish { conn, confirm: false, header, .. } => {
                let _ = conn;
                (Command::Enqueue { publish: None, header: *header }, true)
            }
            Step::Publish { conn, confirm: true, mode, header } => {
                let (incarnation, last) = d.publishers.entry(*conn).or_default();
                let seq = match mode {
                    0 => *last + 1,
                    1 if *last > 0 => *last,
                    _ => *last + 2,
                };
                if seq == *last + 1 {
                    *last = seq;
                }
                let publisher = PublisherId { owner: owner_of(*conn), channel: 1, incarnation: *incarnation };
                let publish = Publish { publisher, seq, oldest_unanswered: seq.saturating_sub(3).max(1) };
                (Command::Enqueue { publish: Some(publish), header: *header }, *mode == 0)
            }
        };
        d.index += 1;
        let applied = q.apply(Meta { index: d.index, time_ms: d.time_ms }, command);
        if fresh && applied.0 == Reply::Enqueued {
            d.accepted += 1;
        }
        out.push(applied);
    }
    out
}

/// Every message the queue was given is in exactly one place: ready, unacked, settled,
/// dead-lettered or purged.
fn check_invariants(q: &QuorumQueue, purged: u64) -> Result<(), TestCaseError> {
    let ready: Vec<&MsgRef> = q.lanes.values().flat_map(Lane::iter).collect();
    prop_assert_eq!(ready.len() as u64, q.ready);
    prop_assert_eq!(ready.iter().map(|m| m.size).sum::<u64>(), q.ready_bytes);
    prop_assert!(q.lanes.values().all(|l| !l.is_empty()), "no empty lane is kept");
    let unacked = q.unacked();
    let live = q.live_indexes();
    let delayed = q.delayed();
    let pending = q.dead_letters_pending();
    prop_assert_eq!(live.len(), ready.len() + unacked + delayed + pending, "a message is in two places");
    let s = q.stats();
    let dead: u64 = s.dead_lettered.iter().sum();
    // Dead letters waiting for their confirm are counted once, among the dead.
    prop_assert_eq!(s.enqueued, q.ready + (unacked + delayed) as u64 + s.settled + dead + purged);
    prop_assert!(s.dead_letters_confirmed + pending as u64 <= dead);
    if q.config.single_active_consumer {
        prop_assert!(q.consumers().iter().filter(|(_, c)| c.status == Status::Active).count() <= 1);
    }
    if !q.config.reject_publish {
        prop_assert!(!q.over_limit());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Three replicas apply the same log: one from the start, two restored from snapshots
    /// (serialized and read back) taken at other points. All end in the same state, and
    /// from the later snapshot on they answer and act alike.
    #[test]
    fn replicas_agree_and_a_snapshot_plus_the_tail_equals_replay(
        config in any_config(),
        steps in proptest::collection::vec(any_step(), 1..120),
        cut_a in 0..120usize,
        cut_b in 0..120usize,
    ) {
        let (cut_a, cut_b) = (cut_a.min(steps.len()), cut_b.min(steps.len()));
        let (early, late) = (cut_a.min(cut_b), cut_a.max(cut_b));
        let mut full = QuorumQueue::new(config.clone(), 0);
        let mut driver = Driver::default();
        let mut purged = 0;
        let mut history = Vec::new();
        for s in &steps {
            let out = run(&mut full, std::slice::from_ref(s), &mut driver);
            for (reply, fx) in &out {
                if let Reply::Purged(n) = reply {
                    purged += n;
                }
                // A delivery never takes a consumer past its prefetch (a lowered prefetch
                // may leave it above until it settles).
                for e in fx {
                    if let Effect::Deliver { consumer, .. } = e {
                        let c = full.consumers().get(consumer);
                        prop_assert!(c.is_some_and(|c| c.prefetch == 0 || c.checked_out().count() <= c.prefetch as usize));
                        prop_assert!(c.is_some_and(|c| c.status == Status::Active), "a delivery to a consumer not active");
                    }
                }
            }
            history.extend(out);
            check_invariants(&full, purged)?;
            // Every publish the queue said it took is in it (or was, and went somewhere
            // counted): a repeat never stands in for a message that was not enqueued.
            prop_assert_eq!(driver.accepted, full.stats().enqueued);
            prop_assert_eq!(full.check(), Ok(()));
        }

        let replay = |cut: usize| -> Result<(QuorumQueue, Vec<Applied>), TestCaseError> {
            let mut q = QuorumQueue::new(config.clone(), 0);
            let mut driver = Driver::default();
            run(&mut q, &steps[..cut], &mut driver);
            let json = serde_json::to_string(&q).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut restored: QuorumQueue = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&restored, &q);
            prop_assert_eq!(restored.check(), Ok(()));
            let tail = run(&mut restored, &steps[cut..], &mut driver);
            Ok((restored, tail))
        };
        let (a, _) = replay(early)?;
        let (b, tail) = replay(late)?;
        prop_assert_eq!(&a, &full);
        prop_assert_eq!(&b, &full);
        let commands_before = steps[..late].iter().filter(|s| !matches!(s, Step::Wait(_))).count();
        prop_assert_eq!(&tail[..], &history[commands_before..]);
    }

    /// With one consumer taking and returning messages, a quorum queue hands them out in
    /// the order a classic queue does (priority, then publish order, returns back in place).
    #[test]
    fn delivery_order_equals_the_classic_queues(
        ops in proptest::collection::vec((0..3u8, 0..4u8, 0..8usize), 1..200),
    ) {
        use std::sync::Arc;
        let spec = crate::queue::QueueSpec {
            durable: true,
            auto_delete: false,
            exclusive_owner: None,
            arguments: Default::default(),
        };
        let args = crate::queue_args::QueueArgs { max_priority: Some(3), ..Default::default() };
        #[allow(clippy::disallowed_methods)] // the classic queue's constructor wants an Instant
        let now = std::time::Instant::now();
        let mut classic = crate::queue::Queue::new(1, "q".into(), spec, args, now);
        let mut log = Log::new(Config::default());
        let g = getter(1);
        // Held by the consumer: classic messages, and the quorum delivery ids beside them.
        let mut held: Vec<(crate::message::QueuedMessage, u64)> = Vec::new();
        for (op, priority, pick) in ops {
            match op {
                0 => {
                    log.publish_with(Header { size: 1, priority, ttl_ms: None, delivery_count: 0, delay_ms: None });
                    let mut m = crate::message::Message {
                        exchange: String::new(),
                        routing_key: "q".into(),
                        properties: Default::default(),
                        body: bytes::Bytes::from_static(b"x"),
                    };
                    m.properties.priority = Some(priority);
                    // The quorum queue orders by log index: the classic seq follows it.
                    let seq = log.index;
                    classic.reserve_seq(seq);
                    classic.push(crate::message::QueuedMessage::new(seq, Arc::new(m), None, 0));
                }
                1 => {
                    let (reply, _) = log.apply(Command::Dequeue { consumer: g.clone(), settle: false });
                    let quorum = match reply {
                        Reply::Dequeued { delivery, .. } => delivery,
                        other => return Err(TestCaseError::fail(format!("{other:?}"))),
                    };
                    let got = classic.pop();
                    prop_assert_eq!(
                        got.as_ref().map(|m| (m.seq, m.redelivered)),
                        quorum.map(|d| (d.msg.index, d.redelivered))
                    );
                    if let (Some(m), Some(d)) = (got, quorum) {
                        held.push((m, d.id));
                    }
                }
                _ if !held.is_empty() => {
                    let (m, id) = held.remove(pick % held.len());
                    classic.requeue(m);
                    log.apply(Command::Return { consumer: g.clone(), ids: vec![id], failed: false, delay_ms: None });
                }
                _ => {}
            }
            prop_assert_eq!(classic.len() as u64, log.q.ready());
        }
    }
}

#[test]
fn a_return_with_a_delay_holds_the_message_out_until_then() {
    let mut log = Log::new(Config::default());
    let a = consumer(1, "a");
    log.consume(&a, 0);
    log.publish(3);
    log.publish(4);
    let (_, fx) =
        log.apply(Command::Return { consumer: a.clone(), ids: vec![0], failed: true, delay_ms: Some(500) });
    assert!(delivered(&fx, &a).is_empty(), "held out");
    assert_eq!(fx, [Effect::Timer { at_ms: 1_500 }]);
    assert_eq!((log.q.ready(), log.q.delayed(), log.q.unacked()), (0, 1, 1));
    assert_eq!(log.q.live_indexes().len(), 2, "a delayed message's entry is kept");
    log.time_ms = 1_499;
    assert!(delivered(&log.apply(Command::Tick).1, &a).is_empty());
    log.time_ms = 1_500;
    let fx = log.apply(Command::Tick).1;
    assert_eq!(delivered(&fx, &a), [(2, 2, true)], "back, redelivered, in its place");
    let count = log
        .q
        .consumers()
        .get(&a)
        .and_then(|c| c.checked_out().find(|(id, _)| **id == 2))
        .map(|(_, m)| m.delivery_count);
    assert_eq!(count, Some(1));
}

#[test]
fn a_consumer_whose_delivery_waits_past_the_timeout_is_cancelled_and_its_messages_return() {
    let mut log = Log::new(Config { consumer_timeout_ms: Some(1_000), ..Config::default() });
    let (a, b) = (consumer(1, "a"), consumer(2, "b"));
    log.consume(&a, 1);
    let (_, fx) = log.publish(1);
    assert_eq!(delivered(&fx, &a).len(), 1);
    assert!(fx.contains(&Effect::Timer { at_ms: 2_000 }), "{fx:?}");
    log.consume(&b, 0);
    log.time_ms = 2_000;
    let (_, fx) = log.apply(Command::Tick);
    assert!(fx.contains(&Effect::ConsumerTimedOut { consumer: a.clone() }), "{fx:?}");
    assert_eq!(delivered(&fx, &b), [(2, 0, true)], "its message went to the other consumer");
    assert!(log.q.consumers().get(&a).is_none());
}

#[test]
fn at_least_once_dead_letters_stay_the_queues_until_confirmed() {
    let config = Config {
        max_length: Some(2),
        reject_publish: true,
        dead_letter: true,
        dead_letter_at_least_once: true,
        ..Config::default()
    };
    let mut log = Log::new(config);
    log.publish(1);
    let g = getter(1);
    log.apply(Command::Dequeue { consumer: g.clone(), settle: false });
    let (_, fx) = log.apply(Command::Discard { consumer: g, ids: vec![0] });
    assert_eq!(dead(&fx), [(Reason::Rejected, 1)]);
    assert_eq!(log.q.dead_letters_pending(), 1);
    assert!(log.q.live_indexes().contains(&1), "its entry is kept until confirmed");
    assert_eq!(log.publish(1).0, Reply::Enqueued);
    assert_eq!(log.publish(1).0, Reply::Rejected, "the unconfirmed dead letter counts towards the length");
    // A new leader publishes it again.
    assert_eq!(dead(&log.q.resend()), [(Reason::Rejected, 1)]);
    log.apply(Command::DeadLettered { indexes: vec![1] });
    assert_eq!(log.q.dead_letters_pending(), 0);
    assert_eq!(log.publish(1).0, Reply::Enqueued);

    // Without reject-publish, at most once, as RabbitMQ.
    let mut log =
        Log::new(Config { dead_letter: true, dead_letter_at_least_once: true, ..Config::default() });
    log.publish(1);
    let g = getter(1);
    log.apply(Command::Dequeue { consumer: g.clone(), settle: false });
    log.apply(Command::Discard { consumer: g, ids: vec![0] });
    assert_eq!(log.q.dead_letters_pending(), 0);
}

#[test]
fn a_node_declared_down_keeps_its_consumers_messages_until_it_is_back_or_removed() {
    let mut log = Log::new(Config::default());
    let far = ConsumerId { owner: Owner { node: 2, conn: 7 }, channel: 1, tag: "far".into() };
    let near = consumer(1, "near");
    log.consume(&far, 1);
    log.publish(1);
    log.consume(&near, 0);
    let (_, fx) = log.apply(Command::NodeDown { node: 2 });
    assert!(fx.is_empty(), "its message is not handed to another: the node may only be cut off");
    assert_eq!(log.q.consumers().get(&far).map(|c| c.status), Some(Status::Suspected));
    let (_, fx) = log.publish(1);
    assert_eq!(delivered(&fx, &near).len(), 1, "new messages go to consumers that are up");
    log.apply(Command::NodeUp { node: 2 });
    assert_eq!(
        log.q.consumers().get(&far).map(|c| (c.status, c.checked_out().count())),
        Some((Status::Active, 1))
    );
    log.apply(Command::NodeDown { node: 2 });
    let (_, fx) = log.apply(Command::NodeRemoved { node: 2 });
    assert_eq!(delivered(&fx, &near), [(2, 1, true)], "removed: its message goes to the consumer that is up");
}

#[test]
fn a_timed_out_consumer_counts_as_a_use_and_its_channel_learns_it_from_its_next_settle() {
    let config = Config { consumer_timeout_ms: Some(1_000), expires: Some(500), ..Config::default() };
    let mut log = Log::new(config);
    let a = consumer(1, "a");
    log.consume(&a, 1);
    log.publish(1);
    log.time_ms = 2_000;
    let (_, fx) = log.apply(Command::Tick);
    assert!(fx.contains(&Effect::ConsumerTimedOut { consumer: a.clone() }));
    assert!(!fx.contains(&Effect::Expired), "the queue was in use until now: {fx:?}");
    assert_eq!(log.q.ready(), 1, "its message is back");
    let (reply, _) = log.apply(Command::Settle { consumer: a, ids: vec![0] });
    assert_eq!(reply, Reply::NoConsumer);
}

#[test]
fn a_single_active_consumer_on_a_node_declared_down_gives_its_messages_back_first() {
    let mut log = Log::new(Config { single_active_consumer: true, ..Config::default() });
    let far = ConsumerId { owner: Owner { node: 2, conn: 7 }, channel: 1, tag: "far".into() };
    let near = consumer(1, "near");
    log.consume(&far, 1);
    log.consume(&near, 1);
    log.publish(1);
    log.publish(1);
    let (_, fx) = log.apply(Command::NodeDown { node: 2 });
    assert_eq!(delivered(&fx, &near), [(3, 0, true)], "the oldest first, not the next");
    log.apply(Command::NodeUp { node: 2 });
    assert_eq!(log.q.consumers().get(&far).map(|c| c.status), Some(Status::Waiting));
    assert_eq!(log.q.check(), Ok(()));
}

#[test]
fn turning_at_least_once_off_lets_the_kept_dead_letters_go() {
    let config = Config {
        max_length: Some(5),
        reject_publish: true,
        dead_letter: true,
        dead_letter_at_least_once: true,
        ..Config::default()
    };
    let mut log = Log::new(config.clone());
    log.publish(1);
    let g = getter(1);
    log.apply(Command::Dequeue { consumer: g.clone(), settle: false });
    log.apply(Command::Discard { consumer: g, ids: vec![0] });
    assert_eq!(log.q.dead_letters_pending(), 1);
    log.apply(Command::Configure(Config { dead_letter_at_least_once: false, ..config }));
    assert_eq!(log.q.dead_letters_pending(), 0);
    assert!(log.q.resend().is_empty());
}
