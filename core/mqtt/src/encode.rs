//! Packets to bytes: what [`crate::decode`] reads back as the same packet.

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::*;
use crate::properties::Properties;
use crate::wire::{put_binary, put_string, put_varint};

/// Appends `packet` to `out` as `version` says it. A packet the version cannot carry
/// (properties or reason codes in 3.1.1, AUTH there) is an error, never silently trimmed.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = version == Version::V5;
    // Everything but a PUBLISH payload goes through `body`, which is small; the payload is
    // copied once, into `out`.
    let mut body = BytesMut::new();
    let mut payload: &[u8] = &[];
    let mut flags = 0u8;
    match packet {
        Packet::Connect(c) => connect(c, &mut body)?,
        Packet::ConnAck(c) => {
            body.put_u8(u8::from(c.session_present));
            body.put_u8(c.code);
            props(&c.properties, v5, &mut body)?;
        }
        Packet::Publish(p) => {
            flags = (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain);
            put_string(&mut body, &p.topic)?;
            match (p.qos, p.packet_id) {
                (QoS::AtMostOnce, None) => {}
                (QoS::AtMostOnce, Some(_)) => {
                    return Err(EncodeError::Invalid("a QoS 0 PUBLISH with a packet id"));
                }
                (_, Some(id)) if id != 0 => body.put_u16(id),
                (_, _) => return Err(EncodeError::Invalid("a QoS 1 or 2 PUBLISH without a packet id")),
            }
            if p.qos == QoS::AtMostOnce && p.dup {
                return Err(EncodeError::Invalid("DUP on a QoS 0 PUBLISH"));
            }
            props(&p.properties, v5, &mut body)?;
            payload = &p.payload;
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubComp(a) => ack(a, v5, &mut body)?,
        Packet::PubRel(a) => {
            flags = 0b0010;
            ack(a, v5, &mut body)?;
        }
        Packet::Subscribe(s) => {
            flags = 0b0010;
            body.put_u16(s.packet_id);
            props(&s.properties, v5, &mut body)?;
            if s.filters.is_empty() {
                return Err(EncodeError::Invalid("SUBSCRIBE without a filter"));
            }
            for f in &s.filters {
                put_string(&mut body, &f.filter)?;
                if f.retain_handling > 2 {
                    return Err(EncodeError::Invalid("retain handling above 2"));
                }
                let extra =
                    u8::from(f.no_local) << 2 | u8::from(f.retain_as_published) << 3 | f.retain_handling << 4;
                if !v5 && extra != 0 {
                    return Err(EncodeError::Invalid("MQTT 5 subscription options in 3.1.1"));
                }
                body.put_u8(f.qos as u8 | extra);
            }
        }
        Packet::SubAck(s) => {
            body.put_u16(s.packet_id);
            props(&s.properties, v5, &mut body)?;
            body.put_slice(&s.codes);
        }
        Packet::Unsubscribe(u) => {
            flags = 0b0010;
            body.put_u16(u.packet_id);
            props(&u.properties, v5, &mut body)?;
            for f in &u.filters {
                put_string(&mut body, f)?;
            }
        }
        Packet::UnsubAck(u) => {
            body.put_u16(u.packet_id);
            if v5 {
                u.properties.write(&mut body)?;
                body.put_slice(&u.codes);
            } else if !u.codes.is_empty() || !u.properties.is_empty() {
                return Err(EncodeError::Invalid("UNSUBACK reason codes in 3.1.1"));
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => reasoned(d, v5, &mut body)?,
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::Invalid("AUTH in 3.1.1"));
            }
            reasoned(a, v5, &mut body)?;
        }
    }
    let len = body.len() + payload.len();
    // Checked before a byte is written: a refused packet leaves `out` as it was.
    let rl = u32::try_from(len)
        .ok()
        .filter(|&n| n <= crate::wire::MAX_VARINT)
        .ok_or(EncodeError::PacketTooLarge(len))?;
    out.reserve(5 + len);
    out.put_u8(packet.type_code() << 4 | flags);
    put_varint(out, rl)?;
    out.put_slice(&body);
    out.put_slice(payload);
    Ok(())
}

fn props(p: &Properties, v5: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
    if v5 {
        p.write(out)
    } else if p.is_empty() {
        Ok(())
    } else {
        Err(EncodeError::Invalid("properties in 3.1.1"))
    }
}

fn connect(c: &Connect, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = c.version == Version::V5;
    put_string(out, "MQTT")?;
    out.put_u8(c.version.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    if c.password.is_some() {
        if !v5 && c.username.is_none() {
            return Err(EncodeError::Invalid("a password without a user name in 3.1.1"));
        }
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    props(&c.properties, v5, out)?;
    put_string(out, &c.client_id)?;
    if let Some(w) = &c.will {
        props(&w.properties, v5, out)?;
        put_string(out, &w.topic)?;
        put_binary(out, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_string(out, u)?;
    }
    if let Some(p) = &c.password {
        put_binary(out, p)?;
    }
    Ok(())
}

fn ack(a: &Ack, v5: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u16(a.packet_id);
    if !v5 {
        if a.code != 0 || !a.properties.is_empty() {
            return Err(EncodeError::Invalid("an acknowledgement's reason code in 3.1.1"));
        }
        return Ok(());
    }
    // The short forms MQTT 5 allows: no properties, then no reason code for success.
    if a.code != 0 || !a.properties.is_empty() {
        out.put_u8(a.code);
    }
    if !a.properties.is_empty() {
        a.properties.write(out)?;
    }
    Ok(())
}

fn reasoned(d: &Reasoned, v5: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
    if !v5 {
        if d.code != 0 || !d.properties.is_empty() {
            return Err(EncodeError::Invalid("a DISCONNECT reason code in 3.1.1"));
        }
        return Ok(());
    }
    if d.code != 0 || !d.properties.is_empty() {
        out.put_u8(d.code);
    }
    if !d.properties.is_empty() {
        d.properties.write(out)?;
    }
    Ok(())
}
