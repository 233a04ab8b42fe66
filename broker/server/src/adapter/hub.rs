//! What adapter sessions of a node share: the names they claim (an MQTT client identifier
//! is held by one connection at a time), the wills waiting for their delay, and the retained
//! messages.
//!
//! Retained messages are kept in memory per vhost and exchange, bounded in count and octets,
//! and saved to the data directory by the server ([`super::retained_file`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};
use warren_core::message::Message;

/// Delayed wills waiting on a node at most, and the octets they may hold.
pub const MAX_WILLS: usize = 10_000;
/// Octets of delayed wills a node holds at most.
pub const MAX_WILL_BYTES: usize = 64 << 20;

/// Retained messages one vhost keeps at most.
pub const MAX_RETAINED: usize = 100_000;
/// Octets of retained bodies one vhost keeps at most.
pub const MAX_RETAINED_BYTES: usize = 256 << 20;

/// A name in a protocol's namespace in a vhost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimKey {
    /// The adapter's protocol.
    pub protocol: String,
    /// The vhost.
    pub vhost: String,
    /// The name.
    pub name: String,
}

/// The session holding a name.
struct Holder {
    session: u64,
    /// Notified when another session takes the name.
    taken: Arc<Notify>,
    /// Closed when the holder's connection has ended (its queue released).
    gone: watch::Receiver<()>,
}

/// Why a delayed will is not kept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WillError {
    /// Another session holds the name: the client is back, and MQTT 5 drops the will.
    #[error("the client identifier is held by another connection")]
    Reclaimed,
    /// The node holds its most delayed wills.
    #[error("the node holds {MAX_WILLS} delayed wills or {MAX_WILL_BYTES} octets of them already")]
    Full,
}

/// A will waiting for its delay.
struct PendingWill {
    generation: u64,
    bytes: usize,
    task: tokio::task::AbortHandle,
}

#[derive(Default)]
struct Wills {
    by_key: HashMap<ClaimKey, PendingWill>,
    bytes: usize,
}

impl Wills {
    fn remove(&mut self, key: &ClaimKey) -> Option<PendingWill> {
        let w = self.by_key.remove(key)?;
        self.bytes -= w.bytes;
        Some(w)
    }
}

/// Why a retained message was not kept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetainError {
    /// The vhost keeps its most retained messages.
    #[error("the vhost keeps {MAX_RETAINED} retained messages already")]
    Count,
    /// The vhost keeps its most retained octets.
    #[error("the vhost's retained messages hold {MAX_RETAINED_BYTES} octets already")]
    Bytes,
    /// An exchange name or routing key over 255 octets: no AMQP name.
    #[error("an exchange name or routing key is over 255 octets")]
    Name,
}

#[derive(Default)]
struct Retained {
    /// vhost → (exchange, routing key) → message.
    by_vhost: HashMap<String, BTreeMap<(String, String), Arc<Message>>>,
    /// vhost → octets of bodies kept.
    bytes: HashMap<String, usize>,
}

/// The node's adapter state.
#[derive(Default)]
pub struct Hub {
    claims: Mutex<HashMap<ClaimKey, Holder>>,
    /// Wills waiting for their delay. Locked after `claims` when both are.
    wills: Mutex<Wills>,
    retained: Mutex<Retained>,
    /// The retained messages changed since they were last taken for saving.
    retained_dirty: std::sync::atomic::AtomicBool,
    next: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A number no other session or will of this node has.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `session` takes `key`: the holder before it is told, and the returned receiver
    /// closes once that holder's connection ended. A will waiting under the name is dropped.
    pub fn claim(
        &self,
        key: &ClaimKey,
        session: u64,
        taken: Arc<Notify>,
        gone: watch::Receiver<()>,
    ) -> Option<watch::Receiver<()>> {
        let mut claims = locked(&self.claims);
        if let Some(w) = locked(&self.wills).remove(key) {
            w.task.abort();
        }
        let before = claims.insert(key.clone(), Holder { session, taken, gone });
        drop(claims);
        let before = before.filter(|h| h.session != session)?;
        before.taken.notify_one();
        Some(before.gone)
    }

    /// `session` lets `key` go, if it still holds it.
    pub fn release(&self, key: &ClaimKey, session: u64) {
        let mut claims = locked(&self.claims);
        if claims.get(key).is_some_and(|h| h.session == session) {
            claims.remove(key);
        }
    }

    /// Whether a session other than `session` holds `key` now (it took the name over).
    pub fn held_by_other(&self, key: &ClaimKey, session: u64) -> bool {
        locked(&self.claims).get(key).is_some_and(|h| h.session != session)
    }

