//! The retained messages on disk: written whole, at most once a second while they change
//! and at shutdown (RabbitMQ's MQTT plugin keeps them in a disk table saved periodically as
//! well), to a new file made durable and then renamed over the old one, so a crash leaves
//! either the old file or the new one. Read at start.
//!
//! Format: `WRNRET1\n`, then records: u32 length, then vhost, exchange and routing key (each
//! a u8 length and octets), the AMQP content header of the properties (u32 length and
//! payload, its body size the body's), and the body.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use warren_codec::ContentHeader;
use warren_core::message::Message;

const MAGIC: &[u8] = b"WRNRET1\n";
/// The largest record read back: a retained message is at most an adapter's packet.
const MAX_RECORD: usize = 512 << 20;
/// The largest file read back.
const MAX_FILE: u64 = 4 << 30;

/// Retained messages with their vhosts.
pub type Entries = Vec<(String, Arc<Message>)>;

/// The file's name in the data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("adapter-retained.bin")
}

/// Why the file could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// It is larger than any this broker writes.
    #[error("{path} is {size} octets, more than the {MAX_FILE} allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not a retained-messages file, or damaged at `offset`; the records before are good.
    #[error("{path} is damaged at octet {offset}: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: usize,
        /// What is wrong.
        why: String,
    },
}

