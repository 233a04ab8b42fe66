//! Bytes to packets. A packet is cut from the front of the connection's buffer once all of
//! it is there; its payload stays a view of those bytes (no copy).

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties::{Context, Properties};
use crate::topic;
use crate::wire::{Reader, read_varint};

/// Decodes the packet at the front of `buf`, removing its bytes: `Ok(None)` while more bytes
/// are needed. `version` is the connection's (CONNECT says its own); `max_packet_size`
/// bounds the whole packet and is checked as soon as the remaining length is read, before
/// its body is waited for.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    check_fixed_header(first, version)?;
    let Some((len, n)) = read_varint(&buf[1..])? else { return Ok(None) };
    let size = 1 + n as u64 + u64::from(len);
    if size > u64::from(max_packet_size) {
        return Err(DecodeError::TooLarge { size, max: max_packet_size });
    }
    if (buf.len() as u64) < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size as usize).freeze();
    frame.advance(1 + n);
    let mut r = Reader::new(frame);
    let (kind, flags) = (first >> 4, first & 0x0f);
    let v5 = version == Version::V5;
    let packet = match kind {
        1 => Packet::Connect(Box::new(connect(&mut r)?)),
        2 => Packet::ConnAck(connack(&mut r, v5)?),
        3 => Packet::Publish(publish(&mut r, flags, v5)?),
        4 => Packet::PubAck(ack(&mut r, v5)?),
        5 => Packet::PubRec(ack(&mut r, v5)?),
        6 => Packet::PubRel(ack(&mut r, v5)?),
        7 => Packet::PubComp(ack(&mut r, v5)?),
        8 => Packet::Subscribe(subscribe(&mut r, v5)?),
        9 => Packet::SubAck(suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(reasoned(&mut r, v5, Context::Disconnect)?),
        _ => Packet::Auth(reasoned(&mut r, v5, Context::Auth)?),
    };
    r.end()?;
    Ok(Some(packet))
}

/// The fixed header's first byte: a packet type this version has, with the flags it
/// requires (§2.1.3).
fn check_fixed_header(first: u8, version: Version) -> Result<(), DecodeError> {
    let (kind, flags) = (first >> 4, first & 0x0f);
    match kind {
        0 => Err(DecodeError::Malformed("reserved packet type 0")),
        15 if version == Version::V311 => Err(DecodeError::Malformed("reserved packet type 15")),
        3 if (flags >> 1) & 3 == 3 => Err(DecodeError::Malformed("PUBLISH with QoS 3")),
        3 if flags & 0x08 != 0 && (flags >> 1) & 3 == 0 => {
            Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"))
        }
        3 => Ok(()),
        6 | 8 | 10 if flags != 0b0010 => Err(DecodeError::Malformed("reserved flags are not 0010")),
        6 | 8 | 10 => Ok(()),
        _ if flags != 0 => Err(DecodeError::Malformed("reserved flags are not 0")),
        _ => Ok(()),
    }
}

fn properties(r: &mut Reader, v5: bool, c: Context) -> Result<Properties, DecodeError> {
    if v5 { Properties::read(r, c) } else { Ok(Properties::default()) }
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol("packet identifier 0")),
        id => Ok(id),
    }
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        // MQTT 3.1 (MQIsdp, level 3) is refused as unsupported (CONNACK 0x01): Warren speaks
        // 3.1.1 and 5.
        ("MQTT", _) | ("MQIsdp", 3) => return Err(DecodeError::UnsupportedVersion(level)),
        _ => return Err(DecodeError::Malformed("the protocol name is not MQTT")),
    };
    let v5 = version == Version::V5;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("the reserved connect flag is set"));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_bits((flags >> 3) & 3).ok_or(DecodeError::Malformed("will QoS 3"))?;
    let will_retain = flags & 0x20 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    let (has_password, has_username) = (flags & 0x40 != 0, flags & 0x80 != 0);
    if !v5 && has_password && !has_username {
        return Err(DecodeError::Malformed("a password without a user name"));
    }
    let keep_alive = r.u16()?;
    let properties = properties(r, v5, Context::Connect)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::Protocol("authentication data without a method"));
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = properties_of_will(r, v5)?;
        check_response_topic(&properties)?;
        let topic = r.string()?;
        topic::check_name(&topic).map_err(|_| DecodeError::Protocol("the will topic is not a topic name"))?;
        Some(Will { topic, payload: r.binary()?, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string()?) } else { None };
    let password = if has_password { Some(r.binary()?) } else { None };
    Ok(Connect {
        version,
        client_id,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        username,
        password,
        will,
        properties,
    })
}

