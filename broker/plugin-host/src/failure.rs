//! How a call into a plugin can fail, told apart so operators see which limit was hit.

use std::fmt;

/// A call into a plugin that did not return normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The guest trapped (a panic, an out-of-bounds access, `unreachable`...), or the call
    /// failed in the host; the text is wasmtime's.
    Trap(String),
    /// The call ran past its deadline.
    Timeout,
    /// The guest tried to grow its memory past the plugin's cap.
    Memory,
}

impl Failure {
    /// Classifies a wasmtime error; `memory_hit` says whether the limiter refused a growth.
    pub(crate) fn classify(e: &wasmtime::Error, memory_hit: bool) -> Failure {
        if memory_hit {
            return Failure::Memory;
        }
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => Failure::Timeout,
            _ => Failure::Trap(format!("{e:#}")),
        }
    }

    /// The label used in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(_) => "trap",
            Failure::Timeout => "timeout",
            Failure::Memory => "memory",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Trap(why) => write!(f, "trapped: {why}"),
            Failure::Timeout => f.write_str("ran past its deadline"),
            Failure::Memory => f.write_str("tried to grow its memory past the cap"),
        }
    }
}
