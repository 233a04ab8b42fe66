//! MQTT 5 properties (§2.2.2): which packet may carry which, read and written. A property
//! a packet may not carry, or one given twice where only User Property and Subscription
//! Identifier may repeat, is a protocol error.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::wire::{Reader, put_binary, put_string, put_varint};

/// Where a property list stands, which decides the properties allowed in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// CONNECT's own.
    Connect,
    /// A will message's, in CONNECT's payload.
    Will,
    /// CONNACK.
    ConnAck,
    /// PUBLISH.
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    /// SUBSCRIBE.
    Subscribe,
    /// SUBACK and UNSUBACK.
    SubAck,
    /// UNSUBSCRIBE.
    Unsubscribe,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

/// The properties of one packet; `None` or empty is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01: the payload is UTF-8 (1) or unspecified bytes (0).
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds the message lives.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: the payload's content type.
    pub content_type: Option<String>,
    /// 0x08: where a response goes.
    pub response_topic: Option<String>,
    /// 0x09: what ties a response to its request.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifiers (one in SUBSCRIBE, any number in PUBLISH).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11: seconds the session outlives the connection.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: the client identifier the server chose.
    pub assigned_client_identifier: Option<String>,
    /// 0x13: the keep-alive the server imposes.
    pub server_keep_alive: Option<u16>,
    /// 0x15: the extended authentication method.
    pub authentication_method: Option<String>,
    /// 0x16: its data.
    pub authentication_data: Option<Bytes>,
    /// 0x17: whether reason strings may be sent.
    pub request_problem_information: Option<u8>,
    /// 0x18: seconds the will waits after the connection ends.
    pub will_delay_interval: Option<u32>,
    /// 0x19: whether the client asks for response information.
    pub request_response_information: Option<u8>,
    /// 0x1A: the basis of response topics.
    pub response_information: Option<String>,
    /// 0x1C: another server to use.
    pub server_reference: Option<String>,
    /// 0x1F: a human-readable reason.
    pub reason_string: Option<String>,
    /// 0x21: QoS 1 and 2 publishes the sender takes in flight at once.
    pub receive_maximum: Option<u16>,
    /// 0x22: the highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: a topic alias.
    pub topic_alias: Option<u16>,
    /// 0x24: the highest QoS the server supports.
    pub maximum_qos: Option<u8>,
    /// 0x25: whether the server keeps retained messages.
    pub retain_available: Option<u8>,
    /// 0x26: name–value pairs, in order, repeats allowed.
    pub user_properties: Vec<(String, String)>,
    /// 0x27: the largest packet the sender accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether wildcard subscriptions are available.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29: whether subscription identifiers are available.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A: whether shared subscriptions are available.
    pub shared_subscription_available: Option<u8>,
}

/// User properties one packet may carry: the specification sets no number, and a packet
/// of empty pairs (5 bytes each) would otherwise cost ten times its size in memory.
pub const MAX_USER_PROPERTIES: usize = 1024;

/// Which contexts may carry property `id` (§2.2.2.2's table).
pub(crate) fn allowed(id: u8, c: Context) -> bool {
    use Context::*;
    match id {
        0x01..=0x03 | 0x08 | 0x09 => matches!(c, Publish | Will),
        0x0B => matches!(c, Publish | Subscribe),
        0x11 => matches!(c, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28..=0x2A => c == ConnAck,
        0x15 | 0x16 => matches!(c, Connect | ConnAck | Auth),
        0x17 | 0x19 => c == Connect,
        0x18 => c == Will,
        0x1C => matches!(c, ConnAck | Disconnect),
        0x1F => matches!(c, ConnAck | Ack | SubAck | Disconnect | Auth),
        0x21 | 0x22 | 0x27 => matches!(c, Connect | ConnAck),
        0x23 => c == Publish,
        0x26 => true,
        _ => false,
    }
}

fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.replace(v).is_some() {
        return Err(DecodeError::Protocol("a property appears twice"));
    }
    Ok(())
}

