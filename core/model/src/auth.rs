//! Users and SASL: PLAIN and AMQPLAIN, as RabbitMQ offers them.

use bytes::{BufMut, Bytes, BytesMut};
use warren_codec::field::decode_table;
use warren_codec::wire::Reader;

/// The mechanisms advertised in connection.start, space separated.
pub const MECHANISMS: &str = "AMQPLAIN PLAIN";
/// The mechanisms advertised when the client presented a verified certificate.
pub const MECHANISMS_WITH_EXTERNAL: &str = "EXTERNAL AMQPLAIN PLAIN";

/// A user allowed to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password, in clear or as a RabbitMQ hash; compared in constant time.
    pub password: crate::password::Password,
    /// Refuse this user unless the peer is on a loopback address (RabbitMQ's rule for guest).
    pub loopback_only: bool,
    /// RabbitMQ's user tags: `administrator` may change things through the management API;
    /// `monitoring`, `policymaker` and `management` may read it; no tag, no API.
    pub tags: Vec<String>,
    /// RabbitMQ's user limits (`rabbitmqctl set_user_limits`).
    pub limits: UserLimits,
}

/// What one user may hold across the node; `None` is unlimited, RabbitMQ's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Open connections.
    pub max_connections: Option<usize>,
    /// Open channels, over all its connections.
    pub max_channels: Option<usize>,
}

impl User {
    /// RabbitMQ's default user: guest/guest, loopback only, administrator.
    pub fn guest() -> Self {
        User {
            name: "guest".into(),
            password: crate::password::Password::plain("guest"),
            loopback_only: true,
            tags: vec!["administrator".into()],
            limits: UserLimits::default(),
        }
    }

    /// Whether the user has tag `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// The user `name` if `password` is theirs and they may log in from where the peer is.
pub fn check_password<'u>(
    users: &'u [User],
    name: &str,
    password: &str,
    peer_is_loopback: bool,
) -> Result<&'u User, AuthError> {
    // An unknown user costs a hash too: the time of a refusal does not say whether the name
    // exists.
    // A blank password never logs in, whatever was stored (RabbitMQ's rule).
    let user = match users.iter().find(|u| u.name == name) {
        Some(u) => Some(u).filter(|u| u.password.verify(password) && !password.is_empty()),
        None => {
            let _ = crate::password::Password::Disabled.verify(password);
            None
        }
    };
    let user = user.ok_or_else(|| AuthError::InvalidCredentials(name.to_string()))?;
    if user.loopback_only && !peer_is_loopback {
        return Err(AuthError::NotLoopback(user.name.clone()));
    }
    Ok(user)
}

/// Why a login was refused; logged by the server, never shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The mechanism is not one we offer.
    #[error("unknown authentication mechanism '{0}'")]
    UnknownMechanism(String),
    /// The response could not be parsed for its mechanism.
    #[error("malformed {0} response")]
    Malformed(&'static str),
    /// No such user, or a wrong password.
    #[error("user '{0}' - invalid credentials")]
    InvalidCredentials(String),
    /// A loopback-only user connecting from elsewhere.
    #[error("user '{0}' can only connect via localhost")]
    NotLoopback(String),
}

/// Parses a SASL response and checks it against `users`; returns the user name.
///
/// `external` is the identity a verified TLS client certificate gives (its subject CN); with
/// it, the EXTERNAL mechanism logs in as that user without a password, as RabbitMQ's
/// rabbitmq_auth_mechanism_ssl does.
pub fn authenticate(
    users: &[User],
    mechanism: &str,
    response: &Bytes,
    peer_is_loopback: bool,
    external: Option<&str>,
) -> Result<String, AuthError> {
    let user = match (mechanism, external) {
        ("EXTERNAL", Some(id)) => users
            .iter()
            .find(|u| u.name == id)
            .ok_or_else(|| AuthError::InvalidCredentials(id.to_string()))?,
        _ => {
            let (name, password) = match mechanism {
                "PLAIN" => parse_plain(response)?,
                "AMQPLAIN" => parse_amqplain(response)?,
                other => return Err(AuthError::UnknownMechanism(other.to_string())),
            };
            return check_password(users, &name, &password, peer_is_loopback).map(|u| u.name.clone());
        }
    };
    let name = user.name.clone();
    if user.loopback_only && !peer_is_loopback {
        return Err(AuthError::NotLoopback(name));
    }
    Ok(name)
}

/// PLAIN: `authzid NUL authcid NUL password` (RFC 4616).
fn parse_plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(_authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("PLAIN"));
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| AuthError::Malformed("PLAIN"));
    Ok((text(user)?, text(pass)?))
}

/// AMQPLAIN: a field table without its length prefix, holding LOGIN and PASSWORD.
fn parse_amqplain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut framed = BytesMut::with_capacity(response.len() + 4);
    framed.put_u32(response.len() as u32);
    framed.put_slice(response);
    let table =
        decode_table(&mut Reader::new(framed.freeze())).map_err(|_| AuthError::Malformed("AMQPLAIN"))?;
    let field = |k: &str| {
        table.get(k).and_then(|v| v.as_str()).map(str::to_string).ok_or(AuthError::Malformed("AMQPLAIN"))
    };
    Ok((field("LOGIN")?, field("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use warren_codec::field::{FieldTable, FieldValue, encode_table};
    use warren_codec::wire::Writer;

    use super::*;

    #[test]
    fn plain_guest_from_loopback_only() {
        let users = [User::guest()];
        let resp = Bytes::from_static(b"\0guest\0guest");
        assert_eq!(authenticate(&users, "PLAIN", &resp, true, None), Ok("guest".into()));
        assert_eq!(
            authenticate(&users, "PLAIN", &resp, false, None),
            Err(AuthError::NotLoopback("guest".into()))
        );
        let bad = Bytes::from_static(b"\0guest\0nope");
        assert!(matches!(
            authenticate(&users, "PLAIN", &bad, true, None),
            Err(AuthError::InvalidCredentials(_))
        ));
    }

    #[test]
    fn amqplain_reads_login_and_password() {
        let mut t = FieldTable::new();
        t.insert("LOGIN".into(), FieldValue::str("guest"));
        t.insert("PASSWORD".into(), FieldValue::str("guest"));
        let mut buf = BytesMut::new();
        encode_table(&mut Writer::new(&mut buf), &t);
        let resp = buf.freeze().slice(4..);
        assert_eq!(authenticate(&[User::guest()], "AMQPLAIN", &resp, true, None), Ok("guest".into()));
    }

    #[test]
    fn external_logs_in_as_the_certificate_identity() {
        let users = [
            User::guest(),
            User {
                name: "alice".into(),
                password: crate::password::Password::plain("x"),
                loopback_only: false,
                tags: Vec::new(),
                limits: UserLimits::default(),
            },
        ];
        let none = Bytes::new();
        assert_eq!(authenticate(&users, "EXTERNAL", &none, false, Some("alice")), Ok("alice".into()));
        let r = authenticate(&users, "EXTERNAL", &none, false, Some("mallory"));
        assert!(matches!(r, Err(AuthError::InvalidCredentials(_))));
    }

    #[test]
    fn unknown_mechanism_and_garbage_are_refused() {
        let users = [User::guest()];
        let r = authenticate(&users, "EXTERNAL", &Bytes::new(), true, None);
        assert_eq!(r, Err(AuthError::UnknownMechanism("EXTERNAL".into())));
        let r = authenticate(&users, "AMQPLAIN", &Bytes::from_static(&[3, 1]), true, None);
        assert_eq!(r, Err(AuthError::Malformed("AMQPLAIN")));
    }
}
