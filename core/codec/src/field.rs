//! Field tables and field values, with every type RabbitMQ sends or accepts.
//!
//! RabbitMQ's table differs from the spec's errata in its tags: `s` is a signed 16-bit
//! integer, `u` unsigned 16-bit, `x` a byte array; `l` a signed 64-bit integer. We follow
//! RabbitMQ, since that is what every client in the wild speaks.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::CodecError;
use crate::wire::{Reader, Writer};

/// How deeply tables and arrays may nest in one decoded value. Real clients nest a few
/// levels (x-death is an array of tables); RabbitMQ's parser copes with dozens. Past this a
/// peer is only trying to exhaust the stack that decoding and dropping recurse on.
pub const MAX_FIELD_DEPTH: usize = 128;

/// A field table: names to values. Order on the wire is not significant, so a sorted map
/// gives equality that matches RabbitMQ's argument equivalence.
pub type FieldTable = BTreeMap<String, FieldValue>;

/// A decimal value: `value / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One value in a field table or array.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`: boolean.
    Bool(bool),
    /// `b`: signed 8-bit.
    I8(i8),
    /// `B`: unsigned 8-bit.
    U8(u8),
    /// `s`: signed 16-bit.
    I16(i16),
    /// `u`: unsigned 16-bit.
    U16(u16),
    /// `I`: signed 32-bit.
    I32(i32),
    /// `i`: unsigned 32-bit.
    U32(u32),
    /// `l`: signed 64-bit.
    I64(i64),
    /// `f`: 32-bit float.
    F32(f32),
    /// `d`: 64-bit float.
    F64(f64),
    /// `D`: decimal.
    Decimal(Decimal),
    /// `S`: long string (octets, usually UTF-8).
    LongString(Bytes),
    /// `A`: array of values.
    Array(Vec<FieldValue>),
    /// `T`: timestamp, seconds since the epoch.
    Timestamp(u64),
    /// `F`: nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
    /// `x`: byte array.
    ByteArray(Bytes),
}