    /// Names held now.
    pub fn claims(&self) -> usize {
        locked(&self.claims).len()
    }

    /// Keeps the will of `session` (which held `key`) of `bytes` octets until its delay
    /// ends: `spawn` starts the task that waits, given the generation it must hand to
    /// [`Hub::take_will`]. A claim of the name aborts the task. Refused when another session
    /// holds the name already, or the node holds its most wills.
    pub fn schedule_will(
        &self,
        key: &ClaimKey,
        session: u64,
        bytes: usize,
        spawn: impl FnOnce(u64) -> tokio::task::AbortHandle,
    ) -> Result<(), WillError> {
        // Under the claims lock: a claim cannot land between the check and the insert.
        let claims = locked(&self.claims);
        if claims.get(key).is_some_and(|h| h.session != session) {
            return Err(WillError::Reclaimed);
        }
        let mut wills = locked(&self.wills);
        if let Some(old) = wills.remove(key) {
            old.task.abort();
        }
        if wills.by_key.len() >= MAX_WILLS || wills.bytes + bytes > MAX_WILL_BYTES {
            return Err(WillError::Full);
        }
        let generation = self.next_id();
        let task = spawn(generation);
        wills.bytes += bytes;
        wills.by_key.insert(key.clone(), PendingWill { generation, bytes, task });
        Ok(())
    }

    /// Whether the will of `generation` may go now (nobody claimed its name since); it is
    /// no longer pending either way.
    pub fn take_will(&self, key: &ClaimKey, generation: u64) -> bool {
        let mut wills = locked(&self.wills);
        if wills.by_key.get(key).is_some_and(|w| w.generation == generation) {
            wills.remove(key);
            true
        } else {
            false
        }
    }

    /// Delayed wills waiting.
    pub fn wills(&self) -> usize {
        locked(&self.wills).by_key.len()
    }

