//! The AMQP 0-9-1 wire format, as RabbitMQ speaks it. No I/O: bytes in, values out.
//!
//! ```text
//!  bytes ──decode_frame──► Frame ─┬─ Method        (method.rs: every class and method)
//!                                 ├─ Header        (properties.rs: ContentHeader, BasicProperties)
//!                                 ├─ Body(Bytes)   (zero-copy slice of the input)
//!                                 └─ Heartbeat
//! ```
//!
//! # Layout
//! - [`wire`]: integers, strings and packed bits.
//! - [`field`]: field tables and values with all of RabbitMQ's types.
//! - [`method`]: the method table and its encoder/decoder.
//! - [`properties`]: content headers and basic properties.
//! - [`frame`]: the frame splitter and writer.
//! - [`reply_code`]: named reply codes.
//! - [`error`]: what can go wrong decoding, and the reply code for it.
//!
//! Decoding never panics on any input; a malformed frame is a [`CodecError`] that names the
//! reply code to close the connection with.

pub mod error;
pub mod field;
pub mod frame;
pub mod method;
pub mod properties;
pub mod reply_code;
pub mod wire;

#[cfg(test)]
mod proptests;

pub use error::CodecError;
pub use field::{Decimal, FieldTable, FieldValue};
pub use frame::{
    FRAME_END, FRAME_MIN_SIZE, FRAME_OVERHEAD, Frame, PROTOCOL_HEADER, decode_frame, encode_content,
    split_encoded,
};
pub use method::*;
pub use properties::{BASIC_CLASS, BasicProperties, ContentHeader};
