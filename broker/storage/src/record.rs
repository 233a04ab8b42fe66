//! The on-disk record format, shared by the segment log and the metadata log.
//!
//! A record is `[length u32 LE][crc32c u32 LE][payload]`; the checksum covers the payload. A
//! length of zero marks the end of the written part of a (preallocated, zero-filled) file.
//! Payloads start with a kind octet and use AMQP's wire encodings for strings, field tables
//! and message properties, so a stored message is exactly what the codec reads.

use bytes::{Bytes, BytesMut};
use warren_codec::field::{decode_table, encode_table};
use warren_codec::wire::{Reader, Writer};
use warren_codec::{BASIC_CLASS, CodecError, ContentHeader};
use warren_core::message::Message;
use warren_core::storage::{BindingRecord, EntryState, ExchangeRecord, MetaOp, QueueId, QueueRecord};

/// Octets before a record's payload.
pub const HEADER: usize = 8;

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const COUNT: u8 = 3;
const PUT_QUEUE: u8 = 10;
const DELETE_QUEUE: u8 = 11;
const PUT_EXCHANGE: u8 = 12;
const DELETE_EXCHANGE: u8 = 13;
const BIND: u8 = 14;
const UNBIND: u8 = 15;
const NEXT_QUEUE_ID: u8 = 16;
const NONE: u64 = u64::MAX;

/// A record of the segment log.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A queue entry, new or rewritten.
    Put {
        /// Queue.
        queue: QueueId,
        /// Entry seq.
        seq: u64,
        /// Entry state.
        state: EntryState,
        /// The message; its body is a slice of the bytes decoded.
        message: Box<Message>,
    },
    /// An entry left its queue.
    Remove {
        /// Queue.
        queue: QueueId,
        /// Entry seq.
        seq: u64,
    },
    /// An entry went back to its queue after a delivery.
    Count {
        /// Queue.
        queue: QueueId,
        /// Entry seq.
        seq: u64,
        /// Deliveries so far.
        delivery_count: u32,
    },
}

/// A record of the metadata log.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    /// A topology change.
    Op(MetaOp),
    /// The lowest queue id never used (written in snapshots).
    NextQueueId(QueueId),
}

/// Why a payload did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Its fields are malformed.
    #[error("malformed record: {0}")]
    Fields(#[from] CodecError),
    /// Its kind is unknown.
    #[error("unknown record kind {0}")]
    Kind(u8),
}