impl FieldValue {
    /// A long-string value from text.
    pub fn str(s: &str) -> Self {
        FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The value as text when it is a long string of UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer when it is any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v,
            FieldValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    /// The value as a boolean when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value's wire encoding, type tag first: how nested tables and arrays cross a
    /// boundary that cannot express recursive types (the plugin WIT).
    pub fn to_wire(&self) -> Bytes {
        let mut buf = bytes::BytesMut::new();
        self.encode(&mut Writer::new(&mut buf));
        buf.freeze()
    }

    /// Reads one value from its wire encoding, type tag first; trailing octets are an error.
    /// The value is taken to sit inside a table, so it may nest one level less than a table
    /// may: whatever it ends up in still decodes under [`MAX_FIELD_DEPTH`].
    pub fn from_wire(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes));
        let v = FieldValue::decode(&mut r, 1)?;
        if r.remaining() > 0 {
            return Err(CodecError::TrailingBytes(r.remaining()));
        }
        Ok(v)
    }

    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            FieldValue::Bool(v) => {
                w.u8(b't');
                w.u8(u8::from(*v));
            }
            FieldValue::I8(v) => {
                w.u8(b'b');
                w.u8(*v as u8);
            }
            FieldValue::U8(v) => {
                w.u8(b'B');
                w.u8(*v);
            }
            FieldValue::I16(v) => {
                w.u8(b's');
                w.u16(*v as u16);
            }
            FieldValue::U16(v) => {
                w.u8(b'u');
                w.u16(*v);
            }
            FieldValue::I32(v) => {
                w.u8(b'I');
                w.u32(*v as u32);
            }
            FieldValue::U32(v) => {
                w.u8(b'i');
                w.u32(*v);
            }
            FieldValue::I64(v) => {
                w.u8(b'l');
                w.u64(*v as u64);
            }
            FieldValue::F32(v) => {
                w.u8(b'f');
                w.u32(v.to_bits());
            }
            FieldValue::F64(v) => {
                w.u8(b'd');
                w.u64(v.to_bits());
            }
            FieldValue::Decimal(d) => {
                w.u8(b'D');
                w.u8(d.scale);
                w.u32(d.value);
            }
            FieldValue::LongString(s) => {
                w.u8(b'S');
                w.long_str(s);
            }
            FieldValue::Array(items) => {
                w.u8(b'A');
                let at = w.begin_len();
                for item in items {
                    item.encode(w);
                }
                w.finish_len(at);
            }
            FieldValue::Timestamp(v) => {
                w.u8(b'T');
                w.u64(*v);
            }
            FieldValue::Table(t) => {
                w.u8(b'F');
                encode_table(w, t);
            }
            FieldValue::Void => w.u8(b'V'),
            FieldValue::ByteArray(b) => {
                w.u8(b'x');
                w.long_str(b);
            }
        }
    }

    /// `depth` is the number of tables and arrays this value sits inside.
    fn decode(r: &mut Reader, depth: usize) -> Result<Self, CodecError> {
        Ok(match r.u8()? {
            b't' => FieldValue::Bool(r.u8()? != 0),
            b'b' => FieldValue::I8(r.u8()? as i8),
            b'B' => FieldValue::U8(r.u8()?),
            b's' => FieldValue::I16(r.u16()? as i16),
            b'u' => FieldValue::U16(r.u16()?),
            b'I' => FieldValue::I32(r.u32()? as i32),
            b'i' => FieldValue::U32(r.u32()?),
            b'l' => FieldValue::I64(r.u64()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
            b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
            b'D' => FieldValue::Decimal(Decimal { scale: r.u8()?, value: r.u32()? }),
            b'S' => FieldValue::LongString(r.long_str()?),
            b'A' => {
                let depth = nested(depth)?;
                let mut inner = Reader::new(r.long_str()?);
                let mut items = Vec::new();
                while inner.remaining() > 0 {
                    items.push(FieldValue::decode(&mut inner, depth)?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(r.u64()?),
            b'F' => FieldValue::Table(decode_table_at(r, depth)?),
            b'V' => FieldValue::Void,
            b'x' => FieldValue::ByteArray(r.long_str()?),
            other => return Err(CodecError::UnknownFieldType(other)),
        })
    }
}

/// Writes a table with its 32-bit length prefix.
pub fn encode_table(w: &mut Writer<'_>, t: &FieldTable) {
    let at = w.begin_len();
    for (k, v) in t {
        w.short_str(k);
        v.encode(w);
    }
    w.finish_len(at);
}

/// Reads a table with its 32-bit length prefix; tables and arrays in it may nest
/// [`MAX_FIELD_DEPTH`] deep, counting this one.
pub fn decode_table(r: &mut Reader) -> Result<FieldTable, CodecError> {
    decode_table_at(r, 0)
}

/// The depth one level inside a container at `depth`, or the error past the limit.
fn nested(depth: usize) -> Result<usize, CodecError> {
    if depth >= MAX_FIELD_DEPTH {
        return Err(CodecError::TooDeep(MAX_FIELD_DEPTH));
    }
    Ok(depth + 1)
}

fn decode_table_at(r: &mut Reader, depth: usize) -> Result<FieldTable, CodecError> {
    let depth = nested(depth)?;
    let mut inner = Reader::new(r.long_str()?);
    let mut t = FieldTable::new();
    while inner.remaining() > 0 {
        let k = inner.short_str()?;
        let v = FieldValue::decode(&mut inner, depth)?;
        t.insert(k, v);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    #[test]
    fn nested_table_and_array_round_trip() {
        let mut inner = FieldTable::new();
        inner.insert("count".into(), FieldValue::I64(-3));
        let mut t = FieldTable::new();
        t.insert("x-death".into(), FieldValue::Array(vec![FieldValue::Table(inner), FieldValue::Void]));
        t.insert("d".into(), FieldValue::Decimal(Decimal { scale: 2, value: 314 }));
        let mut buf = BytesMut::new();
        encode_table(&mut Writer::new(&mut buf), &t);
        let back = decode_table(&mut Reader::new(buf.freeze()));
        assert_eq!(back, Ok(t));
    }

    /// `levels` arrays, each holding the next, inside one table entry.
    fn nested_arrays(levels: usize) -> Bytes {
        let mut value = BytesMut::new();
        value.extend_from_slice(b"V");
        for _ in 0..levels {
            let mut outer = BytesMut::new();
            outer.extend_from_slice(b"A");
            outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
            outer.extend_from_slice(&value);
            value = outer;
        }
        let mut table = BytesMut::new();
        table.extend_from_slice(&((value.len() + 2) as u32).to_be_bytes());
        table.extend_from_slice(&[1, b'k']);
        table.extend_from_slice(&value);
        table.freeze()
    }

    #[test]
    fn nesting_up_to_the_limit_decodes_and_one_more_is_refused() {
        // The table is one level, so MAX_FIELD_DEPTH - 1 arrays fit inside it.
        let ok = decode_table(&mut Reader::new(nested_arrays(MAX_FIELD_DEPTH - 1)));
        assert!(ok.is_ok(), "{ok:?}");
        let deep = decode_table(&mut Reader::new(nested_arrays(MAX_FIELD_DEPTH)));
        assert_eq!(deep, Err(CodecError::TooDeep(MAX_FIELD_DEPTH)));
    }

    #[test]
    fn hostile_nesting_fails_on_a_small_stack() {
        // 20 000 levels in 100 KB overflowed a 2 MiB worker stack before the limit existed;
        // here it must come back as an error on a quarter of that, even in a debug build.
        let raw = nested_arrays(20_000);
        let got = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || decode_table(&mut Reader::new(raw)).is_err())
            .expect("spawn")
            .join()
            .expect("no stack overflow");
        assert!(got);
    }

    #[test]
    fn a_plugin_value_nests_one_level_less_than_a_table() {
        // The value part of each table (past the length, key length and key): what fits in
        // a table fits alone, and what does not fit in a table is refused alone too.
        let fits = nested_arrays(MAX_FIELD_DEPTH - 1);
        assert!(FieldValue::from_wire(&fits[6..]).is_ok());
        let too_deep = nested_arrays(MAX_FIELD_DEPTH);
        assert_eq!(FieldValue::from_wire(&too_deep[6..]), Err(CodecError::TooDeep(MAX_FIELD_DEPTH)));
    }

    #[test]
    fn unknown_tag_is_refused() {
        let raw: &[u8] = &[0, 0, 0, 3, 1, b'k', b'?'];
        let r = decode_table(&mut Reader::new(Bytes::from_static(raw)));
        assert_eq!(r, Err(CodecError::UnknownFieldType(b'?')));
    }

    #[test]
    fn table_length_past_the_end_is_truncated() {
        let raw: &[u8] = &[0, 0, 0, 200, 1];
        assert!(decode_table(&mut Reader::new(Bytes::from_static(raw))).is_err());
    }

    #[test]
    fn single_values_round_trip_through_their_wire_form() {
        let mut t = FieldTable::new();
        t.insert("k".into(), FieldValue::Array(vec![FieldValue::I8(-1), FieldValue::str("x")]));
        for v in [FieldValue::Table(t), FieldValue::Void, FieldValue::F64(1.5)] {
            assert_eq!(FieldValue::from_wire(&v.to_wire()).expect("decodes"), v);
        }
        let mut extra = FieldValue::Void.to_wire().to_vec();
        extra.push(0);
        assert!(FieldValue::from_wire(&extra).is_err());
        assert!(FieldValue::from_wire(b"Z").is_err());
    }
}
