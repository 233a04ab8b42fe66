//! What a cluster member's brokers hand the cluster ([`ClusterWork`]), carried out: topology
//! changes proposed to the metadata group, their answers given back to the broker that
//! asked; messages for queues on other nodes sent to those nodes, in order, and their
//! answers given back so publishers get their confirms. And the other side: messages other
//! members forward to queues that live here ([`serve`]).
//!
//! Forwards to one node go one request at a time, each carrying every message that waited
//! while the one before was out: the order of a channel's messages holds, and a busy line
//! batches. Bodies travel base64-encoded in the JSON frames of the inter-node wire.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use warren_cluster::{Cluster, ProposeError};
use warren_codec::ContentHeader;
use warren_core::broker::{Forward, Proposal};
use warren_core::catalog::CatalogReply;
use warren_core::message::Message;
use warren_core::queue::Offer;

use crate::cluster_meta::MetaCommand;
use crate::node::{Node, NodeRef};
use crate::shared::{ClusterWork, lock};

/// How long a node waits for another to take a batch of forwarded messages (and sync them).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(40);
/// Messages one forwarding request carries at most.
pub const MAX_FORWARD_BATCH: usize = 4096;
/// Body octets one forwarding request carries at most (beyond the first message).
pub const MAX_FORWARD_BYTES: usize = 16 << 20;
/// Body octets of the largest message forwarded: base64-encoded with its properties it fits
/// one inter-node frame ([`warren_cluster::wire::MAX_FRAME`]) with room to spare.
pub const MAX_FORWARD_MESSAGE: usize = 40 << 20;

/// What one node asks another of its own.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Request {
    /// Messages for queues that live on the node asked, in order.
    Forward(Vec<Forwarded>),
}

/// One message for some of the asked node's queues.
#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    vhost: String,
    /// The queues, each with the incarnation the sender routed to.
    queues: Vec<(String, u64)>,
    exchange: String,
    routing_key: String,
    /// The content header's payload (properties), base64.
    header: String,
    /// The body, base64.
    body: String,
    hold_ms: Option<u64>,
}

/// Starts carrying out the cluster work of `node`'s brokers.
pub fn start(node: &NodeRef, cluster: &Arc<Cluster>) {
    let (tx, rx) = mpsc::unbounded_channel();
    node.set_outbox(tx);
    tokio::spawn(pump(Arc::downgrade(node), Arc::downgrade(cluster), rx));
}

/// One forward as it waits for its batch: the id to answer and where it goes.
struct Pending {
    forward: Forward,
}

async fn pump(node: Weak<Node>, cluster: Weak<Cluster>, mut rx: mpsc::UnboundedReceiver<ClusterWork>) {
    let mut lines: HashMap<Arc<str>, mpsc::UnboundedSender<Pending>> = HashMap::new();
    while let Some(work) = rx.recv().await {
        for p in work.proposals {
            tokio::spawn(propose(node.clone(), cluster.clone(), p));
        }
        for forward in work.forwards {
            let home = forward.home.clone();
            let line = lines.entry(home.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(forward_line(node.clone(), cluster.clone(), home, rx));
                tx
            });
            let _ = line.send(Pending { forward });
        }
    }
}

