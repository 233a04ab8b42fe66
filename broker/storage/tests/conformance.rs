//! One suite for every `Storage`: the in-memory store and the file store must recover the
//! same state from the same writes. "Restart" is reopening the same backing (a clone of the
//! memory store; the same directory without a sync, as after kill -9: the writes are in the
//! page cache).

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use warren_codec::{BasicProperties, FieldTable, FieldValue};
use warren_core::message::Message;
use warren_core::storage::{
    BindingRecord, EntryState, ExchangeRecord, MemoryStore, MetaOp, QueueRecord, Recovered, Storage,
    StoreRef, StoredEntry,
};
use warren_storage::{FileStore, Options, RecoveryReport, Syncer};

/// Something that can be reopened, as after a restart.
trait Backing {
    fn open(&mut self) -> Box<dyn Storage>;
}

struct Memory(MemoryStore);

impl Backing for Memory {
    fn open(&mut self) -> Box<dyn Storage> {
        Box::new(self.0.clone())
    }
}

struct Files(tempfile::TempDir, Options, Option<Syncer>, RecoveryReport);

impl Backing for Files {
    fn open(&mut self) -> Box<dyn Storage> {
        let (store, syncer) = FileStore::open(self.0.path(), self.1).expect("open");
        self.2 = Some(syncer);
        self.3 = store.report().clone();
        Box::new(store)
    }
}

impl Files {
    /// Syncs, which deletes the segments the store found dead; returns how many.
    fn sync(&mut self) -> u64 {
        let Some(syncer) = self.2.as_mut() else {
            return 0;
        };
        let deleted = syncer.sync(true).expect("sync").deleted;
        // As the server's syncer thread does after each round.
        syncer.prepare_spare().expect("spare");
        deleted
    }

    fn segment_files(&self) -> usize {
        std::fs::read_dir(self.0.path().join("segments")).expect("dir").count()
    }
}

fn files(segment_size: usize) -> Files {
    Files(
        tempfile::tempdir().expect("tempdir"),
        Options { segment_size, salvage: false },
        None,
        RecoveryReport::default(),
    )
}

fn backings() -> Vec<(&'static str, Box<dyn Backing>)> {
    vec![("memory", Box::new(Memory(MemoryStore::new()))), ("files", Box::new(files(4096)))]
}

fn message(body: &[u8]) -> Message {
    let mut headers = FieldTable::new();
    headers.insert("k".into(), FieldValue::str("v"));
    Message {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        properties: Box::new(BasicProperties {
            delivery_mode: Some(2),
            headers: Some(headers),
            ..Default::default()
        }),
        body: Bytes::copy_from_slice(body),
    }
}

fn queue(id: u64, name: &str) -> MetaOp {
    queue_in("/", id, name)
}

fn queue_in(vhost: &str, id: u64, name: &str) -> MetaOp {
    MetaOp::PutQueue(QueueRecord {
        id,
        vhost: vhost.into(),
        name: name.into(),
        auto_delete: false,
        arguments: FieldTable::new(),
    })
}

/// What recovery returned, without where each store keeps things and without the clean flag.
fn normal(mut r: Recovered) -> Recovered {
    for e in &mut r.entries {
        e.at = StoreRef::default();
    }
    r.clean = false;
    r
}

#[test]
fn entries_survive_a_restart_in_order_with_their_state() {
    for (name, mut b) in backings() {
        let mut s = b.open();
        s.recover().expect("recover");
        s.meta(&queue(1, "q")).expect("meta");
        let mut refs = Vec::new();
        for seq in 0..5u64 {
            let state = EntryState { enqueued_ms: seq, expires_at_ms: Some(100 + seq), ..Default::default() };
            let (at, body) = s.put(1, seq, &message(&[seq as u8; 3]), &state, None).expect("put");
            if let Some(body) = body {
                assert_eq!(&body[..], &[seq as u8; 3], "{name}: the stored body is the message's");
            }
            refs.push(at);
        }
        s.remove(1, 1, refs[1]).expect("remove");
        s.set_delivery_count(1, 3, refs[3], 2).expect("count");
        drop(s);
        let r = b.open().recover().expect("recover");
        let got: Vec<_> = r.entries.iter().map(|e| (e.queue, e.seq, e.state.delivery_count)).collect();
        assert_eq!(got, [(1, 0, 0), (1, 2, 0), (1, 3, 2), (1, 4, 0)], "{name}");
        assert_eq!(r.entries[0].state.expires_at_ms, Some(100), "{name}");
        assert_eq!(*r.entries[1].message, message(&[2; 3]), "{name}");
        assert_eq!(r.queues.len(), 1, "{name}");
    }
}

