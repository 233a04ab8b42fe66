//! The content header frame and the basic class's properties.

use bytes::{Bytes, BytesMut};

use crate::error::CodecError;
use crate::field::{FieldTable, decode_table, encode_table};
use crate::wire::{Reader, Writer};

/// The class id of `basic`, the only class that carries content.
pub const BASIC_CLASS: u16 = 60;

/// The properties of a message (the basic class's property list).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    /// MIME content type.
    pub content_type: Option<String>,
    /// MIME content encoding.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Priority, 0 to 9.
    pub priority: Option<u8>,
    /// Application correlation identifier.
    pub correlation_id: Option<String>,
    /// Address to reply to.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<String>,
    /// Application message identifier.
    pub message_id: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: Option<u64>,
    /// Message type name.
    pub kind: Option<String>,
    /// Creating user id, validated by RabbitMQ against the connection's user.
    pub user_id: Option<String>,
    /// Creating application id.
    pub app_id: Option<String>,
    /// Deprecated cluster id.
    pub cluster_id: Option<String>,
}

/// A content header frame's payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContentHeader {
    /// The class of the method the content belongs to (always basic).
    pub class_id: u16,
    /// Total body size across all body frames.
    pub body_size: u64,
    /// The message's properties, boxed: at 296 octets they would be copied at every move
    /// between decoding a frame and storing the message; boxed they travel as a pointer.
    pub properties: Box<BasicProperties>,
}

macro_rules! flag {
    ($flags:ident, $bit:literal, $field:expr) => {
        if $field.is_some() {
            $flags |= 1 << $bit;
        }
    };
}

impl ContentHeader {
    /// A basic-class header.
    pub fn basic(body_size: u64, properties: BasicProperties) -> Self {
        ContentHeader { class_id: BASIC_CLASS, body_size, properties: Box::new(properties) }
    }

    /// Appends the payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        encode_header(buf, self.class_id, self.body_size, &self.properties);
    }

    /// Parses a content header frame's payload.
    pub fn decode(payload: Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(payload);
        let class_id = r.u16()?;
        if class_id != BASIC_CLASS {
            return Err(CodecError::BadContentClass(class_id));
        }
        let _weight = r.u16()?;
        let body_size = r.u64()?;
        let flags = r.u16()?;
        // Bit 0 says another flag word follows; basic defines none there, so skip them.
        let mut more = flags & 1 != 0;
        while more {
            more = r.u16()? & 1 != 0;
        }
        let has = |bit: u16| flags & (1 << bit) != 0;
        let short = |r: &mut Reader, bit| {
            if has(bit) { r.short_str().map(Some) } else { Ok(None) }
        };
        let properties = Box::new(BasicProperties {
            content_type: short(&mut r, 15)?,
            content_encoding: short(&mut r, 14)?,
            headers: if has(13) { Some(decode_table(&mut r)?) } else { None },
            delivery_mode: if has(12) { Some(r.u8()?) } else { None },
            priority: if has(11) { Some(r.u8()?) } else { None },
            correlation_id: short(&mut r, 10)?,
            reply_to: short(&mut r, 9)?,
            expiration: short(&mut r, 8)?,
            message_id: short(&mut r, 7)?,
            timestamp: if has(6) { Some(r.u64()?) } else { None },
            kind: short(&mut r, 5)?,
            user_id: short(&mut r, 4)?,
            app_id: short(&mut r, 3)?,
            cluster_id: short(&mut r, 2)?,
        });
        r.finish()?;
        Ok(ContentHeader { class_id, body_size, properties })
    }
}

/// Appends a content header payload for `properties` without building a [`ContentHeader`]
/// (no copy of the properties per delivery).
pub fn encode_header(buf: &mut BytesMut, class_id: u16, body_size: u64, p: &BasicProperties) {
    let mut flags: u16 = 0;
    flag!(flags, 15, p.content_type);
    flag!(flags, 14, p.content_encoding);
    flag!(flags, 13, p.headers);
    flag!(flags, 12, p.delivery_mode);
    flag!(flags, 11, p.priority);
    flag!(flags, 10, p.correlation_id);
    flag!(flags, 9, p.reply_to);
    flag!(flags, 8, p.expiration);
    flag!(flags, 7, p.message_id);
    flag!(flags, 6, p.timestamp);
    flag!(flags, 5, p.kind);
    flag!(flags, 4, p.user_id);
    flag!(flags, 3, p.app_id);
    flag!(flags, 2, p.cluster_id);
    let mut w = Writer::new(buf);
    w.u16(class_id);
    w.u16(0);
    w.u64(body_size);
    w.u16(flags);
    let short = |w: &mut Writer<'_>, s: &Option<String>| {
        if let Some(s) = s {
            w.short_str(s)
        }
    };
    short(&mut w, &p.content_type);
    short(&mut w, &p.content_encoding);
    if let Some(h) = &p.headers {
        encode_table(&mut w, h);
    }
    if let Some(v) = p.delivery_mode {
        w.u8(v);
    }
    if let Some(v) = p.priority {
        w.u8(v);
    }
    short(&mut w, &p.correlation_id);
    short(&mut w, &p.reply_to);
    short(&mut w, &p.expiration);
    short(&mut w, &p.message_id);
    if let Some(v) = p.timestamp {
        w.u64(v);
    }
    short(&mut w, &p.kind);
    short(&mut w, &p.user_id);
    short(&mut w, &p.app_id);
    short(&mut w, &p.cluster_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_the_spec_order() {
        let h = ContentHeader::basic(
            5,
            BasicProperties {
                content_type: Some("text/plain".into()),
                delivery_mode: Some(2),
                ..Default::default()
            },
        );
        let mut buf = BytesMut::new();
        h.encode(&mut buf);
        assert_eq!(&buf[12..14], &[0x90, 0x00]);
        assert_eq!(ContentHeader::decode(buf.freeze()), Ok(h));
    }
}
