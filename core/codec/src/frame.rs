//! Frames: splitting a byte stream into frames, and writing frames.
//!
//! The splitter reads the 7-octet header first and refuses an unknown type or a size over
//! frame-max before buffering a single payload octet, so a peer cannot make the server hold
//! more than one frame-max of its input. Payloads are `Bytes` slices of the input buffer: body
//! frames are never copied.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::method::Method;
use crate::properties::{BasicProperties, ContentHeader};

/// The header a client sends first: AMQP 0-9-1.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Octets before a frame's payload: type, channel, size.
pub const FRAME_HEADER_SIZE: usize = 7;
/// Octets a frame adds to its payload: header and end octet.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE + 1;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// The smallest frame-max a peer may negotiate.
pub const FRAME_MIN_SIZE: u32 = 4096;

const TYPE_METHOD: u8 = 1;
const TYPE_HEADER: u8 = 2;
const TYPE_BODY: u8 = 3;
const TYPE_HEARTBEAT: u8 = 8;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// Channel number.
        channel: u16,
        /// The method.
        method: Method,
    },
    /// A content header frame.
    Header {
        /// Channel number.
        channel: u16,
        /// The header (its properties are boxed, so frames stay small as they move).
        header: ContentHeader,
    },
    /// A content body frame.
    Body {
        /// Channel number.
        channel: u16,
        /// A slice of the body.
        payload: Bytes,
    },
    /// A heartbeat frame.
    Heartbeat {
        /// Channel number (0 on the wire from a correct peer).
        channel: u16,
    },
}

impl Frame {
    /// A method frame.
    pub fn method(channel: u16, method: impl Into<Method>) -> Self {
        Frame::Method { channel, method: method.into() }
    }

    /// The channel a frame is on.
    pub fn channel(&self) -> u16 {
        match *self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => channel,
        }
    }

    /// Appends the frame.
    pub fn encode(&self, buf: &mut BytesMut) {
        let (ty, channel) = match self {
            Frame::Method { channel, .. } => (TYPE_METHOD, *channel),
            Frame::Header { channel, .. } => (TYPE_HEADER, *channel),
            Frame::Body { channel, .. } => (TYPE_BODY, *channel),
            Frame::Heartbeat { channel } => (TYPE_HEARTBEAT, *channel),
        };
        encode_frame(buf, ty, channel, |buf| match self {
            Frame::Method { method, .. } => method.encode(buf),
            Frame::Header { header, .. } => header.encode(buf),
            Frame::Body { payload, .. } => buf.put_slice(payload),
            Frame::Heartbeat { .. } => {}
        });
    }
}

/// Appends a frame of type `ty` whose payload `payload` writes.
fn encode_frame(buf: &mut BytesMut, ty: u8, channel: u16, payload: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(ty);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    payload(buf);
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// Appends a method with content: the method frame, a header frame, and body frames cut to
/// fit `frame_max` (0 means no limit).
pub fn encode_content(
    buf: &mut BytesMut,
    channel: u16,
    method: impl Into<Method>,
    properties: &BasicProperties,
    body: &Bytes,
    frame_max: u32,
) {
    Frame::method(channel, method).encode(buf);
    encode_header_and_body(buf, channel, properties, body, frame_max);
}

/// The header frame and body frames of a message, bodies cut to fit `frame_max`.
fn encode_header_and_body(
    buf: &mut BytesMut,
    channel: u16,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) {
    encode_frame(buf, TYPE_HEADER, channel, |buf| {
        crate::properties::encode_header(buf, crate::BASIC_CLASS, body.len() as u64, properties)
    });
    let chunk = match frame_max {
        0 => body.len().max(1),
        n => (n as usize).saturating_sub(FRAME_OVERHEAD).max(1),
    };
    for payload in body.chunks(chunk) {
        encode_frame(buf, TYPE_BODY, channel, |buf| buf.put_slice(payload));
    }
}

/// basic.deliver's fields, borrowed, so a broker can encode a delivery straight from a
/// shared message without building a [`crate::BasicDeliver`] (and copying its strings).
#[derive(Debug, Clone, Copy)]
pub struct Deliver<'a> {
    /// The consumer's tag.
    pub consumer_tag: &'a str,
    /// The delivery tag.
    pub delivery_tag: u64,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: &'a str,
    /// Its routing key.
    pub routing_key: &'a str,
}

impl Deliver<'_> {
    /// Appends the method frame, the header frame and the body frames, as
    /// [`encode_content`] does for a [`crate::BasicDeliver`].
    pub fn encode(
        &self,
        buf: &mut BytesMut,
        channel: u16,
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) {
        encode_frame(buf, TYPE_METHOD, channel, |buf| {
            let mut w = crate::wire::Writer::new(buf);
            let (class_id, method_id) = (60, 60);
            w.u16(class_id);
            w.u16(method_id);
            w.short_str(self.consumer_tag);
            w.u64(self.delivery_tag);
            w.bit(self.redelivered);
            w.short_str(self.exchange);
            w.short_str(self.routing_key);
        });
        encode_header_and_body(buf, channel, properties, body, frame_max);
    }
}