#[test]
fn a_rewrite_supersedes_the_entry() {
    for (name, mut b) in backings() {
        let mut s = b.open();
        s.recover().expect("recover");
        s.meta(&queue(1, "q")).expect("meta");
        let (at, _) = s.put(1, 0, &message(b"first"), &EntryState::default(), None).expect("put");
        let later = EntryState { ready_at_ms: Some(5_000), delivery_count: 1, ..Default::default() };
        s.put(1, 0, &message(b"second"), &later, Some(at)).expect("rewrite");
        drop(s);
        let r = b.open().recover().expect("recover");
        assert_eq!(r.entries.len(), 1, "{name}");
        assert_eq!(r.entries[0].state, later, "{name}");
        assert_eq!(r.entries[0].message.body, Bytes::from_static(b"second"), "{name}");
    }
}

#[test]
fn topology_survives_and_a_deleted_queue_takes_its_entries_and_bindings() {
    for (name, mut b) in backings() {
        let mut s = b.open();
        s.recover().expect("recover");
        let x = ExchangeRecord {
            vhost: "/".into(),
            name: "x".into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        };
        let bind = |q: &str| BindingRecord {
            vhost: "/".into(),
            source: "x".into(),
            destination: q.into(),
            to_queue: true,
            key: "#".into(),
            arguments: FieldTable::new(),
        };
        s.meta(&MetaOp::PutExchange(x.clone())).expect("meta");
        s.meta(&queue(1, "a")).expect("meta");
        s.meta(&queue(2, "b")).expect("meta");
        s.meta(&MetaOp::Bind(bind("a"))).expect("meta");
        s.meta(&MetaOp::Bind(bind("b"))).expect("meta");
        let (at, _) = s.put(1, 0, &message(b"a"), &EntryState::default(), None).expect("put");
        s.put(2, 0, &message(b"b"), &EntryState::default(), None).expect("put");
        s.meta(&MetaOp::DeleteQueue(1)).expect("delete");
        // An ack for the deleted queue's message arriving afterwards changes nothing.
        s.remove(1, 0, at).expect("late remove");
        drop(s);
        let r = b.open().recover().expect("recover");
        assert_eq!(r.exchanges, [x], "{name}");
        assert_eq!(r.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["b"], "{name}");
        assert_eq!(r.bindings, [bind("b")], "{name}");
        assert_eq!(r.entries.iter().map(|e| e.queue).collect::<Vec<_>>(), [2], "{name}");
        assert!(r.next_queue_id >= 3, "{name}: ids are never reused");
    }
}

#[test]
fn vhosts_keep_their_own_topology() {
    for (name, mut b) in backings() {
        let mut s = b.open();
        s.recover().expect("recover");
        let x = |vhost: &str| ExchangeRecord {
            vhost: vhost.into(),
            name: "x".into(),
            kind: "fanout".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        };
        let bind = |vhost: &str| BindingRecord {
            vhost: vhost.into(),
            source: "x".into(),
            destination: "q".into(),
            to_queue: true,
            key: String::new(),
            arguments: FieldTable::new(),
        };
        // The same names in two vhosts are two exchanges, two queues, two bindings.
        for (id, vhost) in [(1, "/"), (2, "other")] {
            s.meta(&MetaOp::PutExchange(x(vhost))).expect("meta");
            s.meta(&queue_in(vhost, id, "q")).expect("meta");
            s.meta(&MetaOp::Bind(bind(vhost))).expect("meta");
        }
        // Deleting one vhost's exchange and queue leaves the other's alone.
        s.meta(&MetaOp::DeleteExchange { vhost: "/".into(), name: "x".into() }).expect("meta");
        s.meta(&MetaOp::DeleteQueue(1)).expect("meta");
        drop(s);
        let r = b.open().recover().expect("recover");
        assert_eq!(r.exchanges, [x("other")], "{name}");
        assert_eq!(
            r.queues.iter().map(|q| (q.vhost.as_str(), q.id)).collect::<Vec<_>>(),
            [("other", 2)],
            "{name}"
        );
        assert_eq!(r.bindings, [bind("other")], "{name}");
    }
}

/// One step of a random workload.
#[derive(Debug, Clone)]
enum Op {
    Put { queue: u64, size: usize },
    Remove { pick: usize },
    Count { pick: usize, count: u32 },
    Rewrite { pick: usize },
    DeleteQueue { queue: u64 },
    Sync,
    Restart,
    CleanRestart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..4u64, 0..900usize).prop_map(|(queue, size)| Op::Put { queue, size }),
        4 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => (any::<usize>(), 1..9u32).prop_map(|(pick, count)| Op::Count { pick, count }),
        1 => any::<usize>().prop_map(|pick| Op::Rewrite { pick }),
        1 => (1..4u64).prop_map(|queue| Op::DeleteQueue { queue }),
        1 => Just(Op::Sync),
        1 => Just(Op::Restart),
        1 => Just(Op::CleanRestart),
    ]
}

