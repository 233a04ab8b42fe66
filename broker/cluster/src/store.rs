//! The metadata group's Raft log on disk: one append-only file of records (a `u32` length, a
//! CRC-32C of the payload, the payload as JSON), the vote in a file of its own written whole,
//! and the committed index as a hint.
//!
//! An append is synced before openraft hears it is done, so an entry a peer was told about
//! survives a crash. At start the file is read back: a record cut short or failing its CRC
//! at the very end is a write the crash interrupted (never acknowledged) and is cut off; a
//! bad record with more after it is damage, and the start stops naming the file and offset
//! rather than drop acknowledged entries. A write that fails leaves the store refusing every
//! later one: the file may end in half a record, which only a restart's read-back settles.
//! Purged entries leave the file when it is rewritten (compacted) past [`COMPACT_AT`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::OptionalSend;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use serde::{Deserialize, Serialize};

use crate::files;
use crate::types::Meta;

/// The log file's name.
pub const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";

/// Octets one record may have.
pub const MAX_RECORD: usize = 64 << 20;
/// Octets of log file past which purged entries are dropped by rewriting it.
pub const COMPACT_AT: u64 = 16 << 20;
/// Octets the log file may have at start.
const MAX_LOG_FILE: u64 = 4 << 30;

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Entry(EntryOf<Meta>),
    /// Every entry after this index (after none: all) is gone.
    Truncate(Option<u64>),
    /// Every entry up to and including this one is gone.
    Purge(LogIdOf<Meta>),
}

/// The metadata group's log; clones share it.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    file_len: u64,
    entries: BTreeMap<u64, EntryOf<Meta>>,
    last_purged: Option<LogIdOf<Meta>>,
    vote: Option<VoteOf<Meta>>,
    committed: Option<LogIdOf<Meta>>,
    /// Set by a failed write: nothing more is written until a restart.
    failed: Option<String>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let data = files::read(&path, MAX_LOG_FILE)?.unwrap_or_default();
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let good = replay(&data, |r| match r {
            Record::Entry(e) => {
                entries.insert(e.index(), e);
            }
            Record::Truncate(after) => {
                let from = after.map_or(0, |a| a + 1);
                entries.retain(|i, _| *i < from);
            }
            Record::Purge(upto) => {
                entries.retain(|i, _| *i > upto.index());
                last_purged = Some(upto);
            }
        })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if (good as u64) < data.len() as u64 {
            tracing::warn!(
                file = %path.display(),
                cut = data.len() - good,
                "the Raft log ended in a write a crash interrupted; it is cut off"
            );
            file.set_len(good as u64)?;
            file.sync_all()?;
        } else if data.is_empty() {
            files::sync_dir(&path)?;
        }
        let vote = match files::read(&dir.join(VOTE_FILE), 1 << 20)? {
            Some(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", dir.join(VOTE_FILE).display()))
            })?),
            None => None,
        };
        // Only a hint: a lost or torn one is a lower committed index, which the leader raises.
        let committed = files::read(&dir.join(COMMITTED_FILE), 1 << 20)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .flatten();
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                file,
                file_len: good as u64,
                entries,
                last_purged,
                vote,
                committed,
                failed: None,
            })),
        })
    }

    /// The index of the last entry it holds.
    pub fn last_index(&self) -> Option<u64> {
        self.lock().entries.keys().next_back().copied()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the store off the async workers: its writes wait for fsyncs, which must not
    /// hold up heartbeats or AMQP traffic on a slow disk. openraft calls one storage method at
    /// a time, so the order of writes is kept.
    async fn off_workers<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| io::Error::other(format!("a Raft log write did not finish: {e}")))?
    }
}

/// Reads `data` as a log file would be read at start: how many octets hold sound records and
/// how many records they are, or why the start would stop (for the fuzz target and tools).
pub fn scan(data: &[u8]) -> Result<(usize, usize), String> {
    let mut records = 0;
    let good = replay(data, |_| records += 1)?;
    Ok((good, records))
}