fn flag(r: &mut Reader) -> Result<u8, DecodeError> {
    let b = r.u8()?;
    if b > 1 {
        return Err(DecodeError::Protocol("a boolean property is neither 0 nor 1"));
    }
    Ok(b)
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property list (its length, then the properties) in context `c`.
    pub fn read(r: &mut Reader, c: Context) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = Reader::new(r.take(len)?);
        let mut p = Properties::default();
        while r.remaining() > 0 {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
            // §2.2.2.2: an identifier not valid for the packet is a Malformed Packet, known
            // elsewhere or not.
            if !allowed(id, c) {
                return Err(DecodeError::Malformed("a property this packet may not carry"));
            }
            match id {
                0x01 => once(&mut p.payload_format_indicator, flag(&mut r)?)?,
                0x02 => once(&mut p.message_expiry_interval, r.u32()?)?,
                0x03 => once(&mut p.content_type, r.string()?)?,
                0x08 => once(&mut p.response_topic, r.string()?)?,
                0x09 => once(&mut p.correlation_data, r.binary()?)?,
                0x0B => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("a subscription identifier of 0"));
                    }
                    if c == Context::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("a property appears twice"));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => once(&mut p.session_expiry_interval, r.u32()?)?,
                0x12 => once(&mut p.assigned_client_identifier, r.string()?)?,
                0x13 => once(&mut p.server_keep_alive, r.u16()?)?,
                0x15 => once(&mut p.authentication_method, r.string()?)?,
                0x16 => once(&mut p.authentication_data, r.binary()?)?,
                0x17 => once(&mut p.request_problem_information, flag(&mut r)?)?,
                0x18 => once(&mut p.will_delay_interval, r.u32()?)?,
                0x19 => once(&mut p.request_response_information, flag(&mut r)?)?,
                0x1A => once(&mut p.response_information, r.string()?)?,
                0x1C => once(&mut p.server_reference, r.string()?)?,
                0x1F => once(&mut p.reason_string, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("a receive maximum of 0"));
                    }
                    once(&mut p.receive_maximum, v)?
                }
                0x22 => once(&mut p.topic_alias_maximum, r.u16()?)?,
                0x23 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("a topic alias of 0"));
                    }
                    once(&mut p.topic_alias, v)?
                }
                0x24 => once(&mut p.maximum_qos, flag(&mut r)?)?,
                0x25 => once(&mut p.retain_available, flag(&mut r)?)?,
                0x26 => {
                    if p.user_properties.len() >= MAX_USER_PROPERTIES {
                        return Err(DecodeError::Protocol("more user properties than Warren takes"));
                    }
                    let (k, v) = (r.string()?, r.string()?);
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("a maximum packet size of 0"));
                    }
                    once(&mut p.maximum_packet_size, v)?
                }
                0x28 => once(&mut p.wildcard_subscription_available, flag(&mut r)?)?,
                0x29 => once(&mut p.subscription_identifier_available, flag(&mut r)?)?,
                0x2A => once(&mut p.shared_subscription_available, flag(&mut r)?)?,
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        Ok(p)
    }

    /// Writes the property list, its length first.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut body = BytesMut::new();
        self.write_body(&mut body)?;
        let len = u32::try_from(body.len()).map_err(|_| EncodeError::PacketTooLarge(body.len()))?;
        put_varint(out, len)?;
        out.put_slice(&body);
        Ok(())
    }

    fn write_body(&self, b: &mut BytesMut) -> Result<(), EncodeError> {
        let byte = |b: &mut BytesMut, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u8(v);
            }
        };
        let short = |b: &mut BytesMut, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u16(v);
            }
        };
        let long = |b: &mut BytesMut, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u32(v);
            }
        };
        let string = |b: &mut BytesMut, id: u8, v: &Option<String>| -> Result<(), EncodeError> {
            if let Some(v) = v {
                b.put_u8(id);
                put_string(b, v)?;
            }
            Ok(())
        };
        let binary = |b: &mut BytesMut, id: u8, v: &Option<Bytes>| -> Result<(), EncodeError> {
            if let Some(v) = v {
                b.put_u8(id);
                put_binary(b, v)?;
            }
            Ok(())
        };
        byte(b, 0x01, self.payload_format_indicator);
        long(b, 0x02, self.message_expiry_interval);
        string(b, 0x03, &self.content_type)?;
        string(b, 0x08, &self.response_topic)?;
        binary(b, 0x09, &self.correlation_data)?;
        for &id in &self.subscription_identifiers {
            b.put_u8(0x0B);
            put_varint(b, id)?;
        }
        long(b, 0x11, self.session_expiry_interval);
        string(b, 0x12, &self.assigned_client_identifier)?;
        short(b, 0x13, self.server_keep_alive);
        string(b, 0x15, &self.authentication_method)?;
        binary(b, 0x16, &self.authentication_data)?;
        byte(b, 0x17, self.request_problem_information);
        long(b, 0x18, self.will_delay_interval);
        byte(b, 0x19, self.request_response_information);
        string(b, 0x1A, &self.response_information)?;
        string(b, 0x1C, &self.server_reference)?;
        string(b, 0x1F, &self.reason_string)?;
        short(b, 0x21, self.receive_maximum);
        short(b, 0x22, self.topic_alias_maximum);
        short(b, 0x23, self.topic_alias);
        byte(b, 0x24, self.maximum_qos);
        byte(b, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            b.put_u8(0x26);
            put_string(b, k)?;
            put_string(b, v)?;
        }
        long(b, 0x27, self.maximum_packet_size);
        byte(b, 0x28, self.wildcard_subscription_available);
        byte(b, 0x29, self.subscription_identifier_available);
        byte(b, 0x2A, self.shared_subscription_available);
        Ok(())
    }
}
