//! Retry policies as plugins, behind warren-core's `ExternalRetry`. One instance per
//! configured policy, shared by every queue that names it; built (and its config checked)
//! at load, rebuilt after a failure or a reload. A failed decision is reported to the core,
//! which dead-letters the message.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use warren_core::deadletter::Reason;
use warren_core::message::Message;
use warren_core::retry::{ExternalDecision, ExternalRetry};

use crate::bindings::retry_world::exports::warren::plugin::retry_policy as wit;
use crate::bindings::retry_world::{RetryPlugin as Exports, RetryPluginPre};
use crate::instance::{BuildError, Live, Plugin};
use crate::state::HostState;
use crate::{Limits, LoadError, PluginStats, Runtime, convert};

type Pre = RetryPluginPre<HostState>;

/// A loaded retry-policy component with its config.
pub struct RetryPlugin {
    plugin: Plugin<Pre>,
    config: Vec<(String, String)>,
    live: Mutex<Option<Live<Exports>>>,
}

impl fmt::Debug for RetryPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPlugin")
            .field("name", &self.plugin.name)
            .field("path", &self.plugin.path)
            .finish_non_exhaustive()
    }
}

impl RetryPlugin {
    /// Compiles the component at `path` as retry policy `name` and builds it with `config`;
    /// refuses a component of another world, or one that refuses its config.
    pub fn load(
        runtime: &Runtime,
        name: &str,
        path: &Path,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<Self, LoadError> {
        let plugin = Plugin::<Pre>::load(runtime, name, path, limits)?;
        let live = build(&plugin, &config)
            .map_err(|e| LoadError::Config { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(RetryPlugin { plugin, config, live: Mutex::new(Some(live)) })
    }

    /// What the plugin has done so far.
    pub fn stats(&self) -> Arc<PluginStats> {
        self.plugin.stats.clone()
    }

    /// The component's file.
    pub fn path(&self) -> &Path {
        &self.plugin.path
    }

    /// Reads the component again and swaps it in; on error the old one stays.
    pub fn reload(&self) -> Result<(), LoadError> {
        self.plugin.reload()?;
        // Check the new component accepts the config now, not at the next failed message.
        let live = build(&self.plugin, &self.config)
            .map_err(|e| LoadError::Config { path: self.plugin.path.clone(), reason: e.to_string() })?;
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
        Ok(())
    }
}

#[allow(clippy::ptr_arg)] // the generated bindings take a `&Vec`
fn build(plugin: &Plugin<Pre>, config: &Vec<(String, String)>) -> Result<Live<Exports>, BuildError> {
    plugin.instantiate(|s, x| x.warren_plugin_retry_policy().policy().call_create(s, config))
}

fn reason(why: Reason) -> wit::Reason {
    match why {
        Reason::Rejected => wit::Reason::Rejected,
        Reason::Expired => wit::Reason::Expired,
        Reason::MaxLen => wit::Reason::Maxlen,
        Reason::DeliveryLimit => wit::Reason::DeliveryLimit,
    }
}

impl ExternalRetry for RetryPlugin {
    fn name(&self) -> &str {
        &self.plugin.name
    }

    fn decide(&self, message: &Message, attempt: u32, why: Reason) -> Result<ExternalDecision, String> {
        let m = convert::message(
            &message.exchange,
            &message.routing_key,
            &message.properties,
            message.body.len() as u64,
        );
        let mut slot = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let decision = self
            .plugin
            .with_live(
                "retry policy",
                &mut slot,
                || build(&self.plugin, &self.config),
                |s, x, p| x.warren_plugin_retry_policy().policy().call_decide(s, p, &m, attempt, reason(why)),
            )
            .map_err(|f| f.to_string())?;
        Ok(match decision {
            wit::Decision::Retry(r) => ExternalDecision::Retry {
                delay_ms: r.delay_ms,
                set_headers: convert::table(r.set_headers)?,
                remove_headers: r.remove_headers,
            },
            wit::Decision::DeadLetter => ExternalDecision::DeadLetter,
            wit::Decision::Drop => ExternalDecision::Drop,
        })
    }
}