/// Live entries as the test tracks them: (queue, seq) and where each store keeps it.
struct Live(Vec<(u64, u64, StoreRef, StoreRef)>);

impl Live {
    fn take(&mut self, pick: usize) -> Option<(u64, u64, StoreRef, StoreRef)> {
        (!self.0.is_empty()).then(|| self.0.remove(pick % self.0.len()))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The file store, across segment roll-overs, deletions and restarts, recovers exactly
    /// what the in-memory store does.
    #[test]
    fn the_file_store_recovers_what_the_memory_store_does(ops in proptest::collection::vec(op(), 1..120)) {
        let mut mem = Memory(MemoryStore::new());
        let mut disk = files(2048);
        let (mut m, mut f) = (mem.open(), disk.open());
        m.recover().expect("recover");
        f.recover().expect("recover");
        let mut declared = [false; 4];
        let mut next_id = 1;
        let mut ids = [0u64; 4];
        let mut seqs = 0u64;
        let mut live = Live(Vec::new());
        for op in ops {
            match op {
                Op::Put { queue, size } => {
                    let q = queue as usize;
                    if !declared[q] {
                        ids[q] = next_id;
                        next_id += 1;
                        declared[q] = true;
                        let rec = self::queue(ids[q], &format!("q{q}"));
                        m.meta(&rec).expect("meta");
                        f.meta(&rec).expect("meta");
                    }
                    seqs += 1;
                    let msg = message(&vec![seqs as u8; size]);
                    let state = EntryState { enqueued_ms: seqs, ..Default::default() };
                    let (a, _) = m.put(ids[q], seqs, &msg, &state, None).expect("put");
                    let (b, _) = f.put(ids[q], seqs, &msg, &state, None).expect("put");
                    live.0.push((ids[q], seqs, a, b));
                }
                Op::Remove { pick } => {
                    if let Some((q, seq, a, b)) = live.take(pick) {
                        m.remove(q, seq, a).expect("remove");
                        f.remove(q, seq, b).expect("remove");
                    }
                }
                Op::Count { pick, count } => {
                    if let Some(e @ (q, seq, a, b)) = live.take(pick) {
                        m.set_delivery_count(q, seq, a, count).expect("count");
                        f.set_delivery_count(q, seq, b, count).expect("count");
                        live.0.push(e);
                    }
                }
                Op::Rewrite { pick } => {
                    if let Some((q, seq, a, b)) = live.take(pick) {
                        let state = EntryState { ready_at_ms: Some(seq), ..Default::default() };
                        let msg = message(b"rewritten");
                        let (a, _) = m.put(q, seq, &msg, &state, Some(a)).expect("rewrite");
                        let (b, _) = f.put(q, seq, &msg, &state, Some(b)).expect("rewrite");
                        live.0.push((q, seq, a, b));
                    }
                }
                Op::DeleteQueue { queue } => {
                    let q = queue as usize;
                    if declared[q] {
                        declared[q] = false;
                        m.meta(&MetaOp::DeleteQueue(ids[q])).expect("meta");
                        f.meta(&MetaOp::DeleteQueue(ids[q])).expect("meta");
                        live.0.retain(|e| e.0 != ids[q]);
                    }
                }
                Op::Sync => {
                    disk.sync();
                }
                Op::CleanRestart => {
                    // A clean stop: the file store indexes what the memory store holds.
                    let rm = m.recover().expect("state");
                    let queues: Vec<u64> = rm.queues.iter().map(|q| q.id).collect();
                    let entries: Vec<StoredEntry> = rm
                        .entries
                        .iter()
                        .map(|e| {
                            let at = live.0.iter().find(|l| (l.0, l.1) == (e.queue, e.seq)).map(|l| l.3);
                            StoredEntry { at: at.expect("tracked"), ..e.clone() }
                        })
                        .collect();
                    f.checkpoint(&queues, &entries).expect("checkpoint");
                    disk.sync();
                    drop((m, f));
                    FileStore::mark_clean(disk.0.path()).expect("clean");
                    m = mem.open();
                    f = disk.open();
                    prop_assert!(disk.3.from_index, "{:?}", disk.3);
                    let (rm, rf) = (m.recover().expect("recover"), f.recover().expect("recover"));
                    for e in &mut live.0 {
                        if let Some(r) = rf.entries.iter().find(|r| (r.queue, r.seq) == (e.0, e.1)) {
                            e.3 = r.at;
                        }
                    }
                    prop_assert_eq!(normal(rm), normal(rf));
                }
                Op::Restart => {
                    drop((m, f));
                    m = mem.open();
                    f = disk.open();
                    let (rm, rf) = (m.recover().expect("recover"), f.recover().expect("recover"));
                    // The file store hands out new places for what it recovered.
                    for e in &mut live.0 {
                        if let Some(r) = rf.entries.iter().find(|r| (r.queue, r.seq) == (e.0, e.1)) {
                            e.3 = r.at;
                        }
                    }
                    prop_assert_eq!(normal(rm), normal(rf));
                }
            }
        }
        drop((m, f));
        let (rm, rf) = (mem.open().recover().expect("recover"), disk.open().recover().expect("recover"));
        prop_assert_eq!(normal(rm), normal(rf));
    }
}

#[test]
fn recovered_bodies_are_views_of_the_log() {
    let mut b = files(1 << 20);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "q")).expect("meta");
    s.put(1, 0, &message(&[7; 10_000]), &EntryState::default(), None).expect("put");
    drop(s);
    let r = b.open().recover().expect("recover");
    assert_eq!(r.entries[0].message.body, Bytes::from(vec![7; 10_000]));
    assert!(Arc::strong_count(&r.entries[0].message) == 1);
}