fn properties_of_will(r: &mut Reader, v5: bool) -> Result<Properties, DecodeError> {
    properties(r, v5, Context::Will)
}

/// [MQTT-4.7.3-1]: a topic filter is at least one character.
fn non_empty(filter: String) -> Result<String, DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::Protocol("an empty topic filter"));
    }
    Ok(filter)
}

/// [MQTT-3.3.2-14]: a response topic is a topic name, without wildcards.
fn check_response_topic(p: &Properties) -> Result<(), DecodeError> {
    match &p.response_topic {
        Some(t) if topic::check_name(t).is_err() => {
            Err(DecodeError::Protocol("a response topic that is not a topic name"))
        }
        _ => Ok(()),
    }
}

fn connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xfe != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flags are set"));
    }
    let code = r.u8()?;
    Ok(ConnAck { session_present: flags & 1 != 0, code, properties: properties(r, v5, Context::ConnAck)? })
}

fn publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_bits((flags >> 1) & 3).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(packet_id(r)?) };
    let properties = properties(r, v5, Context::Publish)?;
    check_response_topic(&properties)?;
    if topic.is_empty() {
        // MQTT 5 lets a topic alias stand for the topic; 3.1.1 has no empty topic.
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol("an empty topic without a topic alias"));
        }
    } else {
        topic::check_name(&topic).map_err(|_| DecodeError::Protocol("a PUBLISH topic with a wildcard"))?;
    }
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

fn ack(r: &mut Reader, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    // MQTT 5 may leave out the reason code (success) and the properties (none).
    let code = if v5 && r.remaining() > 0 { r.u8()? } else { 0 };
    let properties =
        if v5 && r.remaining() > 0 { Properties::read(r, Context::Ack)? } else { Properties::default() };
    Ok(Ack { packet_id, code, properties })
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, v5, Context::Subscribe)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = non_empty(r.string()?)?;
        let options = r.u8()?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if options & reserved != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits are set"));
        }
        let qos = QoS::from_bits(options & 3).ok_or(DecodeError::Malformed("a subscription with QoS 3"))?;
        let retain_handling = (options >> 4) & 3;
        if retain_handling == 3 {
            return Err(DecodeError::Protocol("retain handling 3"));
        }
        filters.push(Subscription {
            filter,
            qos,
            no_local: options & 0x04 != 0,
            retain_as_published: options & 0x08 != 0,
            retain_handling,
        });
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe { packet_id, properties, filters })
}

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, v5, Context::SubAck)?;
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without a return code"));
    }
    Ok(SubAck { packet_id, properties, codes })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, v5, Context::Unsubscribe)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(non_empty(r.string()?)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe { packet_id, properties, filters })
}

fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    if !v5 {
        return Ok(UnsubAck { packet_id, properties: Properties::default(), codes: Vec::new() });
    }
    let properties = Properties::read(r, Context::SubAck)?;
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK without a reason code"));
    }
    Ok(UnsubAck { packet_id, properties, codes })
}

fn reasoned(r: &mut Reader, v5: bool, c: Context) -> Result<Reasoned, DecodeError> {
    let code = if v5 && r.remaining() > 0 { r.u8()? } else { 0 };
    let properties = if v5 && r.remaining() > 0 { Properties::read(r, c)? } else { Properties::default() };
    Ok(Reasoned { code, properties })
}
