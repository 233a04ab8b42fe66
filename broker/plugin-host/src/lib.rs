//! Warren's plugin host: loads WebAssembly components written against `wit/`
//! (`warren:plugin@0.1.0`), compiles each once, and calls them under limits.
//!
//! Every call into a plugin runs with an epoch deadline and a memory cap. A trap, a timeout
//! or a cap hit is logged, counted in [`PluginStats`], answered with the documented fallback,
//! and the instance is discarded and rebuilt: a plugin can fail, the broker cannot. This is
//! the only crate that depends on wasmtime.

pub mod adapter;
mod bindings;
mod cache;
mod convert;
pub mod exchange;
mod failure;
#[doc(hidden)]
pub mod guests;
mod instance;
pub mod retry;
mod runtime;
mod state;
mod stats;
mod wasi;

pub use adapter::AdapterPlugin;
pub use exchange::ExchangePlugin;
pub use failure::Failure;
pub use retry::RetryPlugin;

pub use runtime::{Limits, Runtime};
pub use stats::{FAILURE_KINDS, PluginStats};

use std::path::PathBuf;

/// Why a plugin could not be loaded. Every variant names the component's file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin component {path}: cannot read it: {source}")]
    Read {
        /// The component's path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a valid component, or wasmtime could not compile it.
    #[error("plugin component {path}: not a valid WebAssembly component: {reason}")]
    Compile {
        /// The component's path.
        path: PathBuf,
        /// wasmtime's explanation.
        reason: String,
    },
    /// The component does not implement the world its config entry asks for.
    #[error("plugin component {path}: does not implement the {world} world: {reason}")]
    WrongWorld {
        /// The component's path.
        path: PathBuf,
        /// The world it should implement.
        world: &'static str,
        /// wasmtime's explanation.
        reason: String,
    },
    /// The component loaded but refused its configuration, or failed while doing so.
    #[error("plugin component {path}: refused its config: {reason}")]
    Config {
        /// The component's path.
        path: PathBuf,
        /// The plugin's own message.
        reason: String,
    },
}