#[test]
fn segments_are_deleted_once_their_entries_are_gone_but_not_before_what_they_cancel() {
    let mut b = files(1024);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "q")).expect("meta");
    let msg = message(&[1; 300]);
    // The first message stays queued for the whole test, pinning segment 1.
    let (pinned, _) = s.put(1, 0, &msg, &EntryState::default(), None).expect("put");
    let mut refs = Vec::new();
    for seq in 1..40 {
        refs.push((seq, s.put(1, seq, &msg, &EntryState::default(), None).expect("put").0));
    }
    let before = b.segment_files();
    assert!(before > 8, "the puts filled {before} segments");
    for (seq, at) in refs {
        s.remove(1, seq, at).expect("remove");
    }
    assert!(b.sync() > 0, "dead segments are deleted at the sync");
    let after = b.segment_files();
    assert!(after < before / 2, "{after} of {before} segments left");
    drop(s);
    let r = b.open().recover().expect("recover");
    assert_eq!(r.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [0], "nothing acked came back");
    let mut s = b.open();
    let r = s.recover().expect("recover");
    s.remove(1, 0, r.entries[0].at).expect("remove");
    b.sync();
    drop(s);
    assert!(b.open().recover().expect("recover").entries.is_empty());
    b.sync();
    // The active segment, and the next one the syncer made ahead of need.
    assert_eq!(b.segment_files(), 2, "only the active segment and its successor are left");
    let _ = pinned;
}

#[test]
fn one_old_entry_pins_every_later_segment_until_compaction_moves_it() {
    let mut b = files(4096);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "q")).expect("meta");
    let kept = message(b"kept for days");
    let state = EntryState { delivery_count: 3, enqueued_ms: 7, ..Default::default() };
    let (mut pinned, _) = s.put(1, 0, &kept, &state, None).expect("put");
    // Publish, and ack what was published 20 messages earlier: every segment's removes refer
    // to the segment before it, a chain that ends at the kept entry's segment.
    let msg = message(&[5; 300]);
    let mut window = std::collections::VecDeque::new();
    for seq in 1..1000 {
        window.push_back((seq, s.put(1, seq, &msg, &EntryState::default(), None).expect("put").0));
        if window.len() > 20 {
            let (seq, at) = window.pop_front().expect("window");
            s.remove(1, seq, at).expect("remove");
        }
    }
    for (seq, at) in window {
        s.remove(1, seq, at).expect("remove");
    }
    b.sync();
    let pinned_count = b.segment_files();
    assert!(pinned_count > 50, "without compaction the chain keeps {pinned_count} segments");
    assert!(!s.should_move(pinned), "nothing is planned before plan_compaction");
    assert!(s.plan_compaction(1 << 20), "a log that is nearly all dead is compacted");
    assert!(s.should_move(pinned));
    let (moved, body) = s.put(1, 0, &kept, &state, Some(pinned)).expect("move");
    assert_eq!(body.as_deref(), Some(&b"kept for days"[..]));
    pinned = moved;
    assert!(!s.should_move(pinned), "the moved entry is at the head now");
    b.sync();
    let after = b.segment_files();
    assert!(after <= 3, "{after} segments left of {pinned_count}");
    assert!(!s.plan_compaction(1 << 20), "nothing left to compact");
    drop(s);
    let r = b.open().recover().expect("recover");
    assert_eq!(seqs(&r), [0], "the kept entry, and nothing acked, came back");
    assert_eq!(r.entries[0].state, state);
    assert_eq!(r.entries[0].message.body, kept.body);
}

