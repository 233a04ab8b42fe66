//! Warren's guest SDK: write an exchange type or a retry policy as a plain Rust trait, then
//! export it with one macro. wit-bindgen stays behind this crate; the types below are the
//! WIT package `warren:plugin@0.1.0` as Rust (see `wit/` for every field's meaning).
//!
//! ```ignore
//! use warren_plugin_sdk::exchange::{Binding, Destination, Exchange, Fields, Message};
//!
//! /// Sends every message to every bound destination.
//! #[derive(Default)]
//! struct Everyone(Vec<Destination>);
//!
//! impl Exchange for Everyone {
//!     fn create(_arguments: Fields) -> Result<Self, String> { Ok(Self::default()) }
//!     fn add_binding(&mut self, b: Binding) { self.0.push(b.destination) }
//!     fn remove_binding(&mut self, b: &Binding) {
//!         if let Some(i) = self.0.iter().position(|d| *d == b.destination) { self.0.swap_remove(i); }
//!     }
//!     fn route(&self, _message: &Message, out: &mut Vec<Destination>) { out.extend(self.0.iter().cloned()) }
//! }
//! warren_plugin_sdk::export_exchange!(Everyone);
//! ```

#[cfg(feature = "adapter")]
pub mod adapter;
#[cfg(feature = "exchange")]
pub mod exchange;
#[cfg(feature = "retry")]
pub mod retry;

/// Writes a line to the broker's log, tagged with the plugin's name.
#[cfg(any(feature = "exchange", feature = "retry", feature = "adapter"))]
pub fn log(level: Level, message: &str) {
    bindings::host::log(level, message)
}

/// Sends panic messages to the broker's log instead of stderr: a plugin has no stderr, and
/// the broker should say why an instance trapped.
#[cfg(any(feature = "exchange", feature = "retry", feature = "adapter"))]
#[doc(hidden)]
pub fn route_panics_to_the_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("plugin panicked: {info}"))))
    });
}

/// Milliseconds since the Unix epoch, from the broker's clock.
#[cfg(any(feature = "exchange", feature = "retry", feature = "adapter"))]
pub fn now_ms() -> u64 {
    bindings::host::now_ms()
}

#[cfg(any(feature = "exchange", feature = "retry", feature = "adapter"))]
pub use bindings::host::Level;

#[cfg(all(feature = "adapter", not(any(feature = "exchange", feature = "retry"))))]
use adapter::bindings::warren::plugin as bindings;
#[cfg(feature = "exchange")]
use exchange::bindings::warren::plugin as bindings;
#[cfg(all(feature = "retry", not(feature = "exchange")))]
use retry::bindings::warren::plugin as bindings;
