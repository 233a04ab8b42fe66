//! Protocol adapters as plugins: the sans-IO half. A session per client connection; the
//! caller feeds it the bytes it read and the broker's events, and gets back commands for the
//! broker and bytes for the client. The server does not open listeners for adapters yet;
//! this is the part a listener will drive.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::bindings::adapter_world::exports::warren::plugin::adapter as wit;
use crate::bindings::adapter_world::{AdapterPlugin as Exports, AdapterPluginPre};
use crate::failure::Failure;
use crate::instance::{BuildError, Live, Plugin};
use crate::state::HostState;
use crate::{Limits, LoadError, PluginStats, Runtime};

pub use wit::{Command, Event, Output};

type Pre = AdapterPluginPre<HostState>;

/// A loaded protocol-adapter component.
pub struct AdapterPlugin {
    plugin: Arc<Plugin<Pre>>,
}

impl fmt::Debug for AdapterPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterPlugin").field("name", &self.plugin.name).finish_non_exhaustive()
    }
}

/// Why a session cannot go on; the connection should be closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The adapter refused the client's bytes (a protocol error), with its reason.
    #[error("adapter '{plugin}' refused the input: {reason}")]
    Refused {
        /// The adapter's name.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// The adapter trapped, timed out or hit its memory cap; its state is gone.
    #[error("adapter '{plugin}' {failure}")]
    Failed {
        /// The adapter's name.
        plugin: String,
        /// What happened.
        failure: Failure,
    },
    /// No instance could be made (the instance cap, or a failing constructor).
    #[error("adapter '{plugin}' cannot start a session: {reason}")]
    Start {
        /// The adapter's name.
        plugin: String,
        /// Why.
        reason: String,
    },
}

impl AdapterPlugin {
    /// Compiles the component at `path` as adapter `name`; refuses a component that does not
    /// implement the `adapter-plugin` world.
    pub fn load(runtime: &Runtime, name: &str, path: &Path, limits: Limits) -> Result<Self, LoadError> {
        let plugin = Plugin::<Pre>::load(runtime, name, path, limits)?;
        Ok(AdapterPlugin { plugin: Arc::new(plugin) })
    }

    /// What the plugin has done so far.
    pub fn stats(&self) -> Arc<PluginStats> {
        self.plugin.stats.clone()
    }

    /// A session for a new client connection: its own instance, so one client's failure
    /// ends only that client's session.
    pub fn session(&self) -> Result<AdapterSession, SessionError> {
        let live = self
            .plugin
            .instantiate(|s, x| x.warren_plugin_adapter().session().call_constructor(s).map(Ok))
            .map_err(|e: BuildError| SessionError::Start {
                plugin: self.plugin.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(AdapterSession { plugin: self.plugin.clone(), live: Some(live) })
    }
}

/// One client connection's adapter state.
pub struct AdapterSession {
    plugin: Arc<Plugin<Pre>>,
    /// `None` once the instance failed: a session's state cannot be rebuilt.
    live: Option<Live<Exports>>,
}

impl AdapterSession {
    fn call<R>(
        &mut self,
        f: impl FnOnce(
            &mut wasmtime::Store<HostState>,
            &Exports,
            wasmtime::component::ResourceAny,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, SessionError> {
        let plugin = self.plugin.name.clone();
        let Some(live) = self.live.as_mut() else {
            return Err(SessionError::Failed {
                plugin,
                failure: Failure::Trap("the session already failed".into()),
            });
        };
        live.call(&self.plugin.limits, f).map_err(|failure| {
            tracing::warn!(plugin = %plugin, "protocol adapter {failure}; the session ends");
            self.live = None;
            SessionError::Failed { plugin, failure }
        })
    }

    /// Bytes from the client.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Output, SessionError> {
        let bytes = bytes.to_vec();
        let plugin = self.plugin.name.clone();
        self.call(|s, x, r| x.warren_plugin_adapter().session().call_receive(s, r, &bytes))?
            .map_err(|reason| SessionError::Refused { plugin, reason })
    }

    /// An event from the broker.
    pub fn handle(&mut self, event: &Event) -> Result<Output, SessionError> {
        self.call(|s, x, r| x.warren_plugin_adapter().session().call_handle(s, r, event))
    }
}