#[test]
fn a_segment_whose_entries_are_not_moved_is_not_planned_again_at_once() {
    let mut b = files(4096);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "q")).expect("meta");
    let (pinned, _) = s.put(1, 0, &message(b"held elsewhere"), &EntryState::default(), None).expect("put");
    let msg = message(&[5; 300]);
    let mut window = std::collections::VecDeque::new();
    for seq in 1..300 {
        window.push_back((seq, s.put(1, seq, &msg, &EntryState::default(), None).expect("put").0));
        if window.len() > 20 {
            let (seq, at) = window.pop_front().expect("window");
            s.remove(1, seq, at).expect("remove");
        }
    }
    assert!(s.plan_compaction(1 << 20) && s.should_move(pinned));
    // The broker could not move it (say its queue failed to restore): planning the segments
    // behind it would only write them again and again.
    assert!(!s.plan_compaction(1 << 20), "a stuck oldest segment stops the planning");
    assert!(!s.should_move(pinned));
}

#[test]
fn rewriting_an_entry_of_a_deleted_queue_does_not_uncount_another_queues_entry() {
    let mut b = files(4096);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "gone")).expect("meta");
    s.meta(&queue(2, "kept")).expect("meta");
    let (orphan, _) = s.put(1, 0, &message(b"orphan"), &EntryState::default(), None).expect("put");
    s.put(2, 0, &message(b"kept"), &EntryState::default(), None).expect("put");
    s.meta(&MetaOp::DeleteQueue(1)).expect("delete");
    let msg = message(&[5; 300]);
    let churn = |s: &mut Box<dyn Storage>, seqs: std::ops::Range<u64>| {
        for seq in seqs {
            let (at, _) = s.put(2, seq, &msg, &EntryState::default(), None).expect("put");
            s.remove(2, seq, at).expect("remove");
        }
    };
    churn(&mut s, 1..20);
    // An unacked message of the deleted queue, written again in a later segment: the first
    // segment keeps its count, and with it the other queue's entry.
    s.put(1, 0, &message(b"orphan"), &EntryState::default(), Some(orphan)).expect("put");
    churn(&mut s, 20..60);
    b.sync();
    drop(s);
    let r = b.open().recover().expect("recover");
    assert_eq!(r.entries.iter().map(|e| (e.queue, e.seq)).collect::<Vec<_>>(), [(2, 0)]);
}

#[test]
fn a_log_that_is_mostly_live_is_not_compacted() {
    let mut b = files(4096);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "q")).expect("meta");
    let msg = message(&[5; 300]);
    let mut refs = Vec::new();
    for seq in 0..200 {
        refs.push(s.put(1, seq, &msg, &EntryState::default(), None).expect("put").0);
    }
    // A third acked: the rest is a backlog a consumer will get to, not garbage to copy.
    for (seq, at) in refs.iter().enumerate().step_by(3) {
        s.remove(1, seq as u64, *at).expect("remove");
    }
    assert!(!s.plan_compaction(u64::MAX));
    assert!(refs.iter().all(|at| !s.should_move(*at)));
}

/// A fresh store holding `n` one-kilobyte messages (message `i`'s body is `i` repeated) in
/// queue 1, still open.
fn writing(n: u64) -> (Files, Box<dyn Storage>) {
    let mut b = files(1 << 20);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "q")).expect("meta");
    for seq in 0..n {
        s.put(1, seq, &message(&[seq as u8; 1000]), &EntryState::default(), None).expect("put");
    }
    (b, s)
}

/// Flips an octet inside the third message's body in segment 1; the damaged bytes.
fn damage_third_body(b: &Files) -> Vec<u8> {
    let path = segment_path(b);
    let mut data = std::fs::read(&path).expect("read");
    let third = data.windows(1000).position(|w| w.iter().all(|&x| x == 2)).expect("third body");
    data[third + 10] ^= 0xff;
    std::fs::write(&path, &data).expect("write");
    data
}

/// Writes `n` one-kilobyte messages into a fresh store and returns the directory.
fn filled(n: u64) -> Files {
    let (mut b, s) = writing(n);
    drop(s);
    // Started again and written to: segment 1 is no longer the newest written, the one a
    // crash leaves torn. (The record is for a queue never declared: recovery drops it.)
    let mut s = b.open();
    s.recover().expect("recover");
    s.put(99, 0, &message(b"later"), &EntryState::default(), None).expect("put");
    drop(s);
    b
}

fn segment_path(b: &Files) -> std::path::PathBuf {
    b.0.path().join("segments").join("0000000000000001.seg")
}

