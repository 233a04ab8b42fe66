//! Exchange types as plugins, behind warren-core's `ExchangeFactory` / `ExchangeType`, so
//! routing code does not know whether it calls native code or a component.
//!
//! One instance per exchange, holding one `router` resource. The host keeps the declare
//! arguments and the bindings, so after a failure or a reload it rebuilds the instance and
//! adds the bindings again. Documented outcomes: a declare or bind the plugin refuses, or
//! fails on, closes the channel with 406 and a text naming the type and the plugin file; a
//! route that fails counts as unroutable (returned if mandatory) and is not cached.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_codec::FieldTable;
use warren_core::error::{AmqpError, precondition};
use warren_core::exchange::{Binding, Destination, ExchangeFactory, ExchangeType, RouteFailed, RoutingInput};
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::bindings::warren::plugin::types as wit;
use crate::bindings::{ExchangePlugin as Exports, ExchangePluginPre};
use crate::failure::Failure;
use crate::instance::{BuildError, Live, Plugin};
use crate::state::HostState;
use crate::{Limits, LoadError, PluginStats, Runtime, convert};

type Pre = ExchangePluginPre<HostState>;

/// A loaded exchange-type component: the factory the broker registers under its type name.
#[derive(Clone)]
pub struct ExchangePlugin {
    plugin: Arc<Plugin<Pre>>,
}

impl fmt::Debug for ExchangePlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangePlugin")
            .field("type", &self.plugin.name)
            .field("path", &self.plugin.path)
            .finish_non_exhaustive()
    }
}

impl ExchangePlugin {
    /// Compiles the component at `path` for exchange type `type_name`; refuses a component
    /// that does not implement the `exchange-plugin` world.
    pub fn load(runtime: &Runtime, type_name: &str, path: &Path, limits: Limits) -> Result<Self, LoadError> {
        let plugin = Plugin::<Pre>::load(runtime, type_name, path, limits)?;
        Ok(ExchangePlugin { plugin: Arc::new(plugin) })
    }

    /// The exchange type name clients declare.
    pub fn type_name(&self) -> &str {
        &self.plugin.name
    }

    /// The component's file.
    pub fn path(&self) -> &Path {
        &self.plugin.path
    }

    /// What the plugin has done so far.
    pub fn stats(&self) -> Arc<PluginStats> {
        self.plugin.stats.clone()
    }

    /// Reads the component again and swaps it in; every exchange of this type rebuilds its
    /// instance from its bindings before its next call. On error the old component stays.
    pub fn reload(&self) -> Result<(), LoadError> {
        self.plugin.reload()
    }
}

impl ExchangeFactory for ExchangePlugin {
    fn create(&self, arguments: &FieldTable) -> Result<Box<dyn ExchangeType>, AmqpError> {
        let arguments = convert::fields(arguments);
        let (live, key_only) =
            build(&self.plugin, &arguments, &[]).map_err(|e| refusal(e, &self.plugin, "declare"))?;
        Ok(Box::new(PluginExchange {
            plugin: self.plugin.clone(),
            key_only: Cell::new(key_only),
            live: RefCell::new(Some(live)),
            arguments,
            bindings: Vec::new(),
            rebuild_failed: Cell::new(None),
        }))
    }
}

/// One exchange of a plugin type.
pub struct PluginExchange {
    plugin: Arc<Plugin<Pre>>,
    arguments: Vec<wit::Field>,
    /// Every binding the broker added, in order, for rebuilding.
    bindings: Vec<Binding>,
    key_only: Cell<bool>,
    /// The instance; `None` after a failure until the next call rebuilds it.
    live: RefCell<Option<Live<Exports>>>,
    /// When a rebuild last failed, and for which component generation: a binding the plugin
    /// traps on would otherwise cost a full rebuild on every publish.
    rebuild_failed: Cell<Option<(Instant, u64)>>,
}

/// How long an exchange whose rebuild failed answers "unroutable" before trying again
/// (a change to its bindings or a reload tries at once).
const REBUILD_BACKOFF: Duration = Duration::from_secs(1);

impl fmt::Debug for PluginExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginExchange")
            .field("type", &self.plugin.name)
            .field("bindings", &self.bindings.len())
            .finish_non_exhaustive()
    }
}

