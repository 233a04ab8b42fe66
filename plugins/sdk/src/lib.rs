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

#[cfg(any(feature = "exchange", feature = "retry", feature = "adapter"))]
pub use host::*;

/// The host interface every world imports, from whichever world's bindings are built.
#[cfg(any(feature = "exchange", feature = "retry", feature = "adapter"))]
mod host {
    #[cfg(all(feature = "adapter", not(any(feature = "exchange", feature = "retry"))))]
    use crate::adapter::bindings::warren::plugin as bindings;
    #[cfg(feature = "exchange")]
    use crate::exchange::bindings::warren::plugin as bindings;
    #[cfg(all(feature = "retry", not(feature = "exchange")))]
    use crate::retry::bindings::warren::plugin as bindings;

    pub use bindings::host::Level;

    /// Writes a line to the broker's log, tagged with the plugin's name.
    pub fn log(level: Level, message: &str) {
        bindings::host::log(level, message)
    }

    /// Milliseconds since the Unix epoch, from the broker's clock.
    pub fn now_ms() -> u64 {
        bindings::host::now_ms()
    }

    /// Sends panic messages through [`log`] at error level, so the broker logs why an
    /// instance trapped next to the plugin's name.
    #[doc(hidden)]
    pub fn route_panics_to_the_log() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("plugin panicked: {info}"))))
        });
    }
}