fn seqs(r: &Recovered) -> Vec<u64> {
    r.entries.iter().map(|e| e.seq).collect()
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_rest_recovered() {
    let mut b = filled(5);
    // The last record is half written: its tail never reached the disk.
    let path = segment_path(&b);
    let mut data = std::fs::read(&path).expect("read");
    let last_end = data.iter().rposition(|&x| x != 0).expect("data") + 1;
    for x in &mut data[last_end - 400..last_end] {
        *x = 0;
    }
    std::fs::write(&path, &data).expect("write");
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("open");
    assert_eq!(store.report().truncated.len(), 1, "{:?}", store.report());
    assert!(store.report().damaged.is_empty());
    assert_eq!(seqs(&store.recover().expect("recover")), [0, 1, 2, 3]);
    drop(store);
    // Nothing is rewritten on the strength of a bad record: the bytes are as they were, and
    // the next start reads the same. (Segment 1 is not the newest here, so no crash could
    // have torn it: the cut is found again each time, never recorded as final.)
    assert_eq!(std::fs::read(&path).expect("read"), data);
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("open");
    assert_eq!(store.report().truncated.len(), 1, "{:?}", store.report());
    assert_eq!(seqs(&store.recover().expect("recover")), [0, 1, 2, 3]);
    drop(store);
    let _ = b.open();
}

/// Opening `b` fails with an error naming the segment and the offset; salvaging skips.
fn refused_then_salvaged(b: &Files, offset: usize) -> FileStore {
    let path = segment_path(b);
    let before = std::fs::read(&path).expect("read");
    let e = FileStore::open(b.0.path(), b.1).map(|_| ()).expect_err("damage stops the start");
    let text = e.to_string();
    assert!(text.contains("0000000000000001.seg") && text.contains(&format!("offset {offset}")), "{text}");
    assert!(text.contains("--salvage-storage"), "{text}");
    assert_eq!(std::fs::read(&path).expect("read"), before, "nothing changed on disk");
    let (store, _) = FileStore::open(b.0.path(), Options { salvage: true, ..b.1 }).expect("salvaged");
    store
}

#[test]
fn a_record_with_a_bad_checksum_stops_the_start_unless_salvaged() {
    let b = filled(5);
    // Records are ~1.1 KB each.
    let data = damage_third_body(&b);
    let first_len = u32::from_le_bytes(data[0..4].try_into().expect("len")) as usize;
    let mut store = refused_then_salvaged(&b, 2 * (8 + first_len));
    assert_eq!(store.report().damaged.len(), 1, "{:?}", store.report());
    assert!(store.report().damaged[0].contains("checksum"), "{:?}", store.report());
    assert_eq!(seqs(&store.recover().expect("recover")), [0, 1, 3, 4]);
}

#[test]
fn a_missing_metadata_log_leaves_no_queue_to_put_entries_in_and_is_recreated() {
    let b = filled(3);
    std::fs::remove_file(b.0.path().join("metadata.log")).expect("rm");
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("open");
    let r = store.recover().expect("recover");
    assert!(r.queues.is_empty() && r.entries.is_empty());
    assert!(r.next_queue_id >= 2, "the orphaned entries' queue id is still not reused");
    assert!(b.0.path().join("metadata.log").exists());
}

#[test]
fn a_clean_stop_is_told_apart_from_a_crash() {
    let mut b = filled(1);
    b.sync();
    FileStore::mark_clean(b.0.path()).expect("mark");
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("open");
    assert!(store.recover().expect("recover").clean);
    drop(store);
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("open");
    assert!(!store.recover().expect("recover").clean, "the marker is consumed at start");
}

/// A store with two queues holding small and large messages in several states, stopped
/// cleanly with an index written; returns it with what it held.
fn cleanly_stopped() -> (Files, Recovered) {
    let mut b = files(64 << 10);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "a")).expect("meta");
    s.meta(&queue(2, "b")).expect("meta");
    s.meta(&queue(3, "empty")).expect("meta");
    let mut refs = Vec::new();
    for seq in 0..40u64 {
        let size = if seq % 7 == 0 { 10_000 } else { 100 };
        let state = EntryState {
            enqueued_ms: seq,
            expires_at_ms: (seq % 3 == 0).then_some(1_000 + seq),
            ready_at_ms: (seq % 5 == 0).then_some(2_000 + seq),
            ..Default::default()
        };
        let q = 1 + seq % 2;
        refs.push((q, seq, s.put(q, seq, &message(&vec![seq as u8; size]), &state, None).expect("put").0));
    }
    for &(q, seq, at) in refs.iter().filter(|r| r.1 % 4 == 1) {
        s.remove(q, seq, at).expect("remove");
    }
    s.set_delivery_count(refs[2].0, refs[2].1, refs[2].2, 3).expect("count");
    drop(s);
    let mut s = b.open();
    let before = s.recover().expect("recover");
    s.checkpoint(&[1, 2, 3], &before.entries).expect("checkpoint");
    b.sync();
    drop(s);
    FileStore::mark_clean(b.0.path()).expect("clean");
    (b, before)
}

fn reopen(b: &Files) -> (RecoveryReport, Recovered) {
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("open");
    let report = store.report().clone();
    (report, store.recover().expect("recover"))
}