/// The records of `entries`, as the file holds them.
pub fn encode(entries: &[(String, Arc<Message>)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(MAGIC);
    for (vhost, m) in entries {
        let mut header = BytesMut::new();
        ContentHeader::basic(m.body.len() as u64, (*m.properties).clone()).encode(&mut header);
        let names = [vhost.as_str(), m.exchange.as_str(), m.routing_key.as_str()];
        // Names over 255 octets are none a broker accepts; such an entry is not written.
        if names.iter().any(|n| n.len() > 255) {
            continue;
        }
        let len = names.iter().map(|n| 1 + n.len()).sum::<usize>() + 4 + header.len() + m.body.len();
        out.put_u32(len as u32);
        for n in names {
            out.put_u8(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
        }
        out.put_u32(header.len() as u32);
        out.extend_from_slice(&header);
        out.extend_from_slice(&m.body);
    }
    out.freeze().to_vec()
}

/// The records of a file's contents: every good one, and what stopped the read early.
pub fn decode(bytes: Bytes) -> (Entries, Option<(usize, String)>) {
    let mut entries = Vec::new();
    if !bytes.starts_with(MAGIC) {
        return (entries, Some((0, "not a retained-messages file".into())));
    }
    let mut at = MAGIC.len();
    let mut first_error = None;
    while at < bytes.len() {
        // The framing: a length that fits. Past a record that does not read, the next one
        // still can; past framing that does not hold, nothing can be trusted.
        let mut r = bytes.slice(at..);
        let len = if r.remaining() >= 4 { r.get_u32() as usize } else { usize::MAX };
        if len > MAX_RECORD || len > r.remaining() {
            let why = format!("a record's length ({len}) runs past the end or the {MAX_RECORD} allowed");
            return (entries, first_error.or(Some((at, why))));
        }
        match record(r.slice(..len)) {
            Ok(entry) => entries.push(entry),
            Err(why) => {
                first_error.get_or_insert((at, why));
            }
        }
        at += 4 + len;
    }
    (entries, first_error)
}

fn record(mut rec: Bytes) -> Result<(String, Arc<Message>), String> {
    let name = |rec: &mut Bytes| -> Result<String, String> {
        if !rec.has_remaining() {
            return Err("a name is cut short".into());
        }
        let n = rec.get_u8() as usize;
        if rec.remaining() < n {
            return Err("a name is cut short".into());
        }
        let s = rec.split_to(n);
        String::from_utf8(s.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    };
    let (vhost, exchange, routing_key) = (name(&mut rec)?, name(&mut rec)?, name(&mut rec)?);
    if rec.remaining() < 4 {
        return Err("a header's length is cut short".into());
    }
    let header_len = rec.get_u32() as usize;
    if rec.remaining() < header_len {
        return Err("a header is cut short".into());
    }
    let header = ContentHeader::decode(rec.split_to(header_len)).map_err(|e| format!("a header: {e}"))?;
    if header.body_size != rec.remaining() as u64 {
        return Err("a body's size is not its header's".into());
    }
    // The body copied out of the file's buffer, which would otherwise stay whole in memory
    // while any restored message does.
    let m =
        Message { exchange, routing_key, properties: header.properties, body: Bytes::copy_from_slice(&rec) };
    Ok((vhost, Arc::new(m)))
}

/// Reads the file at `path`; none yet is no entries.
pub fn load(path: &Path) -> Result<Entries, (Entries, ReadError)> {
    let io = |source| (Vec::new(), ReadError::Io { path: path.to_path_buf(), source });
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    if size > MAX_FILE {
        return Err((Vec::new(), ReadError::TooLarge { path: path.to_path_buf(), size }));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    match decode(Bytes::from(bytes)) {
        (entries, None) => Ok(entries),
        (entries, Some((offset, why))) => {
            Err((entries, ReadError::Damaged { path: path.to_path_buf(), offset, why }))
        }
    }
}

/// Writes `bytes` as the file at `path`: a new file, synced, renamed over the old one, and
/// the directory synced, so the old file stays whole until the new one is.
pub fn save(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("bin.new");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_codec::{BasicProperties, FieldTable, FieldValue};

    fn message(key: &str, body: &'static [u8]) -> Arc<Message> {
        let mut headers = FieldTable::new();
        headers.insert("x-mqtt-publish-qos".into(), FieldValue::U8(1));
        let properties =
            BasicProperties { delivery_mode: Some(2), headers: Some(headers), ..Default::default() };
        Arc::new(Message {
            exchange: "amq.topic".into(),
            routing_key: key.into(),
            properties: Box::new(properties),
            body: Bytes::from_static(body),
        })
    }

    #[test]
    fn records_round_trip_and_a_damaged_tail_keeps_the_records_before_it() {
        let entries = vec![("/".to_string(), message("a.b", b"one")), ("v".to_string(), message("c", b""))];
        let bytes = encode(&entries);
        let (back, error) = decode(Bytes::from(bytes.clone()));
        assert!(error.is_none(), "{error:?}");
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[0].0.as_str(), back[0].1.routing_key.as_str(), &back[0].1.body[..]),
            ("/", "a.b", &b"one"[..])
        );
        assert_eq!(back[0].1.properties, entries[0].1.properties);
        // A record whose header does not read is skipped; the one after it is kept.
        let mut bad = bytes.clone();
        let header_at = MAGIC.len() + 4 + 2 + 1 + 10 + 4 + 4;
        bad[header_at] ^= 0xFF;
        let (back, error) = decode(Bytes::from(bad));
        assert_eq!(back.len(), 1, "the second record survives the first's damage");
        assert!(error.is_some_and(|(at, _)| at == MAGIC.len()));
        // Cut anywhere in the second record: the first survives, the damage is named.
        for cut in bytes.len() - 8..bytes.len() {
            let (back, error) = decode(Bytes::from(bytes[..cut].to_vec()));
            assert_eq!(back.len(), 1, "cut at {cut}");
            assert!(error.is_some());
        }
        let (back, error) = decode(Bytes::from_static(b"something else"));
        assert!(back.is_empty() && error.is_some());
    }

    #[test]
    fn a_save_replaces_the_file_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        assert!(load(&p).map(|e| e.is_empty()).unwrap_or(false), "no file yet: nothing retained");
        save(&p, &encode(&[("/".to_string(), message("k", b"v1"))])).expect("saved");
        save(&p, &encode(&[("/".to_string(), message("k", b"v2"))])).expect("saved");
        let back = load(&p).unwrap_or_default();
        assert_eq!(&back[0].1.body[..], b"v2");
        assert!(!p.with_extension("bin.new").exists());
    }
}