/// Proposes one change and answers whoever waits for it.
async fn propose(node: Weak<Node>, cluster: Weak<Cluster>, p: Proposal) {
    let vhost = p.command.vhost().map(str::to_string);
    // A change that cannot be written is answered as failed: its client must not wait on.
    let body = serde_json::to_string(&MetaCommand::Catalog(p.command.clone())).map_err(|e| e.to_string());
    // The node's own changes (no client waits) are tried until committed: they delete by
    // incarnation, so a late or repeated one takes nothing else.
    let mut result;
    loop {
        result = match (cluster.upgrade().filter(|c| !c.is_stopped()), &body) {
            (_, Err(e)) => Err(ProposeError::Refused(format!("the change could not be written: {e}"))),
            (Some(c), Ok(body)) => c.propose(body.clone()).await,
            (None, _) => Err(ProposeError::Failed("the node is stopping".into())),
        };
        let stopping = cluster.upgrade().is_none_or(|c| c.is_stopped());
        if p.token.is_some() || result.is_ok() || stopping || matches!(result, Err(ProposeError::Refused(_)))
        {
            break;
        }
        tracing::debug!(change = ?p.command, error = ?result.as_ref().err(), "this node's own change is tried again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let answer = match result {
        Ok(text) => {
            serde_json::from_str::<CatalogReply>(&text).map_err(|e| format!("an unreadable answer: {e}"))
        }
        Err(e) => Err(e.to_string()),
    };
    let Some(node) = node.upgrade() else {
        return;
    };
    let shared =
        vhost.as_deref().and_then(|v| node.broker(v)).unwrap_or_else(|| node.default_broker().clone());
    let mut s = lock(&shared);
    match (p.token, answer) {
        (Some(token), answer) => s.broker.catalog_answered(token, answer),
        (None, Err(why)) => {
            tracing::warn!(change = ?p.command, error = %why, "this node's own topology change was not committed");
            s.broker.proposal_failed(&p.command);
        }
        (None, Ok(_)) => {}
    }
    s.wake_all();
}

/// Sends the forwards for node `home`, a batch at a time, and answers them.
async fn forward_line(
    node: Weak<Node>,
    cluster: Weak<Cluster>,
    home: Arc<str>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        if first.forward.message.body.len() > MAX_FORWARD_MESSAGE {
            // It would not fit a frame: not taken, and the line goes on.
            tracing::warn!(node = %home, octets = first.forward.message.body.len(), "a message too large to forward");
            if let Some(node) = node.upgrade()
                && let Some(shared) = node.broker(&first.forward.vhost)
            {
                let mut s = lock(&shared);
                s.broker.forward_done(first.forward.id, false);
                s.wake_all();
            }
            continue;
        }
        let mut bytes = first.forward.message.body.len();
        let mut batch = vec![first];
        while batch.len() < MAX_FORWARD_BATCH {
            match rx.try_recv() {
                // The next request takes what would make this one too large.
                Ok(p) if bytes + p.forward.message.body.len() > MAX_FORWARD_BYTES => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.forward.message.body.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (messages, ids) = group(&batch);
        let answer = match (serde_json::to_string(&Request::Forward(messages)), cluster.upgrade()) {
            (Ok(body), Some(c)) => c.call(&home, body, FORWARD_TIMEOUT).await,
            (Err(e), _) => Err(e.to_string()),
            (_, None) => Err("the node is stopping".into()),
        };
        let taken: Vec<Vec<bool>> = match answer
            .and_then(|a| serde_json::from_str(&a).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!(node = %home, error = %why, messages = ids.len(), "messages for queues on another node were not taken");
                Vec::new()
            }
        };
        let Some(node) = node.upgrade() else {
            return;
        };
        for (i, (vhost, message_ids)) in ids.iter().enumerate() {
            let Some(shared) = node.broker(vhost) else {
                continue;
            };
            let mut s = lock(&shared);
            for (j, id) in message_ids.iter().enumerate() {
                let ok = taken.get(i).and_then(|t| t.get(j)).copied().unwrap_or(false);
                s.broker.forward_done(*id, ok);
            }
            s.wake_all();
        }
    }
}

/// The batch as messages (one per message, with every queue it goes to) and, for each, its
/// vhost and the forward ids in the order of its queues.
fn group(batch: &[Pending]) -> (Vec<Forwarded>, Vec<(String, Vec<u64>)>) {
    let mut messages: Vec<Forwarded> = Vec::new();
    let mut ids: Vec<(String, Vec<u64>)> = Vec::new();
    let mut last: Option<&Arc<Message>> = None;
    for p in batch {
        let f = &p.forward;
        // One message routed to several queues of the node travels once.
        if let (Some(prev), Some(m), Some(i)) = (last, messages.last_mut(), ids.last_mut())
            && Arc::ptr_eq(prev, &f.message)
            && m.vhost == *f.vhost
            && m.hold_ms == f.hold_ms
        {
            m.queues.push((f.queue.to_string(), f.incarnation));
            i.1.push(f.id);
            continue;
        }
        let mut header = BytesMut::new();
        ContentHeader::basic(f.message.body.len() as u64, (*f.message.properties).clone())
            .encode(&mut header);
        messages.push(Forwarded {
            vhost: f.vhost.to_string(),
            queues: vec![(f.queue.to_string(), f.incarnation)],
            exchange: f.message.exchange.clone(),
            routing_key: f.message.routing_key.clone(),
            header: B64.encode(&header),
            body: B64.encode(&f.message.body),
            hold_ms: f.hold_ms,
        });
        ids.push((f.vhost.to_string(), vec![f.id]));
        last = Some(&f.message);
    }
    (messages, ids)
}

/// Answers another member's request: messages for queues that live here are offered to
/// them in order, and the answer (per message, per queue: taken or not) comes once what was
/// stored is synced.
pub async fn serve(node: &NodeRef, body: &str) -> Result<String, String> {
    let Request::Forward(messages) =
        serde_json::from_str(body).map_err(|e| format!("an unreadable request: {e}"))?;
    if messages.len() > MAX_FORWARD_BATCH {
        return Err(format!("{} messages in one request, over {MAX_FORWARD_BATCH}", messages.len()));
    }
    // Every message read before any is offered: a request is taken whole or refused whole.
    let decoded = messages.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    let mut answers = Vec::with_capacity(messages.len());
    let mut written: Vec<(crate::shared::SharedRef, u64)> = Vec::new();
    // One bound for the whole request: it is answered well before its sender gives up.
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    for (f, message) in messages.iter().zip(decoded) {
        let Some(shared) = node.broker(&f.vhost) else {
            answers.push(vec![false; f.queues.len()]);
            continue;
        };
        let mut taken = Vec::with_capacity(f.queues.len());
        for (queue, incarnation) in &f.queues {
            let ok = loop {
                let offer = {
                    let mut s = lock(&shared);
                    let offer =
                        s.broker.accept_forward(&f.vhost, queue, *incarnation, message.clone(), f.hold_ms);
                    if let Some(position) = s.broker.unsynced_position() {
                        written.push((shared.clone(), position));
                    }
                    s.wake_all();
                    offer
                };
                if !matches!(offer, Offer::NoQueue) {
                    break !matches!(offer, Offer::Refused);
                }
                match fate(node, &f.vhost, queue, *incarnation) {
                    // Deleted since it was routed to: the message went with it, as in RabbitMQ.
                    Fate::Gone => break true,
                    // The catalog holds it but this node could not make it (logged): refused.
                    Fate::Held => break false,
                    // The sender applied its declare before this node did: wait for it.
                    Fate::Pending if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Fate::Pending => break false,
                }
            };
            taken.push(ok);
        }
        answers.push(taken);
    }
    // Each broker's furthest write, once.
    let mut furthest: Vec<(crate::shared::SharedRef, u64)> = Vec::new();
    for (shared, position) in written {
        match furthest.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &shared)) {
            Some((_, p)) => *p = (*p).max(position),
            None => furthest.push((shared, position)),
        }
    }
    for (shared, position) in furthest {
        node.synced(&shared, position).await.map_err(|e| e.to_string())?;
    }
    serde_json::to_string(&answers).map_err(|e| e.to_string())
}