#[test]
fn after_a_clean_stop_the_queues_load_from_their_index() {
    let (b, before) = cleanly_stopped();
    let (report, after) = reopen(&b);
    assert!(report.from_index, "{report:?}");
    assert_eq!(report.records, 0, "the log was not replayed");
    assert_eq!(normal(after), normal(before));
    assert!(b.0.path().join("queues/0000000000000003.idx").exists(), "an empty queue has an index too");
}

#[test]
fn a_missing_index_is_rebuilt_from_the_log() {
    let (b, before) = cleanly_stopped();
    std::fs::remove_file(b.0.path().join("queues/0000000000000002.idx")).expect("rm");
    let (report, after) = reopen(&b);
    assert!(!report.from_index);
    assert!(report.index_unused.as_deref().is_some_and(|w| w.contains("no index for queue 2")), "{report:?}");
    assert_eq!(normal(after), normal(before));
}

#[test]
fn a_damaged_index_is_not_used() {
    let (b, before) = cleanly_stopped();
    let path = b.0.path().join("queues/0000000000000001.idx");
    let mut data = std::fs::read(&path).expect("read");
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&path, &data).expect("write");
    let (report, after) = reopen(&b);
    assert!(report.index_unused.as_deref().is_some_and(|w| w.contains("damaged")), "{report:?}");
    assert_eq!(normal(after), normal(before));
}

#[test]
fn an_index_behind_the_log_is_not_used() {
    let (mut b, _) = cleanly_stopped();
    // A run that wrote more, then stopped "cleanly" without a new index.
    let mut s = b.open();
    let mut now = s.recover().expect("recover");
    let (at, _) = s.put(1, 100, &message(b"late"), &EntryState::default(), None).expect("put");
    b.sync();
    drop(s);
    FileStore::mark_clean(b.0.path()).expect("clean");
    let (report, after) = reopen(&b);
    assert!(report.index_unused.is_some(), "{report:?}");
    assert!(after.entries.iter().any(|e| e.seq == 100), "the late entry is there");
    now.entries.push(StoredEntry {
        queue: 1,
        seq: 100,
        state: EntryState::default(),
        at,
        message: Arc::new(message(b"late")),
    });
    now.entries.sort_by_key(|e| (e.queue, e.seq));
    assert_eq!(normal(after), normal(now));
}

#[test]
fn a_damaged_length_when_salvaging_loses_one_record_not_the_rest_of_the_segment() {
    let b = filled(5);
    let path = segment_path(&b);
    let mut data = std::fs::read(&path).expect("read");
    // The second message's record starts where the first one's ends; wreck its length field.
    let first_len = u32::from_le_bytes(data[0..4].try_into().expect("len")) as usize;
    let second = 8 + first_len;
    data[second..second + 4].copy_from_slice(&0x00ff_ff00u32.to_le_bytes());
    std::fs::write(&path, &data).expect("write");
    let mut store = refused_then_salvaged(&b, second);
    assert_eq!(store.report().damaged.len(), 1, "{:?}", store.report());
    assert!(store.report().truncated.is_empty(), "{:?}", store.report());
    assert_eq!(seqs(&store.recover().expect("recover")), [0, 2, 3, 4]);
}

#[test]
fn a_damaged_metadata_log_stops_the_start_and_a_torn_one_keeps_its_bytes() {
    let mut b = files(1 << 20);
    let mut s = b.open();
    s.recover().expect("recover");
    for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
        s.meta(&queue(id, name)).expect("meta");
    }
    drop(s);
    let path = b.0.path().join("metadata.log");
    let good = std::fs::read(&path).expect("read");
    // An octet flipped in the second queue's record, with the third intact after it.
    let mut bad = good.clone();
    let at = bad.windows(1).rposition(|w| w == b"b").expect("b's name");
    bad[at] ^= 0xff;
    std::fs::write(&path, &bad).expect("write");
    let e = FileStore::open(b.0.path(), b.1).map(|_| ()).expect_err("damage stops the start");
    assert!(e.to_string().contains("metadata.log at offset"), "{e}");
    assert_eq!(std::fs::read(&path).expect("read"), bad, "the log is not rewritten");
    let (mut store, _) = FileStore::open(b.0.path(), Options { salvage: true, ..b.1 }).expect("salvaged");
    let names: Vec<String> =
        store.recover().expect("recover").queues.iter().map(|q| q.name.clone()).collect();
    assert!(names.contains(&"a".to_string()) && names.contains(&"c".to_string()), "{names:?}");
    assert_eq!(std::fs::read(b.0.path().join("metadata.log.before-recovery.0")).expect("kept"), bad);
    drop(store);

    // A torn last record (a crash mid-write) is no damage: the rest loads, the bytes are kept.
    std::fs::write(&path, &good[..good.len() - 3]).expect("write");
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("a torn tail is a crash, not damage");
    assert_eq!(store.report().truncated.len(), 1, "{:?}", store.report());
    assert_eq!(store.recover().expect("recover").queues.len(), 2);
    assert_eq!(
        std::fs::read(b.0.path().join("metadata.log.before-recovery.1")).expect("kept"),
        good[..good.len() - 3]
    );
}