/// Appends one framed record whose payload `write` produces.
pub fn frame(buf: &mut BytesMut, write: impl FnOnce(&mut Writer<'_>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    write(&mut Writer::new(buf));
    let payload = &buf[start + HEADER..];
    let (len, crc) = (payload.len() as u32, crc32c::crc32c(payload));
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A frame's header: payload length and checksum.
pub fn header(b: &[u8]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    Some((len as usize, crc))
}

/// Writes a put; the body comes last, so its place in the file is the record's end minus its
/// length.
pub fn put(w: &mut Writer<'_>, queue: QueueId, seq: u64, state: &EntryState, m: &Message) {
    w.u8(PUT);
    w.u64(queue);
    w.u64(seq);
    write_state(w, state);
    message(w, m);
}

/// Writes a message: exchange, routing key, content header, body last.
fn message(w: &mut Writer<'_>, m: &Message) {
    w.long_str(m.exchange.as_bytes());
    w.long_str(m.routing_key.as_bytes());
    let mut header = BytesMut::new();
    warren_codec::properties::encode_header(&mut header, BASIC_CLASS, m.body.len() as u64, &m.properties);
    w.long_str(&header);
    w.long_str(&m.body);
}

/// Reads what [`message`] wrote; the body is a slice of the reader's buffer.
fn read_message(r: &mut Reader) -> Result<Message, CodecError> {
    let exchange = string(r)?;
    let routing_key = string(r)?;
    let header = ContentHeader::decode(r.long_str()?)?;
    let body = r.long_str()?;
    Ok(Message { exchange, routing_key, properties: header.properties, body })
}

fn write_state(w: &mut Writer<'_>, state: &EntryState) {
    w.u32(state.delivery_count);
    w.u64(state.enqueued_ms);
    w.u64(state.expires_at_ms.unwrap_or(NONE));
    w.u64(state.ready_at_ms.unwrap_or(NONE));
}

fn read_state(r: &mut Reader) -> Result<EntryState, CodecError> {
    Ok(EntryState {
        delivery_count: r.u32()?,
        enqueued_ms: r.u64()?,
        expires_at_ms: opt(r.u64()?),
        ready_at_ms: opt(r.u64()?),
    })
}

/// A record of a queue index file (see [`crate::index`]).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexRecord {
    /// First record: which queue, and the log position the index is current to.
    Header {
        /// Queue.
        queue: QueueId,
        /// The log's newest segment at the checkpoint.
        segment: u64,
        /// Where in it the log ended.
        end: u64,
        /// Entries that follow.
        entries: u64,
    },
    /// One entry, in queue order.
    Entry {
        /// Seq.
        seq: u64,
        /// State.
        state: EntryState,
        /// Where its put record is in the log.
        at: u64,
        /// The message itself when it is small; otherwise it is read from the log.
        inline: Option<Box<Message>>,
    },
    /// A log segment and the older segments its records refer to (written in the segment list).
    Segment {
        /// Segment id.
        id: u64,
        /// Older segments it refers to.
        targets: Vec<u64>,
    },
}

const INDEX_HEADER: u8 = 20;
const INDEX_ENTRY: u8 = 21;
const INDEX_SEGMENT: u8 = 22;

/// Writes an index file's header.
pub fn index_header(w: &mut Writer<'_>, queue: QueueId, segment: u64, end: u64, entries: u64) {
    w.u8(INDEX_HEADER);
    w.u64(queue);
    w.u64(segment);
    w.u64(end);
    w.u64(entries);
}

/// Writes an index entry; `inline` is the message when it is small enough to keep in the index.
pub fn index_entry(w: &mut Writer<'_>, seq: u64, state: &EntryState, at: u64, inline: Option<&Message>) {
    w.u8(INDEX_ENTRY);
    w.u64(seq);
    write_state(w, state);
    w.u64(at);
    w.u8(u8::from(inline.is_some()));
    if let Some(m) = inline {
        message(w, m);
    }
}

/// Writes a segment's entry in the segment list.
pub fn index_segment(w: &mut Writer<'_>, id: u64, targets: &[u64]) {
    w.u8(INDEX_SEGMENT);
    w.u64(id);
    w.u32(targets.len() as u32);
    for t in targets {
        w.u64(*t);
    }
}

/// Decodes an index record's payload; inline bodies are slices of `payload`.
pub fn decode_index(payload: Bytes) -> Result<IndexRecord, DecodeError> {
    let mut r = Reader::new(payload);
    let rec = match r.u8()? {
        INDEX_HEADER => {
            IndexRecord::Header { queue: r.u64()?, segment: r.u64()?, end: r.u64()?, entries: r.u64()? }
        }
        INDEX_ENTRY => {
            let seq = r.u64()?;
            let state = read_state(&mut r)?;
            let at = r.u64()?;
            let inline = match r.u8()? {
                0 => None,
                _ => Some(Box::new(read_message(&mut r)?)),
            };
            IndexRecord::Entry { seq, state, at, inline }
        }
        INDEX_SEGMENT => {
            let id = r.u64()?;
            let n = r.u32()?;
            let targets = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
            IndexRecord::Segment { id, targets }
        }
        other => return Err(DecodeError::Kind(other)),
    };
    r.finish()?;
    Ok(rec)
}

/// Writes a remove.
pub fn remove(w: &mut Writer<'_>, queue: QueueId, seq: u64) {
    w.u8(REMOVE);
    w.u64(queue);
    w.u64(seq);
}

/// Writes a delivery-count update.
pub fn count(w: &mut Writer<'_>, queue: QueueId, seq: u64, delivery_count: u32) {
    w.u8(COUNT);
    w.u64(queue);
    w.u64(seq);
    w.u32(delivery_count);
}

fn opt(v: u64) -> Option<u64> {
    (v != NONE).then_some(v)
}

fn string(r: &mut Reader) -> Result<String, CodecError> {
    let b = r.long_str()?;
    String::from_utf8(b.to_vec()).map_err(|_| CodecError::BadUtf8)
}

/// Decodes a segment record's payload; bodies are slices of `payload`.
pub fn decode(payload: Bytes) -> Result<Record, DecodeError> {
    let mut r = Reader::new(payload);
    let record = match r.u8()? {
        PUT => {
            let (queue, seq) = (r.u64()?, r.u64()?);
            let state = read_state(&mut r)?;
            let message = Box::new(read_message(&mut r)?);
            Record::Put { queue, seq, state, message }
        }
        REMOVE => Record::Remove { queue: r.u64()?, seq: r.u64()? },
        COUNT => Record::Count { queue: r.u64()?, seq: r.u64()?, delivery_count: r.u32()? },
        other => return Err(DecodeError::Kind(other)),
    };
    r.finish()?;
    Ok(record)
}

/// Writes a metadata record.
pub fn meta(w: &mut Writer<'_>, m: &Meta) {
    let binding = |w: &mut Writer<'_>, b: &BindingRecord| {
        w.long_str(b.source.as_bytes());
        w.long_str(b.destination.as_bytes());
        w.bit(b.to_queue);
        w.long_str(b.key.as_bytes());
        encode_table(w, &b.arguments);
        vhost(w, &b.vhost);
    };
    match m {
        Meta::Op(MetaOp::PutQueue(q)) => {
            w.u8(PUT_QUEUE);
            w.u64(q.id);
            w.long_str(q.name.as_bytes());
            w.bit(q.auto_delete);
            encode_table(w, &q.arguments);
            vhost(w, &q.vhost);
        }
        Meta::Op(MetaOp::DeleteQueue(id)) => {
            w.u8(DELETE_QUEUE);
            w.u64(*id);
        }
        Meta::Op(MetaOp::PutExchange(x)) => {
            w.u8(PUT_EXCHANGE);
            w.long_str(x.name.as_bytes());
            w.long_str(x.kind.as_bytes());
            w.bit(x.auto_delete);
            w.bit(x.internal);
            encode_table(w, &x.arguments);
            vhost(w, &x.vhost);
        }
        Meta::Op(MetaOp::DeleteExchange { vhost: v, name }) => {
            w.u8(DELETE_EXCHANGE);
            w.long_str(name.as_bytes());
            vhost(w, v);
        }
        Meta::Op(MetaOp::Bind(b)) => {
            w.u8(BIND);
            binding(w, b);
        }
        Meta::Op(MetaOp::Unbind(b)) => {
            w.u8(UNBIND);
            binding(w, b);
        }
        Meta::NextQueueId(id) => {
            w.u8(NEXT_QUEUE_ID);
            w.u64(*id);
        }
    }
}

