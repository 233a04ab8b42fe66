//! AMQP 0-9-1 reply codes, named as in the specification.

/// A reply code carried by connection.close, channel.close and basic.return.
pub type ReplyCode = u16;

/// Normal completion.
pub const REPLY_SUCCESS: ReplyCode = 200;
/// basic.publish with immediate=true could not be delivered at once.
pub const NO_CONSUMERS: ReplyCode = 313;
/// A mandatory message matched no queue.
pub const NO_ROUTE: ReplyCode = 312;
/// The operator forced the connection closed.
pub const CONNECTION_FORCED: ReplyCode = 320;
/// The client named a path (virtual host) that does not exist.
pub const INVALID_PATH: ReplyCode = 402;
/// The client is not allowed to do this.
pub const ACCESS_REFUSED: ReplyCode = 403;
/// The named entity does not exist.
pub const NOT_FOUND: ReplyCode = 404;
/// The entity is exclusively used by another connection.
pub const RESOURCE_LOCKED: ReplyCode = 405;
/// The request conflicts with existing state.
pub const PRECONDITION_FAILED: ReplyCode = 406;
/// A frame could not be parsed as a frame.
pub const FRAME_ERROR: ReplyCode = 501;
/// A frame held fields that could not be parsed.
pub const SYNTAX_ERROR: ReplyCode = 502;
/// A method that is not valid here, or an invalid argument.
pub const COMMAND_INVALID: ReplyCode = 503;
/// A method on a channel that is not open.
pub const CHANNEL_ERROR: ReplyCode = 504;
/// A frame that was not expected in this state.
pub const UNEXPECTED_FRAME: ReplyCode = 505;
/// The server ran out of a resource.
pub const RESOURCE_ERROR: ReplyCode = 506;
/// Not allowed by the server's policy.
pub const NOT_ALLOWED: ReplyCode = 530;
/// The functionality is not implemented.
pub const NOT_IMPLEMENTED: ReplyCode = 540;
/// The server hit an internal error.
pub const INTERNAL_ERROR: ReplyCode = 541;

/// The upper-case name RabbitMQ puts at the start of a reply text, e.g. `NOT_FOUND`.
pub fn name(code: ReplyCode) -> &'static str {
    match code {
        REPLY_SUCCESS => "REPLY_SUCCESS",
        NO_CONSUMERS => "NO_CONSUMERS",
        NO_ROUTE => "NO_ROUTE",
        CONNECTION_FORCED => "CONNECTION_FORCED",
        INVALID_PATH => "INVALID_PATH",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        INTERNAL_ERROR => "INTERNAL_ERROR",
        _ => "UNKNOWN",
    }
}

/// Whether a code closes the whole connection rather than one channel (spec: "hard errors").
pub fn is_hard_error(code: ReplyCode) -> bool {
    matches!(
        code,
        CONNECTION_FORCED
            | INVALID_PATH
            | FRAME_ERROR
            | SYNTAX_ERROR
            | COMMAND_INVALID
            | CHANNEL_ERROR
            | UNEXPECTED_FRAME
            | RESOURCE_ERROR
            | NOT_ALLOWED
            | NOT_IMPLEMENTED
            | INTERNAL_ERROR
    )
}