/// Splits one complete encoded frame off the front of `buf` without decoding its payload:
/// its channel and its bytes. For routing frames this side encoded (well-formed by
/// construction); returns None when `buf` holds no complete frame.
pub fn split_encoded(buf: &mut BytesMut) -> Option<(u16, Bytes)> {
    if buf.len() < FRAME_HEADER_SIZE {
        return None;
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let total = size + FRAME_OVERHEAD;
    if buf.len() < total {
        return None;
    }
    Some((channel, buf.split_to(total).freeze()))
}

/// The most [`decode_frame`] reserves ahead for a frame it has only the header of.
const MAX_RESERVE: usize = 256 * 1024;

/// Takes one frame off the front of `buf`, or `Ok(None)` when more bytes are needed.
///
/// `frame_max` is the negotiated maximum frame size including overhead; 0 means no limit.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, CodecError> {
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let ty = buf[0];
    if !matches!(ty, TYPE_METHOD | TYPE_HEADER | TYPE_BODY | TYPE_HEARTBEAT) {
        return Err(CodecError::UnknownFrameType(ty));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    let total = u64::from(size) + FRAME_OVERHEAD as u64;
    if frame_max != 0 && total > u64::from(frame_max) {
        return Err(CodecError::FrameTooLarge { size: total, max: frame_max });
    }
    let total = total as usize;
    if buf.len() < total {
        // A hint only: the announced size is the peer's word, so never reserve more than a
        // frame a real client sends at once; the buffer grows as bytes actually arrive.
        buf.reserve((total - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(CodecError::BadFrameEnd(end));
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(FRAME_HEADER_SIZE);
    let payload = frame.slice(..size as usize);
    let frame = match ty {
        TYPE_METHOD => Frame::Method { channel, method: Method::decode(payload)? },
        TYPE_HEADER => Frame::Header { channel, header: ContentHeader::decode(payload)? },
        TYPE_BODY => Frame::Body { channel, payload },
        _ => Frame::Heartbeat { channel },
    };
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_borrowed_deliver_encodes_as_basic_deliver_does() {
        let mut headers = crate::FieldTable::new();
        headers.insert("k".into(), crate::FieldValue::I64(1));
        let props = BasicProperties { delivery_mode: Some(2), headers: Some(headers), ..Default::default() };
        let body = Bytes::from(vec![7u8; 10_000]);
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        let m = crate::BasicDeliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "x".into(),
            routing_key: "a.b".into(),
        };
        encode_content(&mut a, 3, m, &props, &body, 4096);
        let d = Deliver {
            consumer_tag: "ctag",
            delivery_tag: 42,
            redelivered: true,
            exchange: "x",
            routing_key: "a.b",
        };
        d.encode(&mut b, 3, &props, &body, 4096);
        assert_eq!(a, b);
    }

    use super::*;
    use crate::method::{BasicPublish, ConnectionTuneOk};

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        Frame::method(0, ConnectionTuneOk { channel_max: 1, frame_max: 4096, heartbeat: 60 })
            .encode(&mut whole);
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let got = decode_frame(&mut buf, 4096);
            assert_eq!(got.as_ref().map(Option::is_some), Ok(i == whole.len() - 1));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_frame_is_refused_from_its_header_alone() {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 1, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, 4096), Err(CodecError::FrameTooLarge { size: 65544, max: 4096 }));
    }

    #[test]
    fn split_encoded_routes_whole_frames_by_channel() {
        let mut buf = BytesMut::new();
        Frame::Heartbeat { channel: 0 }.encode(&mut buf);
        encode_content(
            &mut buf,
            7,
            BasicPublish::default(),
            &BasicProperties::default(),
            &Bytes::from_static(b"x"),
            0,
        );
        let mut got = Vec::new();
        while let Some((ch, bytes)) = split_encoded(&mut buf) {
            got.push((ch, bytes.len()));
        }
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 7, 7, 7]);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_end_octet_and_type_are_refused() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xCD][..]);
        assert_eq!(decode_frame(&mut buf, 0), Err(CodecError::BadFrameEnd(0xCD)));
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(decode_frame(&mut buf, 0), Err(CodecError::UnknownFrameType(9)));
    }

    #[test]
    fn content_is_split_to_frame_max() {
        let mut buf = BytesMut::new();
        let body = Bytes::from(vec![7u8; 10_000]);
        encode_content(&mut buf, 1, BasicPublish::default(), &BasicProperties::default(), &body, 4096);
        let mut frames = Vec::new();
        while let Ok(Some(f)) = decode_frame(&mut buf, 4096) {
            frames.push(f);
        }
        assert_eq!(frames.len(), 2 + 3);
        let total: usize = frames
            .iter()
            .map(|f| match f {
                Frame::Body { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, 10_000);
    }
}
