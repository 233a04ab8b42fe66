//! Broker values as WIT values and back. Nested tables and arrays cross as their AMQP wire
//! encoding, since WIT has no recursive types.

use std::sync::Arc;

use warren_codec::{BasicProperties, FieldTable, FieldValue};
use warren_core::exchange::{Binding, Destination};

use crate::bindings::warren::plugin::types as wit;

/// A field table as a WIT field list.
pub(crate) fn fields(t: &FieldTable) -> Vec<wit::Field> {
    t.iter().map(|(name, v)| wit::Field { name: name.clone(), value: value(v) }).collect()
}

fn value(v: &FieldValue) -> wit::FieldValue {
    match v {
        FieldValue::Void => wit::FieldValue::Void,
        FieldValue::Bool(b) => wit::FieldValue::Boolean(*b),
        FieldValue::I8(n) => wit::FieldValue::Int8(*n),
        FieldValue::U8(n) => wit::FieldValue::Uint8(*n),
        FieldValue::I16(n) => wit::FieldValue::Int16(*n),
        FieldValue::U16(n) => wit::FieldValue::Uint16(*n),
        FieldValue::I32(n) => wit::FieldValue::Int32(*n),
        FieldValue::U32(n) => wit::FieldValue::Uint32(*n),
        FieldValue::I64(n) => wit::FieldValue::Int64(*n),
        FieldValue::F32(n) => wit::FieldValue::Float(*n),
        FieldValue::F64(n) => wit::FieldValue::Double(*n),
        FieldValue::Decimal(d) => wit::FieldValue::Decimal(wit::Decimal { scale: d.scale, value: d.value }),
        FieldValue::LongString(s) => wit::FieldValue::LongString(s.to_vec()),
        FieldValue::Timestamp(t) => wit::FieldValue::Timestamp(*t),
        FieldValue::ByteArray(b) => wit::FieldValue::Bytes(b.to_vec()),
        FieldValue::Array(_) | FieldValue::Table(_) => wit::FieldValue::Nested(v.to_wire().to_vec()),
    }
}

/// A message's metadata as the plugin sees it.
pub(crate) fn message(
    exchange: &str,
    routing_key: &str,
    p: &BasicProperties,
    body_size: u64,
) -> wit::Message {
    wit::Message {
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        properties: wit_properties(p),
        headers: p.headers.as_ref().map(fields).unwrap_or_default(),
        body_size,
    }
}

/// Properties as the plugin sees them, headers apart.
pub(crate) fn wit_properties(p: &BasicProperties) -> wit::Properties {
    wit::Properties {
        content_type: p.content_type.clone(),
        content_encoding: p.content_encoding.clone(),
        delivery_mode: p.delivery_mode,
        priority: p.priority,
        correlation_id: p.correlation_id.clone(),
        reply_to: p.reply_to.clone(),
        expiration: p.expiration.clone(),
        message_id: p.message_id.clone(),
        timestamp: p.timestamp,
        kind: p.kind.clone(),
        user_id: p.user_id.clone(),
        app_id: p.app_id.clone(),
    }
}

/// Properties from a plugin, headers apart; refused when a string is no AMQP short string
/// (over 255 octets), which no AMQP client could be sent.
pub(crate) fn properties(p: wit::Properties) -> Result<BasicProperties, String> {
    let strings = [
        ("content-type", &p.content_type),
        ("content-encoding", &p.content_encoding),
        ("correlation-id", &p.correlation_id),
        ("reply-to", &p.reply_to),
        ("expiration", &p.expiration),
        ("message-id", &p.message_id),
        ("type", &p.kind),
        ("user-id", &p.user_id),
        ("app-id", &p.app_id),
    ];
    if let Some((name, _)) = strings.iter().find(|(_, v)| v.as_ref().is_some_and(|s| s.len() > 255)) {
        return Err(format!("property {name} is longer than 255 octets"));
    }
    Ok(BasicProperties {
        content_type: p.content_type,
        content_encoding: p.content_encoding,
        delivery_mode: p.delivery_mode,
        priority: p.priority,
        correlation_id: p.correlation_id,
        reply_to: p.reply_to,
        expiration: p.expiration,
        message_id: p.message_id,
        timestamp: p.timestamp,
        kind: p.kind,
        user_id: p.user_id,
        app_id: p.app_id,
        ..Default::default()
    })
}

/// A binding as the plugin sees it.
pub(crate) fn binding(b: &Binding) -> wit::Binding {
    wit::Binding {
        destination: match &b.destination {
            Destination::Queue(q) => wit::Destination::Queue(q.to_string()),
            Destination::Exchange(e) => wit::Destination::Exchange(e.to_string()),
        },
        key: b.key.clone(),
        arguments: fields(&b.arguments),
    }
}

/// A destination a plugin returned.
pub(crate) fn destination(d: wit::Destination) -> Destination {
    match d {
        wit::Destination::Queue(q) => Destination::Queue(Arc::from(q)),
        wit::Destination::Exchange(e) => Destination::Exchange(Arc::from(e)),
    }
}

/// A field list from a plugin as a table (a later duplicate name wins); a name over 255
/// octets is refused (AMQP could not carry it).
pub(crate) fn table(fields: Vec<wit::Field>) -> Result<FieldTable, String> {
    fields
        .into_iter()
        .map(|f| {
            if f.name.len() > 255 {
                let start: String = f.name.chars().take(32).collect();
                return Err(format!("field name '{start}…' is longer than 255 octets"));
            }
            Ok((f.name, field_value(f.value)?))
        })
        .collect()
}

fn field_value(v: wit::FieldValue) -> Result<FieldValue, String> {
    Ok(match v {
        wit::FieldValue::Void => FieldValue::Void,
        wit::FieldValue::Boolean(b) => FieldValue::Bool(b),
        wit::FieldValue::Int8(n) => FieldValue::I8(n),
        wit::FieldValue::Uint8(n) => FieldValue::U8(n),
        wit::FieldValue::Int16(n) => FieldValue::I16(n),
        wit::FieldValue::Uint16(n) => FieldValue::U16(n),
        wit::FieldValue::Int32(n) => FieldValue::I32(n),
        wit::FieldValue::Uint32(n) => FieldValue::U32(n),
        wit::FieldValue::Int64(n) => FieldValue::I64(n),
        wit::FieldValue::Float(n) => FieldValue::F32(n),
        wit::FieldValue::Double(n) => FieldValue::F64(n),
        wit::FieldValue::Decimal(d) => {
            FieldValue::Decimal(warren_codec::Decimal { scale: d.scale, value: d.value })
        }
        wit::FieldValue::LongString(s) => FieldValue::LongString(s.into()),
        wit::FieldValue::Timestamp(t) => FieldValue::Timestamp(t),
        wit::FieldValue::Bytes(b) => FieldValue::ByteArray(b.into()),
        wit::FieldValue::Nested(wire) => {
            FieldValue::from_wire(&wire).map_err(|e| format!("bad nested field value from plugin: {e}"))?
        }
    })
}
