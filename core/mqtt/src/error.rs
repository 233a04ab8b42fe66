//! What the decoder and encoder refuse.

/// MQTT 5 reason codes the decoder's errors map to (§2.4).
pub mod reason {
    /// Malformed Packet.
    pub const MALFORMED: u8 = 0x81;
    /// Protocol Error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Unsupported Protocol Version (CONNACK).
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// MQTT 3.1.1's CONNACK code for an unacceptable protocol version.
    pub const V311_UNACCEPTABLE_PROTOCOL_VERSION: u8 = 0x01;
    /// MQTT 3.1.1's CONNACK code for a client identifier it refuses.
    pub const V311_IDENTIFIER_REJECTED: u8 = 0x02;
    /// MQTT 3.1.1's CONNACK code for a bad user name or password.
    pub const V311_BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
    /// MQTT 3.1.1's CONNACK code for a client not authorized.
    pub const V311_NOT_AUTHORIZED: u8 = 0x05;
    /// MQTT 3.1.1's SUBACK failure.
    pub const V311_SUBSCRIBE_FAILURE: u8 = 0x80;
    /// No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED: u8 = 0x80;
    /// Implementation specific error (what Warren does not offer yet).
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    /// Client Identifier not valid.
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    /// Bad User Name or Password.
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// Keep Alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Session taken over.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic Name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Receive Maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic Alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// QoS not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// Shared Subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// Subscription Identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
}

/// Why bytes are not a packet. Each ends the connection that sent them, and only it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the packet's format.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well formed but not allowed here.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet is larger than the limit (announced by its remaining length).
    #[error("packet of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Its size, fixed header included.
        size: u64,
        /// The limit.
        max: u32,
    },
    /// A CONNECT for a protocol level other than 4 (3.1.1) or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
}

impl DecodeError {
    /// The MQTT 5 reason code for a DISCONNECT (or CONNACK) that answers it.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Why a packet cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field is over 65 535 bytes.
    #[error("a field of {0} bytes is over 65 535")]
    FieldTooLong(usize),
    /// The packet is over MQTT's largest remaining length (268 435 455).
    #[error("a packet of {0} bytes is over MQTT's limit")]
    PacketTooLarge(usize),
    /// The packet cannot be said in this version (properties or reason codes in 3.1.1,
    /// AUTH), or breaks a rule the decoder would refuse (QoS 0 with a packet id).
    #[error("cannot be encoded: {0}")]
    Invalid(&'static str),
}
