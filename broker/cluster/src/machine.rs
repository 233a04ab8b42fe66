//! The metadata group's state machine: openraft's side of it (what was applied, the
//! membership, snapshots on disk) around the machine the server gives ([`MetaMachine`]),
//! which holds the metadata itself and applies each proposal deterministically.
//!
//! The applied state is not written at each apply: a restart restores the last snapshot and
//! applies the log after it again, which the determinism makes the same state.

use std::collections::BTreeSet;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::files;
use crate::types::{Meta, Outcome, Proposal};

/// The snapshot's file name.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
/// Octets a snapshot may have.
pub const MAX_SNAPSHOT: u64 = 256 << 20;

/// The replicated metadata as the server keeps it. Each call sees the state every earlier
/// call left; `apply` must give every member the same answer for the same state.
pub trait MetaMachine: Send + Sync + 'static {
    /// Applies one proposal: the answer, or why the change was refused (and nothing changed).
    /// `live` is false for an entry this node's log held at its start (applied again after a
    /// restart, from the snapshot on): its state change is the same, but effects beyond the
    /// state that a later entry may have made obsolete (deleting stored data) are left out.
    /// `index` is the entry's log index, the same on every member.
    fn apply(&self, index: u64, body: &str, live: bool) -> Result<String, String>;
    /// Answers a peer's request of the machine's own ([`crate::Cluster::call`]): what it
    /// carries is the machine's business, as a proposal's body is.
    fn serve(
        &self,
        body: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;
    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Result<String, String>;
    /// Replaces the whole state with a snapshot's.
    fn restore(&self, data: &str) -> Result<(), String>;
    /// Empties the state: the group's log is about to be applied from its start (a node that
    /// served something of its own before it joined drops it).
    fn reset(&self);
}

/// What a snapshot holds: the names retired so far and the machine's state.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    retired: BTreeSet<String>,
    app: String,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<Meta>,
    /// A [`SnapshotData`], as JSON.
    data: String,
}

/// Gives `machine` and `retired` the state of snapshot data.
fn restore(
    machine: &dyn MetaMachine,
    retired: &std::sync::Mutex<BTreeSet<String>>,
    data: &str,
) -> Result<(), String> {
    let d: SnapshotData = serde_json::from_str(data).map_err(|e| format!("an unreadable snapshot: {e}"))?;
    machine.restore(&d.app)?;
    *retired.lock().unwrap_or_else(|p| p.into_inner()) = d.retired;
    Ok(())
}

/// The state machine openraft drives; clones share it.
#[derive(Clone)]
pub struct StateMachine {
    machine: Arc<dyn MetaMachine>,
    /// The last index the log held at this start: entries up to it are applied again.
    replayed_upto: Option<u64>,
    inner: Arc<Mutex<Inner>>,
    /// Names of members that left, never to be used again.
    retired: Arc<std::sync::Mutex<BTreeSet<String>>>,
    dir: PathBuf,
}

#[derive(Default)]
struct Inner {
    last_applied: Option<LogIdOf<Meta>>,
    membership: StoredMembershipOf<Meta>,
    snapshot: Option<(SnapshotMetaOf<Meta>, String)>,
}

impl StateMachine {
    /// The state machine of `machine`, restored from the snapshot in `dir` if there is one;
    /// the log held entries up to `replayed_upto` at this start.
    pub fn open(
        dir: &Path,
        machine: Arc<dyn MetaMachine>,
        replayed_upto: Option<u64>,
    ) -> io::Result<StateMachine> {
        let path = dir.join(SNAPSHOT_FILE);
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()));
        let retired: Arc<std::sync::Mutex<BTreeSet<String>>> = Arc::default();
        let mut inner = Inner::default();
        if let Some(bytes) = files::read(&path, MAX_SNAPSHOT)? {
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
            restore(&*machine, &retired, &file.data).map_err(bad)?;
            inner.last_applied = file.meta.last_log_id;
            inner.membership = file.meta.last_membership.clone();
            inner.snapshot = Some((file.meta, file.data));
        }
        Ok(StateMachine {
            machine,
            replayed_upto,
            inner: Arc::new(Mutex::new(inner)),
            retired,
            dir: dir.to_path_buf(),
        })
    }

    /// The names retired so far (shared with the state machine, which keeps it current).
    pub fn retired(&self) -> Arc<std::sync::Mutex<BTreeSet<String>>> {
        self.retired.clone()
    }

    fn retired_now(&self) -> BTreeSet<String> {
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The snapshot data of the state now.
    fn data(&self) -> Result<String, String> {
        let app = self.machine.snapshot()?;
        serde_json::to_string(&SnapshotData { retired: self.retired_now(), app }).map_err(|e| e.to_string())
    }

    /// Takes the state of snapshot data.
    fn restore(&self, data: &str) -> Result<(), String> {
        restore(&*self.machine, &self.retired, data)
    }

    fn save(&self, meta: &SnapshotMetaOf<Meta>, data: &str) -> io::Result<()> {
        let file = SnapshotFile { meta: meta.clone(), data: data.to_string() };
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        files::replace(&self.dir.join(SNAPSHOT_FILE), &bytes, true)
    }
}

impl RaftSnapshotBuilder<Meta> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<Meta, Cursor<Vec<u8>>>, io::Error> {
        let mut s = self.inner.lock().await;
        // Under the lock, so no apply moves the state between the data and its log id.
        let data = self.data().map_err(io::Error::other)?;
        let meta =
            SnapshotMetaOf::<Meta> { last_log_id: s.last_applied, last_membership: s.membership.clone() };
        self.save(&meta, &data)?;
        s.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<Meta, Cursor<Vec<u8>>> { meta, snapshot: Cursor::new(data.into_bytes()) })
    }
}

impl RaftStateMachine<Meta> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<Meta>>, StoredMembershipOf<Meta>), io::Error> {
        let s = self.inner.lock().await;
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<Meta>, io::Error>> + Unpin + OptionalSend,
    {
        let mut s = self.inner.lock().await;
        while let Some((entry, responder)) = entries.try_next().await? {
            if s.last_applied.is_none() {
                // The log from its start: whatever the machine held before is not the group's.
                self.machine.reset();
                self.retired.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            s.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::default(),
                EntryPayload::Normal(Proposal::App(body)) => {
                    let live = self.replayed_upto.is_none_or(|upto| entry.log_id.index() > upto);
                    Outcome { result: Some(self.machine.apply(entry.log_id.index(), &body, live)) }
                }
                EntryPayload::Normal(Proposal::Retire(name)) => {
                    self.retired.lock().unwrap_or_else(|p| p.into_inner()).insert(name);
                    Outcome { result: Some(Ok("retired".into())) }
                }
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembershipOf::<Meta>::new(Some(entry.log_id), m);
                    Outcome::default()
                }
            };
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<Meta>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), io::Error> {
        let data = String::from_utf8(snapshot.into_inner())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let mut s = self.inner.lock().await;
        // Restored first: a snapshot the machine refuses must not become the one on disk.
        self.restore(&data).map_err(io::Error::other)?;
        self.save(meta, &data)?;
        s.last_applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<Meta, Cursor<Vec<u8>>>>, io::Error> {
        let s = self.inner.lock().await;
        Ok(s.snapshot.as_ref().map(|(meta, data)| SnapshotOf::<Meta, Cursor<Vec<u8>>> {
            meta: meta.clone(),
            snapshot: Cursor::new(data.clone().into_bytes()),
        }))
    }
}