    /// Keeps `message` as the retained one of its routing key on its exchange in `vhost`;
    /// an empty body clears it.
    pub fn retain(&self, vhost: &str, message: Arc<Message>) -> Result<(), RetainError> {
        if message.exchange.len() > 255 || message.routing_key.len() > 255 || vhost.len() > 255 {
            return Err(RetainError::Name);
        }
        let mut r = locked(&self.retained);
        let Retained { by_vhost, bytes } = &mut *r;
        let map = by_vhost.entry(vhost.to_string()).or_default();
        let used = bytes.entry(vhost.to_string()).or_default();
        let key = (message.exchange.clone(), message.routing_key.clone());
        let old = map.get(&key).map_or(0, |m| footprint(m));
        if message.body.is_empty() {
            if map.remove(&key).is_some() {
                self.retained_dirty.store(true, Ordering::Relaxed);
            }
            *used -= old;
            return Ok(());
        }
        if !map.contains_key(&key) && map.len() >= MAX_RETAINED {
            return Err(RetainError::Count);
        }
        let size = footprint(&message);
        if *used - old + size > MAX_RETAINED_BYTES {
            return Err(RetainError::Bytes);
        }
        *used = *used - old + size;
        map.insert(key, message);
        self.retained_dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The retained messages of `exchange` in `vhost` whose routing keys match `pattern`.
    pub fn retained(&self, vhost: &str, exchange: &str, pattern: &str) -> Vec<Arc<Message>> {
        let r = locked(&self.retained);
        let Some(map) = r.by_vhost.get(vhost) else { return Vec::new() };
        let from = (exchange.to_string(), String::new());
        map.range(from..)
            .take_while(|((x, _), _)| x == exchange)
            .filter(|((_, key), _)| warren_core::exchange::topic::matches(pattern, key))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every retained message with its vhost, if they changed since the last call (for
    /// saving them).
    pub fn retained_if_changed(&self) -> Option<Vec<(String, Arc<Message>)>> {
        let r = locked(&self.retained);
        if !self.retained_dirty.swap(false, Ordering::Relaxed) {
            return None;
        }
        let all = r.by_vhost.iter().flat_map(|(v, map)| map.values().map(move |m| (v.clone(), m.clone())));
        Some(all.collect())
    }

    /// Marks the retained messages changed (a save failed: the next one tries again).
    pub fn retained_unsaved(&self) {
        self.retained_dirty.store(true, Ordering::Relaxed);
    }

    /// Retained messages kept, all vhosts together.
    pub fn retained_count(&self) -> usize {
        locked(&self.retained).by_vhost.values().map(BTreeMap::len).sum()
    }
}

/// What a retained message costs: its body, names and properties (headers as encoded).
pub fn footprint(m: &Message) -> usize {
    let p = &m.properties;
    let strings = [
        &p.content_type,
        &p.content_encoding,
        &p.correlation_id,
        &p.reply_to,
        &p.expiration,
        &p.message_id,
        &p.kind,
        &p.user_id,
        &p.app_id,
        &p.cluster_id,
    ];
    let headers =
        p.headers.as_ref().map_or(0, |h| warren_codec::FieldValue::Table(h.clone()).to_wire().len());
    m.body.len()
        + m.exchange.len()
        + m.routing_key.len()
        + strings.iter().map(|s| s.as_ref().map_or(0, String::len)).sum::<usize>()
        + headers
        + 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(key: &str, body: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            exchange: "amq.topic".into(),
            routing_key: key.into(),
            properties: Box::default(),
            body: Bytes::from_static(body),
        })
    }

    #[test]
    fn retained_messages_replace_clear_and_match_by_pattern() {
        let hub = Hub::default();
        hub.retain("/", message("home.kitchen.temp", b"20")).expect("kept");
        hub.retain("/", message("home.kitchen.temp", b"21")).expect("kept");
        hub.retain("/", message("home.hall.temp", b"19")).expect("kept");
        hub.retain("other", message("home.hall.temp", b"5")).expect("kept");
        let got = hub.retained("/", "amq.topic", "home.*.temp");
        let bodies: Vec<&[u8]> = got.iter().map(|m| &m.body[..]).collect();
        assert_eq!(bodies, [&b"19"[..], b"21"]);
        assert!(hub.retained("/", "amq.fanout", "#").is_empty(), "another exchange's");
        hub.retain("/", message("home.kitchen.temp", b"")).expect("cleared");
        assert_eq!(hub.retained("/", "amq.topic", "#").len(), 1);
        assert_eq!(hub.retained_count(), 2);
    }

    #[test]
    fn the_retained_store_is_bounded_in_octets() {
        let hub = Hub::default();
        let big: &'static [u8] = Box::leak(vec![7u8; MAX_RETAINED_BYTES / 2].into_boxed_slice());
        hub.retain("/", message("a", big)).expect("first half");
        assert_eq!(hub.retain("/", message("b", big)), Err(RetainError::Bytes));
        // Replacing a message counts its old body out first.
        hub.retain("/", message("a", big)).expect("replaced");
        hub.retain("/", message("a", b"")).expect("cleared");
        hub.retain("/", message("b", big)).expect("room again");
    }

    #[test]
    fn a_claim_tells_the_holder_and_waits_for_it_to_go() {
        let hub = Hub::default();
        let key = ClaimKey { protocol: "mqtt".into(), vhost: "/".into(), name: "c1".into() };
        let (first_gone, first_rx) = watch::channel(());
        let first_taken = Arc::new(Notify::new());
        assert!(hub.claim(&key, 1, first_taken.clone(), first_rx).is_none());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let _guard = rt.enter();
        let mut generation = 0;
        let mut task = None;
        hub.schedule_will(&key, 1, 10, |g| {
            generation = g;
            let t = tokio::spawn(std::future::pending::<()>());
            let abort = t.abort_handle();
            task = Some(t);
            abort
        })
        .expect("scheduled");
        assert_eq!(hub.wills(), 1);
        let (_second_gone, second_rx) = watch::channel(());
        let mut wait = hub.claim(&key, 2, Arc::new(Notify::new()), second_rx).expect("held before");
        assert!(!hub.take_will(&key, generation), "a claim drops the waiting will");
        assert_eq!(hub.wills(), 0);
        assert_eq!(
            hub.schedule_will(&key, 1, 10, |_| unreachable!("not started")),
            Err(WillError::Reclaimed),
            "a will of a session whose name was taken over is dropped"
        );
        // The first holder was told (a stored permit) and its end closes the receiver.
        rt.block_on(async {
            let cancelled = task.expect("spawned").await;
            assert!(cancelled.is_err_and(|e| e.is_cancelled()), "the will's task was aborted");
            first_taken.notified().await;
            drop(first_gone);
            assert!(wait.changed().await.is_err());
        });
        hub.release(&key, 1);
        assert_eq!(hub.claims(), 1, "a former holder's release leaves the new claim");
        hub.release(&key, 2);
        assert_eq!(hub.claims(), 0);
    }
}
