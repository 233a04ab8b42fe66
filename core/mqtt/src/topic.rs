//! Topic names and filters (§4.7): what is valid, what matches what, shared subscriptions,
//! and RabbitMQ's mapping between MQTT topics and AMQP routing keys, so an MQTT publish
//! reaches AMQP consumers bound to `amq.topic` and back.

/// Why a topic or filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty.
    #[error("empty")]
    Empty,
    /// A wildcard in a topic name, or one in the wrong place in a filter.
    #[error("a wildcard where none may be")]
    Wildcard,
    /// A shared subscription without a share name or filter, or with a bad share name.
    #[error("not a valid shared subscription")]
    Shared,
    /// Over AMQP's 255-byte routing key once mapped.
    #[error("{0} bytes, over the 255 of an AMQP routing key")]
    TooLong(usize),
}

/// The longest AMQP routing key (a short string).
pub const MAX_ROUTING_KEY: usize = 255;

/// Checks a topic name (a PUBLISH's or a will's): not empty, no wildcard.
pub fn check_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    // A routing key from AMQP may hold U+0000, which no MQTT string may.
    if topic.contains('\0') {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a topic filter: `#` only as the whole last level, `+` only as a whole level.
pub fn check_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let last = i + 1 == levels.len();
        match *level {
            "#" if last => {}
            "+" => {}
            l if l.contains(['+', '#']) => return Err(TopicError::Wildcard),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `filter` (valid) matches topic name `topic`. A topic starting with `$` is not
/// matched by a filter starting with a wildcard (§4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subscription's filter, split from its share name when it is `$share/{name}/{filter}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter<'a> {
    /// The share name, for a shared subscription.
    pub share: Option<&'a str>,
    /// The filter proper.
    pub filter: &'a str,
}

/// Parses and checks a SUBSCRIBE's filter, shared or not.
pub fn parse_filter(s: &str) -> Result<Filter<'_>, TopicError> {
    let Some(rest) = s.strip_prefix("$share/") else {
        check_filter(s)?;
        return Ok(Filter { share: None, filter: s });
    };
    let (share, filter) = rest.split_once('/').ok_or(TopicError::Shared)?;
    if share.is_empty() || share.contains(['+', '#']) {
        return Err(TopicError::Shared);
    }
    check_filter(filter).map_err(|_| TopicError::Shared)?;
    Ok(Filter { share: Some(share), filter })
}

/// The AMQP routing key of an MQTT topic name (RabbitMQ's `rabbit_mqtt_util:mqtt_to_amqp`):
/// `/` becomes `.`. A `.` in an MQTT topic stays, and so is a word break in AMQP, as in
/// RabbitMQ.
pub fn to_routing_key(topic: &str) -> Result<String, TopicError> {
    let key = topic.replace('/', ".");
    if key.len() > MAX_ROUTING_KEY {
        return Err(TopicError::TooLong(key.len()));
    }
    Ok(key)
}

/// The AMQP binding key of an MQTT topic filter: separators swapped, `+` as `*`, `#` as `#`.
pub fn to_binding_key(filter: &str) -> Result<String, TopicError> {
    let key: String = filter
        .chars()
        .map(|c| match c {
            '/' => '.',
            '+' => '*',
            c => c,
        })
        .collect();
    if key.len() > MAX_ROUTING_KEY {
        return Err(TopicError::TooLong(key.len()));
    }
    Ok(key)
}

/// The MQTT topic name of an AMQP routing key (RabbitMQ's `amqp_to_mqtt`: `.` becomes `/`,
/// `*` becomes `+`), for deliveries of messages published over AMQP. The result may not be
/// a valid topic name (an empty key, `#`): check it with [`check_name`] before sending.
pub fn from_routing_key(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '.' => '/',
            '*' => '+',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters_are_checked_as_the_specification_says() {
        assert_eq!(check_name("a/b"), Ok(()));
        assert_eq!(check_name("/"), Ok(()), "two empty levels");
        assert_eq!(check_name(""), Err(TopicError::Empty));
        assert_eq!(check_name("a/+"), Err(TopicError::Wildcard));
        for ok in ["#", "+", "a/#", "+/+", "a/+/b", "/+", "+/", "a//#"] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+/b", "#/a", "a/b#", ""] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_follows_the_specifications_examples() {
        // §4.7.1.2 and §4.7.1.3.
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        // §4.7.2: $-topics and wildcards at the first level.
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
    }

    #[test]
    fn shared_subscriptions_name_a_group_and_a_filter() {
        assert_eq!(parse_filter("$share/g/a/+"), Ok(Filter { share: Some("g"), filter: "a/+" }));
        assert_eq!(parse_filter("a/#"), Ok(Filter { share: None, filter: "a/#" }));
        for bad in ["$share/", "$share/g", "$share//a", "$share/g+/a", "$share/g/a#"] {
            assert_eq!(parse_filter(bad), Err(TopicError::Shared), "{bad}");
        }
    }

    #[test]
    fn topics_map_to_routing_keys_as_rabbitmq_maps_them() {
        assert_eq!(to_routing_key("sensors/kitchen/temp"), Ok("sensors.kitchen.temp".into()));
        assert_eq!(to_routing_key("v1.2/x"), Ok("v1.2.x".into()), "RabbitMQ leaves a dot a dot");
        assert_eq!(to_binding_key("sensors/+/temp"), Ok("sensors.*.temp".into()));
        assert_eq!(to_binding_key("sensors/#"), Ok("sensors.#".into()));
        assert_eq!(from_routing_key("sensors.kitchen.temp"), "sensors/kitchen/temp");
        assert_eq!(from_routing_key("a/b.c"), "a/b/c");
        assert_eq!(from_routing_key("a.*"), "a/+", "and that is no topic name to send");
        assert!(check_name(&from_routing_key("a.*")).is_err() && check_name(&from_routing_key("")).is_err());
        assert_eq!(to_routing_key(&"x".repeat(256)), Err(TopicError::TooLong(256)));
    }
}
