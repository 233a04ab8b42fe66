//! Property tests: every frame round-trips through our codec, agrees byte for byte with the
//! `amq-protocol` crate (an independent implementation, used only here as an oracle), and
//! decoding arbitrary bytes never panics.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::field::{Decimal, FieldTable, FieldValue};
use crate::frame::{Frame, decode_frame};
use crate::method::Method;
use crate::properties::{BasicProperties, ContentHeader};

/// A strategy for one field type.
pub trait Arb: Sized {
    /// Arbitrary values of the type.
    fn arb() -> BoxedStrategy<Self>;
}

macro_rules! arb_any {
    ($($t:ty),*) => { $( impl Arb for $t { fn arb() -> BoxedStrategy<Self> { any::<$t>().boxed() } } )* };
}
arb_any!(bool, u8, u16, u32, u64);

impl Arb for String {
    fn arb() -> BoxedStrategy<Self> {
        // Up to 60 characters of any Unicode stays within a short string's 255 octets.
        ".{0,60}".boxed()
    }
}

impl Arb for Bytes {
    fn arb() -> BoxedStrategy<Self> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from).boxed()
    }
}

impl Arb for FieldTable {
    fn arb() -> BoxedStrategy<Self> {
        table(field_value())
    }
}

fn table(values: BoxedStrategy<FieldValue>) -> BoxedStrategy<FieldTable> {
    proptest::collection::btree_map("[a-zA-Z0-9_.-]{0,20}", values, 0..6).boxed()
}

fn field_value() -> BoxedStrategy<FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        proptest::num::f32::NORMAL.prop_map(FieldValue::F32),
        proptest::num::f64::NORMAL.prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal(Decimal { scale, value })),
        Bytes::arb().prop_map(FieldValue::LongString),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        Bytes::arb().prop_map(FieldValue::ByteArray),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(FieldValue::Array),
            table(inner.boxed()).prop_map(FieldValue::Table),
        ]
    })
    .boxed()
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    let s = || proptest::option::of(String::arb());
    (
        (s(), s(), proptest::option::of(FieldTable::arb()), any::<Option<u8>>(), any::<Option<u8>>()),
        (s(), s(), s(), s(), any::<Option<u64>>()),
        (s(), s(), s(), s()),
    )
        .prop_map(|((ct, ce, h, dm, pr), (corr, reply, exp, id, ts), (kind, user, app, cluster))| {
            BasicProperties {
                content_type: ct,
                content_encoding: ce,
                headers: h,
                delivery_mode: dm,
                priority: pr,
                correlation_id: corr,
                reply_to: reply,
                expiration: exp,
                message_id: id,
                timestamp: ts,
                kind,
                user_id: user,
                app_id: app,
                cluster_id: cluster,
            }
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), Method::arbitrary()).prop_map(|(channel, method)| Frame::Method { channel, method }),
        (any::<u16>(), any::<u64>(), properties())
            .prop_map(|(channel, size, p)| Frame::Header { channel, header: ContentHeader::basic(size, p) }),
        (any::<u16>(), Bytes::arb()).prop_map(|(channel, payload)| Frame::Body { channel, payload }),
        Just(Frame::Heartbeat { channel: 0 }),
    ]
}

/// Frames as amq-protocol writes them: reserved fields zero, and basic.qos prefetch-size zero
/// (it drops that field, which RabbitMQ does not implement either).
fn canonical(f: Frame) -> Frame {
    match f {
        Frame::Method { channel, mut method } => {
            method.clear_reserved();
            if let Method::BasicQos(q) = &mut method {
                q.prefetch_size = 0;
            }
            Frame::Method { channel, method }
        }
        other => other,
    }
}

fn encode(f: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_round_trips(f in frame()) {
        let mut buf = encode(&f);
        let back = decode_frame(&mut buf, 0);
        prop_assert_eq!(back, Ok(Some(f)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn amq_protocol_parses_what_we_encode_and_re_encodes_the_same_bytes(f in frame().prop_map(canonical)) {
        let ours = encode(&f);
        let (rest, theirs) = parse_frame(&ours[..]).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert!(rest.is_empty());
        let again = gen_frame(&theirs)(WriteContext::from(Vec::new()))
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
            .write;
        prop_assert_eq!(&again[..], &ours[..]);
    }

    #[test]
    fn we_decode_what_amq_protocol_encodes(f in frame().prop_map(canonical)) {
        // Their frame built from our bytes, then their encoding decoded by us.
        let ours = encode(&f);
        let (_, theirs): (_, AMQPFrame) = parse_frame(&ours[..]).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let bytes = gen_frame(&theirs)(WriteContext::from(Vec::new()))
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
            .write;
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode_frame(&mut buf, 0), Ok(Some(f)));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0u32..2048) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_frame(&mut buf, max) {}
    }

    #[test]
    fn decoding_corrupted_frames_never_panics(f in frame(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut buf = encode(&f);
        let i = at.index(buf.len());
        buf[i] = byte;
        while let Ok(Some(_)) = decode_frame(&mut buf, 0) {}
    }
}