/// Ends a topology record with its vhost, unless it is `/`: records of `/` are the bytes
/// they were before vhosts, so a store written by an older Warren reads the same.
fn vhost(w: &mut Writer<'_>, name: &str) {
    if name != "/" {
        w.long_str(name.as_bytes());
    }
}

/// A topology record's vhost: `/` when the record ends without one.
fn read_vhost(r: &mut Reader) -> Result<String, CodecError> {
    if r.remaining() == 0 { Ok("/".to_string()) } else { string(r) }
}

/// Decodes a metadata record's payload.
pub fn decode_meta(payload: Bytes) -> Result<Meta, DecodeError> {
    let mut r = Reader::new(payload);
    let binding = |r: &mut Reader| -> Result<BindingRecord, CodecError> {
        Ok(BindingRecord {
            source: string(r)?,
            destination: string(r)?,
            to_queue: r.bit()?,
            key: string(r)?,
            arguments: decode_table(r)?,
            vhost: read_vhost(r)?,
        })
    };
    let m = match r.u8()? {
        PUT_QUEUE => Meta::Op(MetaOp::PutQueue(QueueRecord {
            id: r.u64()?,
            name: string(&mut r)?,
            auto_delete: r.bit()?,
            arguments: decode_table(&mut r)?,
            vhost: read_vhost(&mut r)?,
        })),
        DELETE_QUEUE => Meta::Op(MetaOp::DeleteQueue(r.u64()?)),
        PUT_EXCHANGE => Meta::Op(MetaOp::PutExchange(ExchangeRecord {
            name: string(&mut r)?,
            kind: string(&mut r)?,
            auto_delete: r.bit()?,
            internal: r.bit()?,
            arguments: decode_table(&mut r)?,
            vhost: read_vhost(&mut r)?,
        })),
        DELETE_EXCHANGE => {
            let name = string(&mut r)?;
            Meta::Op(MetaOp::DeleteExchange { vhost: read_vhost(&mut r)?, name })
        }
        BIND => Meta::Op(MetaOp::Bind(binding(&mut r)?)),
        UNBIND => Meta::Op(MetaOp::Unbind(binding(&mut r)?)),
        NEXT_QUEUE_ID => Meta::NextQueueId(r.u64()?),
        other => return Err(DecodeError::Kind(other)),
    };
    r.finish()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use warren_codec::{BasicProperties, FieldTable, FieldValue};

    use super::*;

    fn unframe(buf: &[u8]) -> Bytes {
        let (len, crc) = header(buf).expect("header");
        let payload = Bytes::copy_from_slice(&buf[HEADER..HEADER + len]);
        assert_eq!(crc32c::crc32c(&payload), crc);
        payload
    }

    proptest! {
        #[test]
        fn puts_round_trip(
            queue in any::<u64>(), seq in any::<u64>(), count in any::<u32>(),
            expires in proptest::option::of(0..u64::MAX), ready in proptest::option::of(0..u64::MAX),
            key in "[a-z.]{0,40}", body in proptest::collection::vec(any::<u8>(), 0..600),
            persistent in any::<bool>(),
        ) {
            let state = EntryState { delivery_count: count, enqueued_ms: 7, expires_at_ms: expires, ready_at_ms: ready };
            let mut headers = FieldTable::new();
            headers.insert("x-retry-count".into(), FieldValue::I64(3));
            let properties = BasicProperties {
                delivery_mode: Some(if persistent { 2 } else { 1 }),
                headers: Some(headers),
                ..Default::default()
            };
            let message = Message { exchange: "x".into(), routing_key: key, properties: Box::new(properties), body: Bytes::from(body) };
            let mut buf = BytesMut::new();
            frame(&mut buf, |w| put(w, queue, seq, &state, &message));
            let back = decode(unframe(&buf)).expect("decode");
            prop_assert_eq!(back, Record::Put { queue, seq, state, message: Box::new(message) });
        }
    }

    #[test]
    fn metadata_round_trips() {
        for vhost in ["/", "other"] {
            let args: FieldTable = [("x-max-length".to_string(), FieldValue::I32(5))].into_iter().collect();
            let b = BindingRecord {
                vhost: vhost.into(),
                source: "x".into(),
                destination: "q".into(),
                to_queue: true,
                key: "a.#".into(),
                arguments: args.clone(),
            };
            let all = [
                Meta::Op(MetaOp::PutQueue(QueueRecord {
                    id: 9,
                    vhost: vhost.into(),
                    name: "q".into(),
                    auto_delete: true,
                    arguments: args.clone(),
                })),
                Meta::Op(MetaOp::DeleteQueue(9)),
                Meta::Op(MetaOp::PutExchange(ExchangeRecord {
                    vhost: vhost.into(),
                    name: "x".into(),
                    kind: "topic".into(),
                    auto_delete: false,
                    internal: true,
                    arguments: args,
                })),
                Meta::Op(MetaOp::DeleteExchange { vhost: vhost.into(), name: "x".into() }),
                Meta::Op(MetaOp::Bind(b.clone())),
                Meta::Op(MetaOp::Unbind(b)),
                Meta::NextQueueId(10),
            ];
            for m in all {
                let mut buf = BytesMut::new();
                frame(&mut buf, |w| meta(w, &m));
                assert_eq!(decode_meta(unframe(&buf)).expect("decode"), m);
            }
        }
    }

    #[test]
    fn records_of_the_default_vhost_keep_the_format_from_before_vhosts() {
        // A queue record as Warren wrote it before vhosts: id, name, auto-delete, arguments.
        let mut old = BytesMut::new();
        let mut w = Writer::new(&mut old);
        w.u8(PUT_QUEUE);
        w.u64(3);
        w.long_str(b"q");
        w.bit(false);
        encode_table(&mut w, &FieldTable::new());
        let m = Meta::Op(MetaOp::PutQueue(QueueRecord {
            id: 3,
            vhost: "/".into(),
            name: "q".into(),
            auto_delete: false,
            arguments: FieldTable::new(),
        }));
        assert_eq!(decode_meta(old.clone().freeze()).expect("decode"), m);
        let mut new = BytesMut::new();
        meta(&mut Writer::new(&mut new), &m);
        assert_eq!(new, old);
    }

    #[test]
    fn unknown_kinds_are_refused() {
        assert!(matches!(decode(Bytes::from_static(&[99])), Err(DecodeError::Kind(99))));
        assert!(decode(Bytes::from_static(&[PUT, 1])).is_err());
    }
}
