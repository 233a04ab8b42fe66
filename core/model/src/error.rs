//! AMQP errors raised by the model: a reply code, RabbitMQ-style text, and the method that
//! caused it. Whether it closes a channel or the connection follows from the code.

use warren_codec::Method;
use warren_codec::reply_code::{self, ReplyCode};

/// An error to report to the client with channel.close or connection.close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct AmqpError {
    /// The reply code.
    pub code: ReplyCode,
    /// Reply text, starting with the code's name as RabbitMQ writes it.
    pub text: String,
    /// Class of the method that failed, 0 when none.
    pub class_id: u16,
    /// Id of the method that failed, 0 when none.
    pub method_id: u16,
}

impl AmqpError {
    /// An error with RabbitMQ's text form: `NOT_FOUND - no queue 'q' in vhost '/'`.
    pub fn new(code: ReplyCode, detail: impl std::fmt::Display) -> Self {
        AmqpError {
            code,
            text: format!("{} - {}", reply_code::name(code), detail),
            class_id: 0,
            method_id: 0,
        }
    }

    /// The same error, attributed to `method` unless it already names one.
    pub fn on(self, method: &Method) -> Self {
        self.at(method.ids())
    }

    /// Names the operation (AMQP class and method ids) that failed, unless one is named.
    pub fn at(mut self, ids: (u16, u16)) -> Self {
        if self.class_id == 0 {
            (self.class_id, self.method_id) = ids;
        }
        self
    }

    /// Whether this error closes the connection rather than the channel.
    pub fn is_hard(&self) -> bool {
        reply_code::is_hard_error(self.code)
    }
}

/// `404 NOT_FOUND` for a queue.
pub(crate) fn no_queue(vhost: &str, name: &str) -> AmqpError {
    AmqpError::new(reply_code::NOT_FOUND, format!("no queue '{name}' in vhost '{vhost}'"))
}

/// `404 NOT_FOUND` for an exchange.
pub(crate) fn no_exchange(vhost: &str, name: &str) -> AmqpError {
    AmqpError::new(reply_code::NOT_FOUND, format!("no exchange '{name}' in vhost '{vhost}'"))
}

/// `406 PRECONDITION_FAILED`.
pub fn precondition(detail: impl std::fmt::Display) -> AmqpError {
    AmqpError::new(reply_code::PRECONDITION_FAILED, detail)
}