/// The 406 a client gets when the plugin cannot take a declare or a binding.
fn refusal(e: BuildError, plugin: &Plugin<Pre>, what: &str) -> AmqpError {
    let (name, path) = (&plugin.name, plugin.path.display());
    match e {
        BuildError::Cap => precondition(format!(
            "exchange type '{name}' (plugin {path}) is at its cap of {} instances",
            plugin.limits.max_instances
        )),
        BuildError::Refused(why) => precondition(format!("exchange type '{name}' refused the {what}: {why}")),
        BuildError::Failed(f) => precondition(format!("exchange type '{name}' (plugin {path}) {f}")),
    }
}

/// Instantiates the current component, creates the router, adds `bindings`, and asks
/// whether it routes on the key alone.
// The generated bindings take a `&Vec`.
#[allow(clippy::ptr_arg)]
fn build(
    plugin: &Plugin<Pre>,
    arguments: &Vec<wit::Field>,
    bindings: &[Binding],
) -> Result<(Live<Exports>, bool), BuildError> {
    let mut live =
        plugin.instantiate(|s, x| x.warren_plugin_exchange().router().call_create(s, arguments))?;
    for b in bindings {
        let b = convert::binding(b);
        live.call(&plugin.limits, |s, x, r| x.warren_plugin_exchange().router().call_add_binding(s, r, &b))
            .map_err(BuildError::Failed)?;
    }
    let key_only = live
        .call(&plugin.limits, |s, x, r| x.warren_plugin_exchange().router().call_routes_on_key_only(s, r))
        .map_err(BuildError::Failed)?;
    Ok((live, key_only))
}

impl PluginExchange {
    /// Runs `f` on a current instance, building one first if there is none or the component
    /// was reloaded. A failure discards the instance; the next call rebuilds it.
    fn with_live<R>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &Exports, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        // Only set after a failed rebuild (the slot is then empty), so the common path reads
        // nothing more than this cell.
        if let Some((at, failed)) = self.rebuild_failed.get()
            && at.elapsed() < REBUILD_BACKOFF
            && failed == self.plugin.current().generation
        {
            return Err(Failure::Trap("its last rebuild failed; retrying after a pause".into()));
        }
        let rebuild = || {
            let generation = self.plugin.current().generation;
            match build(&self.plugin, &self.arguments, &self.bindings) {
                Ok((live, key_only)) => {
                    self.key_only.set(key_only);
                    self.rebuild_failed.set(None);
                    Ok(live)
                }
                Err(e) => {
                    self.rebuild_failed.set(Some((Instant::now(), generation)));
                    Err(e)
                }
            }
        };
        self.plugin.with_live("exchange", &mut self.live.borrow_mut(), rebuild, f)
    }

    /// Whether an instance of the current component is running (changes apply to it
    /// directly; otherwise the next build replays them).
    fn is_live(&self) -> bool {
        self.plugin.is_current(&self.live.borrow())
    }
}

impl ExchangeType for PluginExchange {
    fn validate_binding(&self, key: &str, arguments: &FieldTable) -> Result<(), AmqpError> {
        let b = wit::Binding {
            destination: wit::Destination::Queue(String::new()),
            key: key.to_string(),
            arguments: convert::fields(arguments),
        };
        match self.with_live(|s, x, r| x.warren_plugin_exchange().router().call_validate_binding(s, r, &b)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => {
                Err(precondition(format!("exchange type '{}' refused the binding: {why}", self.plugin.name)))
            }
            Err(f) => Err(refusal(BuildError::Failed(f), &self.plugin, "binding")),
        }
    }

    fn add_binding(&mut self, binding: &Binding) {
        self.bindings.push(binding.clone());
        self.rebuild_failed.set(None);
        if self.is_live() {
            let b = convert::binding(binding);
            // A failure discards the instance; the rebuild replays this binding with the rest.
            let _ = self.with_live(|s, x, r| x.warren_plugin_exchange().router().call_add_binding(s, r, &b));
        }
    }

    fn remove_binding(&mut self, binding: &Binding) {
        if let Some(i) = self.bindings.iter().position(|b| b == binding) {
            self.bindings.remove(i);
        }
        self.rebuild_failed.set(None);
        if self.is_live() {
            let b = convert::binding(binding);
            let _ =
                self.with_live(|s, x, r| x.warren_plugin_exchange().router().call_remove_binding(s, r, &b));
        }
    }

    fn route(&self, input: RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteFailed> {
        let message = convert::message(input.exchange, input.routing_key, input.properties, input.body_size);
        let found = self
            .with_live(|s, x, r| x.warren_plugin_exchange().router().call_route(s, r, &message))
            .map_err(|_| RouteFailed)?;
        out.extend(found.into_iter().map(convert::destination));
        Ok(())
    }

    fn routes_on_key_only(&self) -> bool {
        self.key_only.get()
    }
}