/// How long a forwarding request waits, in all, for declares of its queues this node has
/// not applied yet.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// What became of a queue a forward names that the broker does not have.
enum Fate {
    /// This node has not applied its declare yet.
    Pending,
    /// The catalog holds it: it should be here.
    Held,
    /// It was deleted since.
    Gone,
}

fn fate(node: &Node, vhost: &str, queue: &str, incarnation: u64) -> Fate {
    let catalog = node.catalog().lock().unwrap_or_else(|p| p.into_inner());
    if catalog.applied() < incarnation {
        return Fate::Pending;
    }
    match catalog.vhost(vhost).and_then(|v| v.queues.get(queue)) {
        Some(q) if q.incarnation == incarnation => Fate::Held,
        _ => Fate::Gone,
    }
}

/// The message a forward carries.
fn decode(f: &Forwarded) -> Result<Arc<Message>, String> {
    let header = B64.decode(&f.header).map_err(|e| format!("a forwarded header: {e}"))?;
    let body = B64.decode(&f.body).map_err(|e| format!("a forwarded body: {e}"))?;
    let header =
        ContentHeader::decode(Bytes::from(header)).map_err(|e| format!("a forwarded header: {e}"))?;
    Ok(Arc::new(Message {
        exchange: f.exchange.clone(),
        routing_key: f.routing_key.clone(),
        properties: header.properties,
        body: Bytes::from(body),
    }))
}
