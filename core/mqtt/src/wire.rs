//! MQTT's primitive encodings (§1.5): big-endian integers, length-prefixed strings and
//! binary data, and the variable byte integer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// The largest variable byte integer: four bytes of seven bits.
pub const MAX_VARINT: u32 = 268_435_455;

/// A reader over one packet's body; every read checks the bytes are there.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::Malformed("packet ends early"));
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::Malformed("packet ends early"));
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::Malformed("packet ends early"));
        }
        Ok(self.buf.get_u32())
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(&self.buf)? {
            Some((v, n)) => {
                self.buf.advance(n);
                Ok(v)
            }
            None => Err(DecodeError::Malformed("packet ends inside a variable byte integer")),
        }
    }

    /// Binary data: a two-byte length and that many bytes, shared with the packet's buffer.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    /// A UTF-8 string (§1.5.4): well formed, without U+0000.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::Malformed("a string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError::Malformed("a string contains U+0000"));
        }
        Ok(s.to_string())
    }

    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed("packet ends early"));
        }
        Ok(self.buf.split_to(n))
    }

    /// Everything left (a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// The packet must end here.
    pub fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::Malformed("bytes after the packet's end")) }
    }
}

/// Reads a variable byte integer from the front of `buf`: `None` when `buf` ends inside it.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &b) in buf.iter().enumerate().take(4) {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // [MQTT-1.5.5-1]: the fewest bytes that hold the value, so one value has one form.
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed("a variable byte integer longer than needed"));
            }
            return Ok(Some((value, i + 1)));
        }
        if i == 3 {
            return Err(DecodeError::Malformed("a variable byte integer runs past four bytes"));
        }
    }
    Ok(None)
}

pub fn put_varint(out: &mut BytesMut, mut v: u32) -> Result<(), EncodeError> {
    if v > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge(v as usize));
    }
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            return Ok(());
        }
    }
}

pub fn put_binary(out: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong(b.len()))?;
    out.put_u16(n);
    out.put_slice(b);
    Ok(())
}

pub fn put_string(out: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes())
}
