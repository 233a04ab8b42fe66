//! Decoding errors. Every one of them is a connection error in AMQP terms.

use crate::reply_code::{self, ReplyCode};

/// Why bytes from a peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload ended before a field was complete.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A frame of a type AMQP 0-9-1 does not define.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A frame announced a size over the negotiated frame-max.
    #[error("frame size {size} exceeds frame_max {max}")]
    FrameTooLarge {
        /// The announced frame size, header and end octet included.
        size: u64,
        /// The negotiated limit.
        max: u32,
    },
    /// The octet after the payload was not 0xCE.
    #[error("bad frame end octet {0:#04x}")]
    BadFrameEnd(u8),
    /// A method frame naming a class/method pair this server does not know.
    #[error("unknown method {class_id}/{method_id}")]
    UnknownMethod {
        /// The class id read from the frame.
        class_id: u16,
        /// The method id read from the frame.
        method_id: u16,
    },
    /// A field table or array held a type tag that RabbitMQ does not define.
    #[error("unknown field type {0:#04x}")]
    UnknownFieldType(u8),
    /// Tables and arrays nested deeper than the limit.
    #[error("field tables and arrays nested deeper than {0} levels")]
    TooDeep(usize),
    /// A short string that is not UTF-8.
    #[error("short string is not UTF-8")]
    BadUtf8,
    /// A content header for a class that carries no content.
    #[error("content header for class {0}")]
    BadContentClass(u16),
    /// A method payload had bytes left over after its last field.
    #[error("{0} trailing bytes after method fields")]
    TrailingBytes(usize),
    /// The fields of a known method did not decode.
    #[error("cannot decode the fields of method {class_id}/{method_id}: {reason}")]
    MethodFields {
        /// The method's class id.
        class_id: u16,
        /// The method's id.
        method_id: u16,
        /// What went wrong in the fields.
        reason: Box<CodecError>,
    },
}

impl CodecError {
    /// The (class id, method id) of the method whose fields failed, when known.
    pub fn method_ids(&self) -> Option<(u16, u16)> {
        match self {
            CodecError::MethodFields { class_id, method_id, .. } => Some((*class_id, *method_id)),
            _ => None,
        }
    }

    /// The connection.close reply code RabbitMQ uses for this error.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            // RabbitMQ answers fields it cannot decode with frame_error too, not syntax_error.
            CodecError::UnknownFrameType(_)
            | CodecError::FrameTooLarge { .. }
            | CodecError::BadFrameEnd(_)
            | CodecError::Truncated(_)
            | CodecError::UnknownFieldType(_)
            | CodecError::TooDeep(_)
            | CodecError::BadUtf8
            | CodecError::TrailingBytes(_)
            | CodecError::MethodFields { .. } => reply_code::FRAME_ERROR,
            CodecError::UnknownMethod { .. } => reply_code::COMMAND_INVALID,
            CodecError::BadContentClass(_) => reply_code::UNEXPECTED_FRAME,
        }
    }
}