/// The CRC of a record: its length field and its payload, so a damaged length is caught too.
fn record_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// The length of the sound record at the start of `rest`, if one is there: a length of 1 to
/// [`MAX_RECORD`] octets that fits, and a CRC that matches.
fn sound_record(rest: &[u8]) -> Option<usize> {
    if rest.len() < 8 {
        return None;
    }
    let len_bytes = [rest[0], rest[1], rest[2], rest[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_RECORD || rest.len() - 8 < len {
        return None;
    }
    (record_crc(len_bytes, &rest[8..8 + len]) == crc).then_some(len)
}

/// Replays the records of `data` into `each`; the octets that hold whole, sound records.
/// Where a record is not sound, the rest of the file must hold none either (a write the
/// crash interrupted: cut short, torn, or a tail of zeros the file system extended it with);
/// a sound record after an unsound one is damage to something acknowledged, and an error.
fn replay(data: &[u8], mut each: impl FnMut(Record)) -> Result<usize, String> {
    let mut pos = 0;
    while pos < data.len() {
        let Some(len) = sound_record(&data[pos..]) else {
            if let Some(later) = (pos + 1..data.len()).find(|p| sound_record(&data[*p..]).is_some()) {
                return Err(format!(
                    "a damaged record at offset {pos}, with a sound one at offset {later} after it"
                ));
            }
            break;
        };
        let payload = &data[pos + 8..pos + 8 + len];
        let record: Record = serde_json::from_slice(payload)
            .map_err(|e| format!("an unreadable record at offset {pos}: {e}"))?;
        each(record);
        pos += 8 + len;
    }
    Ok(pos)
}

fn encode(record: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = serde_json::to_vec(record).map_err(io::Error::other)?;
    if payload.len() > MAX_RECORD {
        return Err(io::Error::other(format!("a log record of {} octets, over {MAX_RECORD}", payload.len())));
    }
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&record_crc(len, &payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

impl Inner {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(why) => {
                Err(io::Error::other(format!("the Raft log failed earlier ({why}); restart the node")))
            }
            None => Ok(()),
        }
    }

    /// Appends `records` and syncs them.
    fn write(&mut self, records: &[Record]) -> io::Result<()> {
        self.check()?;
        let mut buf = Vec::new();
        for r in records {
            encode(r, &mut buf)?;
        }
        let written = self.file.write_all(&buf).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.file_len += buf.len() as u64;
        Ok(())
    }

    /// Rewrites the file with the live entries only, once purged ones take most of it.
    fn compact(&mut self) -> io::Result<()> {
        let live: usize = self.entries.len();
        if self.file_len < COMPACT_AT
            || live * 4 > self.entries.keys().next_back().copied().unwrap_or(0) as usize
        {
            return Ok(());
        }
        let mut buf = Vec::new();
        if let Some(p) = self.last_purged {
            encode(&Record::Purge(p), &mut buf)?;
        }
        for e in self.entries.values() {
            encode(&Record::Entry(e.clone()), &mut buf)?;
        }
        let path = self.dir.join(LOG_FILE);
        files::replace(&path, &buf, true)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.file_len = buf.len() as u64;
        Ok(())
    }
}

impl RaftLogReader<Meta> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<Meta>>, io::Error> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<Meta>>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<Meta> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Meta>, io::Error> {
        let s = self.lock();
        let last = s.entries.values().next_back().map(|e| e.log_id()).or(s.last_purged);
        Ok(LogState { last_purged_log_id: s.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<Meta>) -> Result<(), io::Error> {
        let vote = *vote;
        self.off_workers(move |s| {
            s.check()?;
            let bytes = serde_json::to_vec(&vote).map_err(io::Error::other)?;
            if let Err(e) = files::replace(&s.dir.join(VOTE_FILE), &bytes, true) {
                s.failed = Some(e.to_string());
                return Err(e);
            }
            s.vote = Some(vote);
            Ok(())
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<Meta>>) -> Result<(), io::Error> {
        self.off_workers(move |s| {
            s.committed = committed;
            let bytes = serde_json::to_vec(&committed).map_err(io::Error::other)?;
            // A hint, synced so a restart applies what this node had applied (a deleted user
            // stays deleted) before it hears from a leader; a failure costs only that.
            if let Err(e) = files::replace(&s.dir.join(COMMITTED_FILE), &bytes, true) {
                tracing::warn!(error = %e, "the committed index was not saved");
            }
            Ok(())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<Meta>>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Meta>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<Meta>> + OptionalSend,
    {
        let records: Vec<Record> = entries.into_iter().map(Record::Entry).collect();
        let written = self
            .off_workers(move |s| {
                s.write(&records)?;
                for r in records {
                    if let Record::Entry(e) = r {
                        s.entries.insert(e.index(), e);
                    }
                }
                Ok(())
            })
            .await;
        match written {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<Meta>>) -> Result<(), io::Error> {
        let after = last_log_id.map(|l| l.index());
        self.off_workers(move |s| {
            s.write(&[Record::Truncate(after)])?;
            let from = after.map_or(0, |a| a + 1);
            s.entries.retain(|i, _| *i < from);
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<Meta>) -> Result<(), io::Error> {
        self.off_workers(move |s| {
            s.write(&[Record::Purge(log_id)])?;
            s.entries.retain(|i, _| *i > log_id.index());
            s.last_purged = Some(log_id);
            let compacted = s.compact();
            if let Err(e) = &compacted {
                // The file may be the old one or the new, its handle either: nothing more is
                // written.
                s.failed = Some(e.to_string());
            }
            compacted
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::vote::RaftLeaderIdExt as _;

    fn entry(term: u64, index: u64) -> EntryOf<Meta> {
        let log_id = LogIdOf::<Meta>::new(openraft::alias::LeaderIdOf::<Meta>::new_committed(term, 1), index);
        EntryOf::<Meta>::new_normal(log_id, crate::types::Proposal::App(format!("p{index}")))
    }

    async fn append(store: &mut LogStore, es: Vec<EntryOf<Meta>>) {
        store.append(es, IOFlushed::<Meta>::noop()).await.expect("append");
    }

    #[tokio::test]
    async fn entries_truncations_and_purges_survive_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = LogStore::open(dir.path()).expect("open");
        append(&mut s, (1..=5).map(|i| entry(1, i)).collect()).await;
        s.truncate_after(Some(entry(1, 3).log_id())).await.expect("truncate");
        append(&mut s, vec![entry(2, 4)]).await;
        s.purge(entry(1, 1).log_id()).await.expect("purge");
        drop(s);
        let mut s = LogStore::open(dir.path()).expect("reopen");
        let got: Vec<_> =
            s.try_get_log_entries(0..).await.expect("read").iter().map(|e| e.log_id()).collect();
        assert_eq!(got, vec![entry(1, 2).log_id(), entry(1, 3).log_id(), entry(2, 4).log_id()]);
        let state = s.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(entry(1, 1).log_id()));
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_damage_in_the_middle_stops_the_start() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = LogStore::open(dir.path()).expect("open");
        append(&mut s, (1..=3).map(|i| entry(1, i)).collect()).await;
        drop(s);
        let path = dir.path().join(LOG_FILE);
        let whole = std::fs::read(&path).expect("read");
        // A crash in the middle of the last record's write.
        std::fs::write(&path, &whole[..whole.len() - 5]).expect("tear");
        let mut s = LogStore::open(dir.path()).expect("a torn tail is no reason to stop");
        assert_eq!(s.try_get_log_entries(0..).await.expect("read").len(), 2);
        append(&mut s, vec![entry(1, 3)]).await;
        drop(s);
        assert_eq!(LogStore::open(dir.path()).expect("reopen").lock().entries.len(), 3);
        // A tail of zeros (the file extended, the data never written): cut like a torn write.
        let mut zeros = std::fs::read(&path).expect("read");
        let sound = zeros.len();
        zeros.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &zeros).expect("extend");
        assert_eq!(LogStore::open(dir.path()).expect("a zero tail").lock().entries.len(), 3);
        assert_eq!(std::fs::metadata(&path).expect("meta").len() as usize, sound, "cut back");
        // One flipped octet inside the first record, with sound records after it.
        let mut bad = std::fs::read(&path).expect("read");
        bad[12] ^= 0x55;
        std::fs::write(&path, &bad).expect("damage");
        let e = LogStore::open(dir.path()).err().expect("damage is refused");
        assert!(e.to_string().contains("offset 0"), "{e}");
        assert_eq!(std::fs::read(&path).expect("kept"), bad, "nothing is cut on damage");
        // A damaged length field (claiming to run past the end) is damage too, not a tail.
        let mut bad = std::fs::read(&path).expect("read");
        bad[12] ^= 0x55;
        bad[3] = 0x7f;
        std::fs::write(&path, &bad).expect("damage the length");
        let e = LogStore::open(dir.path()).err().expect("a damaged length is refused");
        assert!(e.to_string().contains("offset 0"), "{e}");
    }

    #[tokio::test]
    async fn a_vote_is_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = LogStore::open(dir.path()).expect("open");
        let vote = VoteOf::<Meta>::new(3, 2);
        s.save_vote(&vote).await.expect("vote");
        drop(s);
        let mut s = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(s.read_vote().await.expect("read"), Some(vote));
    }
}