#[test]
fn in_the_newest_segment_a_bad_record_is_a_torn_tail_whatever_follows() {
    let (mut b, s) = writing(5);
    // The syncer has made segment 2 ahead: empty, it is not where the run was writing.
    b.sync();
    assert!(b.segment_files() == 2, "a segment made ahead");
    drop(s);
    // Segment 1 is where the crashed run was writing: later sectors may have reached the disk
    // while an earlier one did not.
    damage_third_body(&b);
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("a crash is no reason to stop");
    assert_eq!(store.report().truncated.len(), 1, "{:?}", store.report());
    assert_eq!(seqs(&store.recover().expect("recover")), [0, 1]);
}

#[test]
fn the_syncer_makes_each_next_segment_ahead_so_the_writer_never_creates_one() {
    use std::os::unix::fs::MetadataExt;
    let mut b = files(4096);
    let mut s = b.open();
    s.recover().expect("recover");
    s.meta(&queue(1, "q")).expect("meta");
    let name = |id: u64| warren_storage::segment::file_name(id);
    let path = |b: &Files, file: String| b.0.path().join("segments").join(file);
    let spare =
        |b: &Files, id: u64| path(b, format!("{}{}", name(id), warren_storage::segment::SPARE_SUFFIX));
    // Segment 1 is active; 2 is made ahead by a sync round, under a name recovery ignores.
    assert!(!spare(&b, 2).exists());
    b.sync();
    assert!(spare(&b, 2).exists() && !path(&b, name(2)).exists(), "the successor is made ahead");
    let made_ahead = std::fs::metadata(spare(&b, 2)).map(|m| m.ino()).expect("spare");
    // Fill segment 1: the writer rolls into the file the syncer made, renamed, and asks for 3.
    let msg = message(&[7u8; 1000]);
    let mut seq = 0;
    while !path(&b, name(2)).exists() {
        s.put(1, seq, &msg, &EntryState::default(), None).expect("put");
        seq += 1;
        assert!(seq < 100, "never rolled over");
    }
    let live = std::fs::metadata(path(&b, name(2))).map(|m| m.ino()).expect("segment 2");
    assert_eq!(live, made_ahead, "segment 2 is the file the syncer made");
    assert!(!spare(&b, 2).exists());
    b.sync();
    assert!(spare(&b, 3).exists(), "and the next one is made ahead in turn");
    drop(s);
    // A spare left by a run is no part of the log, and goes at the next open.
    let r = b.open().recover().expect("recover");
    assert_eq!(r.entries.len(), seq as usize);
    assert!(r.entries.iter().any(|e| e.at.0 >> 32 == 2), "entries were written into segment 2");
    assert!(!spare(&b, 3).exists(), "a leftover spare is deleted at start");
}

#[test]
fn a_torn_tail_stays_cut_once_newer_segments_hold_records() {
    let (mut b, s) = writing(5);
    drop(s);
    // A crash tore the third record; the fourth and fifth reached the disk out of order.
    let path = segment_path(&b);
    let data = damage_third_body(&b);
    // The start after the crash cuts the tail there, and the broker writes on (segment 2).
    let mut s = b.open();
    assert_eq!(seqs(&s.recover().expect("recover")), [0, 1]);
    s.put(1, 9, &message(b"after"), &EntryState::default(), None).expect("put");
    drop(s);
    // Another crash: segment 1 is now older and read strictly, but its tail stays cut: no
    // damage, and nothing dropped at the first start comes back.
    let (mut store, _) = FileStore::open(b.0.path(), b.1).expect("the cut tail is no damage");
    assert!(store.report().damaged.is_empty(), "{:?}", store.report());
    assert_eq!(seqs(&store.recover().expect("recover")), [0, 1, 9]);
    assert_eq!(std::fs::read(&path).expect("read"), data, "the segment's bytes are as the crash left them");
}

#[test]
fn a_cut_record_is_read_only_as_far_as_an_offset_can_reach() {
    let (b, s) = writing(1);
    drop(s);
    // Megabytes of digits: read to 32 octets at most, no offset, and the start says so.
    let cut = b.0.path().join("segments").join("0000000000000001.seg.cut");
    std::fs::write(&cut, "9".repeat(8 << 20)).expect("write");
    let e = FileStore::open(b.0.path(), b.1).map(|_| ()).expect_err("refused");
    assert!(e.to_string().contains("not an offset"), "{e}");
}
