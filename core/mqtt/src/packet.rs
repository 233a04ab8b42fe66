//! The packets of MQTT 3.1.1 and 5 as one set of types: what 3.1.1 lacks (properties,
//! reason codes on acknowledgements, AUTH) is empty or absent there.

use bytes::Bytes;

use crate::properties::Properties;

/// The protocol version a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl Version {
    /// The protocol level in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS of two bits; 3 is no QoS.
    pub fn from_bits(b: u8) -> Option<QoS> {
        match b {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The version it asks for.
    pub version: Version,
    /// Its client identifier (may be empty: the server assigns one).
    pub client_id: String,
    /// Clean session (3.1.1) or clean start (5).
    pub clean_start: bool,
    /// Keep-alive, seconds; 0 is none.
    pub keep_alive: u16,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// Its will message.
    pub will: Option<Will>,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// A will message: published by the server when the connection ends without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
    /// MQTT 5 will properties (delay, expiry, content type…).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server had a session for this client.
    pub session_present: bool,
    /// The return code (3.1.1) or reason code (5).
    pub code: u8,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// A redelivery of a QoS 1 or 2 message.
    pub dup: bool,
    /// Its QoS.
    pub qos: QoS,
    /// Retain.
    pub retain: bool,
    /// Its topic (empty in MQTT 5 when a topic alias stands for it).
    pub topic: String,
    /// Its packet identifier: present exactly when QoS is above 0.
    pub packet_id: Option<u16>,
    /// MQTT 5 properties.
    pub properties: Properties,
    /// Its payload, a view of the bytes received.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet identifier and, in MQTT 5, a reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The packet identifier acknowledged.
    pub packet_id: u16,
    /// The reason code (0, success, in 3.1.1).
    pub code: u8,
    /// MQTT 5 properties.
    pub properties: Properties,
}

impl Ack {
    /// A successful acknowledgement of `packet_id`.
    pub fn ok(packet_id: u16) -> Self {
        Ack { packet_id, code: 0, properties: Properties::default() }
    }
}

/// One filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter.
    pub filter: String,
    /// The largest QoS the subscriber accepts.
    pub qos: QoS,
    /// MQTT 5: not its own publishes.
    pub no_local: bool,
    /// MQTT 5: keep the retain flag as published.
    pub retain_as_published: bool,
    /// MQTT 5: 0 send retained messages, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Its packet identifier.
    pub packet_id: u16,
    /// MQTT 5 properties (subscription identifier, user properties).
    pub properties: Properties,
    /// At least one filter.
    pub filters: Vec<Subscription>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's packet identifier.
    pub packet_id: u16,
    /// MQTT 5 properties.
    pub properties: Properties,
    /// One code per filter: the QoS granted, or a failure (0x80 and up).
    pub codes: Vec<u8>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Its packet identifier.
    pub packet_id: u16,
    /// MQTT 5 properties.
    pub properties: Properties,
    /// At least one filter.
    pub filters: Vec<String>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The UNSUBSCRIBE's packet identifier.
    pub packet_id: u16,
    /// MQTT 5 properties.
    pub properties: Properties,
    /// MQTT 5: one reason code per filter (none in 3.1.1).
    pub codes: Vec<u8>,
}

/// DISCONNECT (or, in MQTT 5, AUTH): a reason code and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reasoned {
    /// The reason code (0 in 3.1.1).
    pub code: u8,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// Every MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Reasoned),
    /// AUTH (MQTT 5 only).
    Auth(Reasoned),
}

impl Packet {
    /// The packet type in the fixed header's high nibble.
    pub fn type_code(&self) -> u8 {
        match self {
            Packet::Connect(_) => 1,
            Packet::ConnAck(_) => 2,
            Packet::Publish(_) => 3,
            Packet::PubAck(_) => 4,
            Packet::PubRec(_) => 5,
            Packet::PubRel(_) => 6,
            Packet::PubComp(_) => 7,
            Packet::Subscribe(_) => 8,
            Packet::SubAck(_) => 9,
            Packet::Unsubscribe(_) => 10,
            Packet::UnsubAck(_) => 11,
            Packet::PingReq => 12,
            Packet::PingResp => 13,
            Packet::Disconnect(_) => 14,
            Packet::Auth(_) => 15,
        }
    }
}
