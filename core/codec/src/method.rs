//! Every method of AMQP 0-9-1's connection, channel, exchange, queue, basic, confirm and tx
//! classes, with RabbitMQ's extensions (exchange.bind/unbind, basic.nack, confirm.select,
//! connection.blocked/unblocked, connection.update-secret).
//!
//! Each method is one line of the table below: its ids, its spec name and its fields in wire
//! order. Field types carry their own encoding ([`Field`]); `bool` is a packed bit.
//! Reserved fields keep their spec names (`reserved_1`) so a round trip is exact.

use bytes::{Bytes, BytesMut};

use crate::error::CodecError;
use crate::field::{FieldTable, decode_table, encode_table};
use crate::wire::{Reader, Writer};

/// A type that can be a method field.
pub trait Field: Sized {
    /// Appends the field.
    fn put(&self, w: &mut Writer<'_>);
    /// Reads the field.
    fn take(r: &mut Reader) -> Result<Self, CodecError>;
}

impl Field for bool {
    fn put(&self, w: &mut Writer<'_>) {
        w.bit(*self)
    }
    fn take(r: &mut Reader) -> Result<Self, CodecError> {
        r.bit()
    }
}

impl Field for u8 {
    fn put(&self, w: &mut Writer<'_>) {
        w.u8(*self)
    }
    fn take(r: &mut Reader) -> Result<Self, CodecError> {
        r.u8()
    }
}

impl Field for u16 {
    fn put(&self, w: &mut Writer<'_>) {
        w.u16(*self)
    }
    fn take(r: &mut Reader) -> Result<Self, CodecError> {
        r.u16()
    }
}

impl Field for u32 {
    fn put(&self, w: &mut Writer<'_>) {
        w.u32(*self)
    }
    fn take(r: &mut Reader) -> Result<Self, CodecError> {
        r.u32()
    }
}

impl Field for u64 {
    fn put(&self, w: &mut Writer<'_>) {
        w.u64(*self)
    }
    fn take(r: &mut Reader) -> Result<Self, CodecError> {
        r.u64()
    }
}

/// Short strings.
impl Field for String {
    fn put(&self, w: &mut Writer<'_>) {
        w.short_str(self)
    }
    fn take(r: &mut Reader) -> Result<Self, CodecError> {
        r.short_str()
    }
}

/// Long strings.
impl Field for Bytes {
    fn put(&self, w: &mut Writer<'_>) {
        w.long_str(self)
    }
    fn take(r: &mut Reader) -> Result<Self, CodecError> {
        r.long_str()
    }
}

impl Field for FieldTable {
    fn put(&self, w: &mut Writer<'_>) {
        encode_table(w, self)
    }
    fn take(r: &mut Reader) -> Result<Self, CodecError> {
        decode_table(r)
    }
}

macro_rules! methods {
    ($( $class:literal, $id:literal, $name:literal, $content:literal,
        $Variant:ident { $($field:ident : $ty:ty),* $(,)? } )*) => {
        $(
            #[doc = concat!("The `", $name, "` method.")]
            #[derive(Debug, Clone, PartialEq, Default)]
            pub struct $Variant {
                $( #[doc = concat!("The `", stringify!($field), "` field.")] pub $field: $ty, )*
            }

            impl From<$Variant> for Method {
                fn from(m: $Variant) -> Method {
                    Method::$Variant(m)
                }
            }
        )*

        /// Any AMQP 0-9-1 method.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method {
            $( #[doc = concat!("`", $name, "`")] $Variant($Variant), )*
        }

        impl Method {
            /// The (class id, method id) pair.
            pub fn ids(&self) -> (u16, u16) {
                match self { $( Method::$Variant(_) => ($class, $id), )* }
            }

            /// The spec name, e.g. `basic.publish`.
            pub fn name(&self) -> &'static str {
                match self { $( Method::$Variant(_) => $name, )* }
            }

            /// Whether a content header and body frames follow this method.
            pub fn has_content(&self) -> bool {
                match self { $( Method::$Variant(_) => $content, )* }
            }

            /// Appends class id, method id and fields.
            pub fn encode(&self, buf: &mut BytesMut) {
                let mut w = Writer::new(buf);
                let (class, id) = self.ids();
                w.u16(class);
                w.u16(id);
                match self {
                    $( Method::$Variant(_m) => { $( Field::put(&_m.$field, &mut w); )* } )*
                }
            }

            /// A proptest strategy over every method with arbitrary fields.
            /// Sets every reserved field (ticket, out-of-band, ...) back to its default: other
            /// implementations write zeroes there whatever they read.
            #[cfg(test)]
            pub(crate) fn clear_reserved(&mut self) {
                match self {
                    $( Method::$Variant(_m) => {
                        $( if stringify!($field).starts_with("reserved") {
                            _m.$field = Default::default();
                        } )*
                    } )*
                }
            }

            #[cfg(test)]
            #[allow(unused_parens)]
            pub(crate) fn arbitrary() -> proptest::strategy::BoxedStrategy<Method> {
                use proptest::strategy::Strategy;
                use crate::proptests::Arb;
                proptest::strategy::Union::new(vec![
                    $( ( $( <$ty as Arb>::arb(), )* proptest::strategy::Just(()) )
                        .prop_map(|( $($field,)* () )| Method::$Variant($Variant { $($field),* }))
                        .boxed(), )*
                ])
                .boxed()
            }

            /// Parses a method frame's payload; every octet must be used.
            pub fn decode(payload: Bytes) -> Result<Method, CodecError> {
                let mut r = Reader::new(payload);
                let class_id = r.u16()?;
                let method_id = r.u16()?;
                let in_method = |e: CodecError| CodecError::MethodFields { class_id, method_id, reason: Box::new(e) };
                let m = match (class_id, method_id) {
                    $( ($class, $id) => Method::$Variant($Variant {
                        $( $field: Field::take(&mut r).map_err(in_method)?, )*
                    }), )*
                    _ => return Err(CodecError::UnknownMethod { class_id, method_id }),
                };
                r.finish().map_err(in_method)?;
                Ok(m)
            }
        }
    };
}

methods! {
    10, 10, "connection.start", false, ConnectionStart {
        version_major: u8, version_minor: u8, server_properties: FieldTable,
        mechanisms: Bytes, locales: Bytes }
    10, 11, "connection.start-ok", false, ConnectionStartOk {
        client_properties: FieldTable, mechanism: String, response: Bytes, locale: String }
    10, 20, "connection.secure", false, ConnectionSecure { challenge: Bytes }
    10, 21, "connection.secure-ok", false, ConnectionSecureOk { response: Bytes }
    10, 30, "connection.tune", false, ConnectionTune {
        channel_max: u16, frame_max: u32, heartbeat: u16 }
    10, 31, "connection.tune-ok", false, ConnectionTuneOk {
        channel_max: u16, frame_max: u32, heartbeat: u16 }
    10, 40, "connection.open", false, ConnectionOpen {
        virtual_host: String, reserved_1: String, reserved_2: bool }
    10, 41, "connection.open-ok", false, ConnectionOpenOk { reserved_1: String }
    10, 50, "connection.close", false, ConnectionClose {
        reply_code: u16, reply_text: String, class_id: u16, method_id: u16 }
    10, 51, "connection.close-ok", false, ConnectionCloseOk {}
    10, 60, "connection.blocked", false, ConnectionBlocked { reason: String }
    10, 61, "connection.unblocked", false, ConnectionUnblocked {}
    10, 70, "connection.update-secret", false, ConnectionUpdateSecret {
        new_secret: Bytes, reason: String }
    10, 71, "connection.update-secret-ok", false, ConnectionUpdateSecretOk {}

    20, 10, "channel.open", false, ChannelOpen { reserved_1: String }
    20, 11, "channel.open-ok", false, ChannelOpenOk { reserved_1: Bytes }
    20, 20, "channel.flow", false, ChannelFlow { active: bool }
    20, 21, "channel.flow-ok", false, ChannelFlowOk { active: bool }
    20, 40, "channel.close", false, ChannelClose {
        reply_code: u16, reply_text: String, class_id: u16, method_id: u16 }
    20, 41, "channel.close-ok", false, ChannelCloseOk {}

    40, 10, "exchange.declare", false, ExchangeDeclare {
        reserved_1: u16, exchange: String, kind: String, passive: bool, durable: bool,
        auto_delete: bool, internal: bool, no_wait: bool, arguments: FieldTable }
    40, 11, "exchange.declare-ok", false, ExchangeDeclareOk {}
    40, 20, "exchange.delete", false, ExchangeDelete {
        reserved_1: u16, exchange: String, if_unused: bool, no_wait: bool }
    40, 21, "exchange.delete-ok", false, ExchangeDeleteOk {}
    40, 30, "exchange.bind", false, ExchangeBind {
        reserved_1: u16, destination: String, source: String, routing_key: String,
        no_wait: bool, arguments: FieldTable }
    40, 31, "exchange.bind-ok", false, ExchangeBindOk {}
    40, 40, "exchange.unbind", false, ExchangeUnbind {
        reserved_1: u16, destination: String, source: String, routing_key: String,
        no_wait: bool, arguments: FieldTable }
    40, 51, "exchange.unbind-ok", false, ExchangeUnbindOk {}

    50, 10, "queue.declare", false, QueueDeclare {
        reserved_1: u16, queue: String, passive: bool, durable: bool, exclusive: bool,
        auto_delete: bool, no_wait: bool, arguments: FieldTable }
    50, 11, "queue.declare-ok", false, QueueDeclareOk {
        queue: String, message_count: u32, consumer_count: u32 }
    50, 20, "queue.bind", false, QueueBind {
        reserved_1: u16, queue: String, exchange: String, routing_key: String,
        no_wait: bool, arguments: FieldTable }
    50, 21, "queue.bind-ok", false, QueueBindOk {}
    50, 30, "queue.purge", false, QueuePurge { reserved_1: u16, queue: String, no_wait: bool }
    50, 31, "queue.purge-ok", false, QueuePurgeOk { message_count: u32 }
    50, 40, "queue.delete", false, QueueDelete {
        reserved_1: u16, queue: String, if_unused: bool, if_empty: bool, no_wait: bool }
    50, 41, "queue.delete-ok", false, QueueDeleteOk { message_count: u32 }
    50, 50, "queue.unbind", false, QueueUnbind {
        reserved_1: u16, queue: String, exchange: String, routing_key: String,
        arguments: FieldTable }
    50, 51, "queue.unbind-ok", false, QueueUnbindOk {}

    60, 10, "basic.qos", false, BasicQos {
        prefetch_size: u32, prefetch_count: u16, global: bool }
    60, 11, "basic.qos-ok", false, BasicQosOk {}
    60, 20, "basic.consume", false, BasicConsume {
        reserved_1: u16, queue: String, consumer_tag: String, no_local: bool, no_ack: bool,
        exclusive: bool, no_wait: bool, arguments: FieldTable }
    60, 21, "basic.consume-ok", false, BasicConsumeOk { consumer_tag: String }
    60, 30, "basic.cancel", false, BasicCancel { consumer_tag: String, no_wait: bool }
    60, 31, "basic.cancel-ok", false, BasicCancelOk { consumer_tag: String }
    60, 40, "basic.publish", true, BasicPublish {
        reserved_1: u16, exchange: String, routing_key: String, mandatory: bool,
        immediate: bool }
    60, 50, "basic.return", true, BasicReturn {
        reply_code: u16, reply_text: String, exchange: String, routing_key: String }
    60, 60, "basic.deliver", true, BasicDeliver {
        consumer_tag: String, delivery_tag: u64, redelivered: bool, exchange: String,
        routing_key: String }
    60, 70, "basic.get", false, BasicGet { reserved_1: u16, queue: String, no_ack: bool }
    60, 71, "basic.get-ok", true, BasicGetOk {
        delivery_tag: u64, redelivered: bool, exchange: String, routing_key: String,
        message_count: u32 }
    60, 72, "basic.get-empty", false, BasicGetEmpty { reserved_1: String }
    60, 80, "basic.ack", false, BasicAck { delivery_tag: u64, multiple: bool }
    60, 90, "basic.reject", false, BasicReject { delivery_tag: u64, requeue: bool }
    60, 100, "basic.recover-async", false, BasicRecoverAsync { requeue: bool }
    60, 110, "basic.recover", false, BasicRecover { requeue: bool }
    60, 111, "basic.recover-ok", false, BasicRecoverOk {}
    60, 120, "basic.nack", false, BasicNack {
        delivery_tag: u64, multiple: bool, requeue: bool }

    85, 10, "confirm.select", false, ConfirmSelect { no_wait: bool }
    85, 11, "confirm.select-ok", false, ConfirmSelectOk {}

    90, 10, "tx.select", false, TxSelect {}
    90, 11, "tx.select-ok", false, TxSelectOk {}
    90, 20, "tx.commit", false, TxCommit {}
    90, 21, "tx.commit-ok", false, TxCommitOk {}
    90, 30, "tx.rollback", false, TxRollback {}
    90, 31, "tx.rollback-ok", false, TxRollbackOk {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_declare_packs_its_five_bits_into_one_octet() {
        let m = Method::from(QueueDeclare {
            queue: "q".into(),
            durable: true,
            no_wait: true,
            ..Default::default()
        });
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        // class, method, ticket, "q", bits, empty table
        assert_eq!(&buf[..], &[0, 50, 0, 10, 0, 0, 1, b'q', 0b10010, 0, 0, 0, 0]);
        assert_eq!(Method::decode(buf.freeze()), Ok(m));
    }

    #[test]
    fn unknown_method_and_trailing_bytes_are_refused() {
        let r = Method::decode(Bytes::from_static(&[0, 60, 0, 99]));
        assert_eq!(r, Err(CodecError::UnknownMethod { class_id: 60, method_id: 99 }));
        let r = Method::decode(Bytes::from_static(&[0, 10, 0, 51, 7]));
        let e = r.expect_err("trailing byte");
        assert_eq!(e.method_ids(), Some((10, 51)));
        assert!(
            matches!(e, CodecError::MethodFields { reason, .. } if *reason == CodecError::TrailingBytes(1))
        );
    }
}
