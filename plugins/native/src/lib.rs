//! Wraps any of warren-core's exchange types as a plugin [`Exchange`], converting the WIT
//! types at the boundary. The standard types built this way route with the very code the
//! broker runs natively, which is what the host's differential test relies on.

use std::marker::PhantomData;
use std::sync::Arc;

use warren_codec::{BasicProperties, FieldTable, FieldValue as Value};
use warren_core::exchange::{self as native, ExchangeFactory, ExchangeType, RoutingInput};
use warren_plugin_sdk::exchange::{Binding, Destination, Exchange, Field, FieldValue, Fields, Message};

/// A native exchange type `F`, running inside a component.
pub struct Native<F> {
    state: Box<dyn ExchangeType>,
    factory: PhantomData<F>,
}

impl<F: ExchangeFactory + Default + 'static> Exchange for Native<F> {
    fn create(arguments: Fields) -> Result<Self, String> {
        let state = F::default().create(&table(arguments)?).map_err(|e| reason(&e.text))?;
        Ok(Native { state, factory: PhantomData })
    }

    fn routes_on_key_only(&self) -> bool {
        self.state.routes_on_key_only()
    }

    fn validate_binding(&self, binding: &Binding) -> Result<(), String> {
        let arguments = table(binding.arguments.clone())?;
        self.state.validate_binding(&binding.key, &arguments).map_err(|e| reason(&e.text))
    }

    fn add_binding(&mut self, binding: Binding) {
        if let Ok(b) = native_binding(&binding) {
            self.state.add_binding(&b);
        }
    }

    fn remove_binding(&mut self, binding: &Binding) {
        if let Ok(b) = native_binding(binding) {
            self.state.remove_binding(&b);
        }
    }

    fn route(&self, message: &Message, out: &mut Vec<Destination>) {
        let Ok(headers) = table(message.headers.clone()) else { return };
        let p = &message.properties;
        let properties = BasicProperties {
            content_type: p.content_type.clone(),
            content_encoding: p.content_encoding.clone(),
            headers: (!headers.is_empty()).then_some(headers),
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
            cluster_id: None,
        };
        let input = RoutingInput {
            routing_key: &message.routing_key,
            properties: &properties,
            exchange: &message.exchange,
            body_size: message.body_size,
        };
        let mut found = Vec::new();
        if self.state.route(input, &mut found).is_err() {
            return;
        }
        out.extend(found.into_iter().map(|d| match d {
            native::Destination::Queue(q) => Destination::Queue(q.to_string()),
            native::Destination::Exchange(e) => Destination::Exchange(e.to_string()),
        }));
    }
}

/// The text after AMQP's "CODE - " prefix: the host adds its own.
fn reason(text: &str) -> String {
    text.split_once(" - ").map_or(text, |(_, r)| r).to_string()
}

fn native_binding(b: &Binding) -> Result<native::Binding, String> {
    let destination = match &b.destination {
        Destination::Queue(q) => native::Destination::Queue(Arc::from(q.as_str())),
        Destination::Exchange(e) => native::Destination::Exchange(Arc::from(e.as_str())),
    };
    Ok(native::Binding { destination, key: b.key.clone(), arguments: table(b.arguments.clone())? })
}

/// A WIT field list as a native table (a later duplicate name wins, as in RabbitMQ).
fn table(fields: Fields) -> Result<FieldTable, String> {
    fields.into_iter().map(|Field { name, value }| Ok((name, value_of(value)?))).collect()
}

fn value_of(v: FieldValue) -> Result<Value, String> {
    Ok(match v {
        FieldValue::Void => Value::Void,
        FieldValue::Boolean(b) => Value::Bool(b),
        FieldValue::Int8(n) => Value::I8(n),
        FieldValue::Uint8(n) => Value::U8(n),
        FieldValue::Int16(n) => Value::I16(n),
        FieldValue::Uint16(n) => Value::U16(n),
        FieldValue::Int32(n) => Value::I32(n),
        FieldValue::Uint32(n) => Value::U32(n),
        FieldValue::Int64(n) => Value::I64(n),
        FieldValue::Float(n) => Value::F32(n),
        FieldValue::Double(n) => Value::F64(n),
        FieldValue::Decimal(d) => Value::Decimal(warren_codec::Decimal { scale: d.scale, value: d.value }),
        FieldValue::LongString(s) => Value::LongString(s.into()),
        FieldValue::Timestamp(t) => Value::Timestamp(t),
        FieldValue::Bytes(b) => Value::ByteArray(b.into()),
        FieldValue::Nested(wire) => {
            Value::from_wire(&wire).map_err(|e| format!("bad nested field value: {e}"))?
        }
    })
}
