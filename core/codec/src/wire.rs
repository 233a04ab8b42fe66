//! Primitive AMQP field encoding: integers, strings, and packed bits.
//!
//! Consecutive `bit` fields of a method share one octet (spec 4.2.5.2). The writer and reader
//! track the octet being filled, and any non-bit field closes it, so method definitions can
//! list their fields in order without caring about packing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::CodecError;

/// Writes AMQP fields into a buffer, packing consecutive bits.
pub struct Writer<'a> {
    buf: &'a mut BytesMut,
    bits: Option<(usize, u8)>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `buf`.
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Writer { buf, bits: None }
    }

    /// One bit, packed with its neighbours.
    pub fn bit(&mut self, v: bool) {
        match self.bits {
            Some((idx, n)) if n < 8 => {
                if v {
                    self.buf[idx] |= 1 << n;
                }
                self.bits = Some((idx, n + 1));
            }
            _ => {
                self.buf.put_u8(u8::from(v));
                self.bits = Some((self.buf.len() - 1, 1));
            }
        }
    }

    /// An octet.
    pub fn u8(&mut self, v: u8) {
        self.bits = None;
        self.buf.put_u8(v);
    }

    /// A short (16-bit, big-endian).
    pub fn u16(&mut self, v: u16) {
        self.bits = None;
        self.buf.put_u16(v);
    }

    /// A long (32-bit).
    pub fn u32(&mut self, v: u32) {
        self.bits = None;
        self.buf.put_u32(v);
    }

    /// A long long (64-bit).
    pub fn u64(&mut self, v: u64) {
        self.bits = None;
        self.buf.put_u64(v);
    }

    /// A short string; longer than 255 octets is cut at a character boundary, since the
    /// length prefix cannot express more and the server must never emit a corrupt frame.
    pub fn short_str(&mut self, s: &str) {
        self.bits = None;
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.buf.put_u8(end as u8);
        self.buf.put_slice(&s.as_bytes()[..end]);
    }

    /// A long string (32-bit length prefix, any octets).
    pub fn long_str(&mut self, s: &[u8]) {
        self.bits = None;
        self.buf.put_u32(s.len() as u32);
        self.buf.put_slice(s);
    }

    /// Raw octets with no prefix.
    pub fn raw(&mut self, s: &[u8]) {
        self.bits = None;
        self.buf.put_slice(s);
    }

    /// Reserves a 32-bit length slot; fill it with [`Writer::finish_len`].
    pub fn begin_len(&mut self) -> usize {
        self.bits = None;
        let at = self.buf.len();
        self.buf.put_u32(0);
        at
    }

    /// Writes the number of octets written since `begin_len` returned `at`.
    pub fn finish_len(&mut self, at: usize) {
        self.bits = None;
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Reads AMQP fields from a payload, unpacking consecutive bits. Never panics.
pub struct Reader {
    buf: Bytes,
    bits: Option<(u8, u8)>,
}

impl Reader {
    /// A reader over `buf`.
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, bits: None }
    }

    /// Octets not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), CodecError> {
        if self.buf.remaining() < n {
            return Err(CodecError::Truncated(what));
        }
        Ok(())
    }

    /// One packed bit.
    pub fn bit(&mut self) -> Result<bool, CodecError> {
        let (octet, n) = match self.bits {
            Some((octet, n)) if n < 8 => (octet, n),
            _ => {
                self.need(1, "bit")?;
                (self.buf.get_u8(), 0)
            }
        };
        self.bits = Some((octet, n + 1));
        Ok(octet & (1 << n) != 0)
    }

    /// An octet.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        self.bits = None;
        self.need(1, "octet")?;
        Ok(self.buf.get_u8())
    }

    /// A short.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        self.bits = None;
        self.need(2, "short")?;
        Ok(self.buf.get_u16())
    }

    /// A long.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        self.bits = None;
        self.need(4, "long")?;
        Ok(self.buf.get_u32())
    }

    /// A long long.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        self.bits = None;
        self.need(8, "long long")?;
        Ok(self.buf.get_u64())
    }

    /// `n` raw octets, sharing the underlying buffer.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, CodecError> {
        self.bits = None;
        self.need(n, "octets")?;
        Ok(self.buf.split_to(n))
    }

    /// A short string, which must be UTF-8.
    pub fn short_str(&mut self) -> Result<String, CodecError> {
        let n = usize::from(self.u8()?);
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::BadUtf8)
    }

    /// A long string (any octets).
    pub fn long_str(&mut self) -> Result<Bytes, CodecError> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }

    /// Fails unless every octet was consumed.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.buf.remaining() {
            0 => Ok(()),
            n => Err(CodecError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_pack_into_one_octet_and_reset_after_other_fields() {
        let mut buf = BytesMut::new();
        let mut w = Writer::new(&mut buf);
        w.bit(true);
        w.bit(false);
        w.bit(true);
        w.u8(7);
        w.bit(true);
        assert_eq!(&buf[..], &[0b101, 7, 1]);
        let mut r = Reader::new(buf.freeze());
        assert_eq!((r.bit(), r.bit(), r.bit()), (Ok(true), Ok(false), Ok(true)));
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.bit(), Ok(true));
        assert!(r.finish().is_ok());
    }

    #[test]
    fn nine_bits_take_two_octets() {
        let mut buf = BytesMut::new();
        let mut w = Writer::new(&mut buf);
        for _ in 0..9 {
            w.bit(true);
        }
        assert_eq!(&buf[..], &[0xff, 0x01]);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut r = Reader::new(Bytes::from_static(&[0, 0, 0, 9, 1]));
        assert_eq!(r.long_str(), Err(CodecError::Truncated("octets")));
    }
}
